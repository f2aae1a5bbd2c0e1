"""`python -m chi_helpers twin up|status|down|fault`: the twin as a background process.

`up` starts `chi_helpers.twin.control` detached, waits until it answers, and prints the path of its
OpenStack RC file (CHI@TACC's) as its last line; KVM@TACC's, for the vm variant, is beside it
(`twin-kvm-openrc.sh`), and `up` names it. A second `up` finds it running and prints the same path.
`status` asks the running twin (or, when it is down, reads the state it saved); `down` stops it
and everything it started (SSH nodes, their tracking stacks, notebook runs).
"""

from __future__ import annotations

import json
import os
import signal
import sys
import time
import urllib.request
from pathlib import Path

from chi_helpers.local import processes
from chi_helpers.local.target import DEFAULT_WORKDIR
from chi_helpers.progress import Clock

DEFAULT_STATE_DIR = DEFAULT_WORKDIR / "twin"


class TwinError(RuntimeError):
    """The twin cannot be started or reached; the message says what to do."""


def _info(state_dir: Path) -> dict | None:
    """The running twin's address, pid and RC file, or None when none runs for this folder."""
    path = state_dir / "twin.json"
    if not path.exists():
        return None
    info = json.loads(path.read_text())
    return info if processes.is_running(info["pid"]) else None


def _url(info: dict) -> str:
    return f"http://{info['address']}:{info['port']}"


def up(state_dir: Path = DEFAULT_STATE_DIR, speed: float = 60.0, timeout: float = 60.0, clock: Clock | None = None) -> Path:
    clock = clock or Clock()
    state_dir = Path(state_dir).resolve()
    info = _info(state_dir)
    if info:
        clock.say(f"twin already running at {_url(info)} (pid {info['pid']})")
        _name_kvm(info, clock)
        return Path(info["rc_file"])
    state_dir.mkdir(parents=True, exist_ok=True)
    (state_dir / "twin.json").unlink(missing_ok=True)
    log = state_dir / "twin.log"
    clock.say(f"starting the twin (log: {log})")
    process = processes.start_background(
        [sys.executable, "-m", "chi_helpers.twin.control", "--state-dir", str(state_dir), "--speed", str(speed)], log)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        info = _info(state_dir)
        if info and processes.http_ok(f"{_url(info)}/twin/status"):
            clock.say(f"twin answering at {_url(info)}: Keystone {_url(info)}/v3, sites {_url(info)}/api/sites.json")
            _name_kvm(info, clock)
            return Path(info["rc_file"])
        if process.poll() is not None:
            raise TwinError(f"the twin exited with status {process.returncode}:\n{processes.tail(log)}")
        time.sleep(0.3)
    processes.stop_tree(process.pid)
    raise TwinError(f"the twin did not answer within {timeout:.0f} s:\n{processes.tail(log)}")


def _name_kvm(info: dict, clock: Clock) -> None:
    """KVM@TACC has a Keystone of its own: the vm variant signs in there, with that site's RC file."""
    address = info.get("site_addresses", {}).get("KVM@TACC")
    if address and info.get("kvm_rc_file"):
        clock.say(f"KVM@TACC (the vm variant's site) answers at http://{address}:{info['port']}, with its own "
                  f"credentials: its RC file is {info['kvm_rc_file']}")


def status(state_dir: Path = DEFAULT_STATE_DIR) -> dict:
    state_dir = Path(state_dir).resolve()
    info = _info(state_dir)
    if info:
        with urllib.request.urlopen(f"{_url(info)}/twin/status", timeout=10) as answer:
            return {"running": True, "url": _url(info), "rc_file": info["rc_file"], **json.loads(answer.read())}
    saved = state_dir / "world.json"
    if not saved.exists():
        return {"running": False, "leases": [], "servers": [], "floating_ips": []}
    from chi_helpers.twin.control import summary_of

    return {"running": False, **summary_of(json.loads(saved.read_text()))}


def fault(name: str, state_dir: Path = DEFAULT_STATE_DIR, count: int = 1) -> dict:
    info = _info(Path(state_dir).resolve())
    if not info:
        raise TwinError("no twin runs for this state folder: start it with `python -m chi_helpers twin up`")
    request = urllib.request.Request(f"{_url(info)}/twin/faults", method="POST",
                                     data=json.dumps({"fault": name, "count": count}).encode(),
                                     headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=10) as answer:
            return json.loads(answer.read())
    except urllib.error.HTTPError as error:
        raise TwinError(json.loads(error.read())["error"]["message"]) from None


def down(state_dir: Path = DEFAULT_STATE_DIR, clock: Clock | None = None) -> bool:
    clock = clock or Clock()
    state_dir = Path(state_dir).resolve()
    info = _info(state_dir)
    if not info:
        clock.say("no twin is running for this state folder")
        return False
    os.kill(info["pid"], signal.SIGTERM)  # the twin stops its nodes and their stacks, then exits
    deadline = time.monotonic() + 60
    while processes.is_running(info["pid"]) and time.monotonic() < deadline:
        time.sleep(0.2)
    left = processes.stop_tree(info["pid"]) if processes.is_running(info["pid"]) else 0
    (state_dir / "twin.json").unlink(missing_ok=True)
    clock.say(f"twin stopped{f' ({left} process(es) killed)' if left else ''}")
    return True
