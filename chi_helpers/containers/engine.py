"""A Docker engine and Compose v2 for the container tests: found, or installed and started here.

Where an engine already answers (a laptop with Docker, a CI runner that has one), it is used as it is
and never stopped. Otherwise, on a Debian machine as root, `install` takes Debian's `docker.io` and
`mmdebstrap`, and Compose v2 from Debian trixie's `docker-compose` package, and `start` runs
`dockerd` by hand in the background; `stop` stops only an engine that `start` started.

Why trixie's package for Compose v2: bookworm packages Compose v1 only (1.29, Python, without
`up --wait`); Docker's own downloads are not reachable from these machines, PyPI and npm carry no
Compose v2 binary, and trixie's is a signed Debian package whose one dependency (libc6 >= 2.34) bookworm
meets. An apt pin takes that one package from trixie and nothing else.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import time
from pathlib import Path

import psutil

from chi_helpers.local import processes
from chi_helpers.progress import Clock

TRIXIE_SOURCE = Path("/etc/apt/sources.list.d/trixie-compose.sources")
TRIXIE_PIN = Path("/etc/apt/preferences.d/trixie-compose")
SOURCE = """Types: deb
URIs: http://deb.debian.org/debian
Suites: trixie
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg
"""
# Nothing from trixie unless asked for by name (priority 1), and Compose v2 over bookworm's v1.
PIN = """Package: *
Pin: release n=trixie
Pin-Priority: 1

Package: docker-compose
Pin: release n=trixie
Pin-Priority: 990
"""
STATE_FILE = "engine.json"
LOG_FILE = "dockerd.log"


class EngineError(RuntimeError):
    """No engine, and none could be installed or started; the message says why and what to do."""


def _run(command: list[str], timeout: float = 30) -> subprocess.CompletedProcess:
    return subprocess.run(command, capture_output=True, text=True, timeout=timeout)


def answers(timeout: float = 10) -> str | None:
    """The engine's version when `docker info` gets an answer, else None."""
    if not shutil.which("docker"):
        return None
    try:
        done = _run(["docker", "info", "--format", "{{.ServerVersion}}"], timeout=timeout)
    except subprocess.TimeoutExpired:
        return None
    return done.stdout.strip() if done.returncode == 0 and done.stdout.strip() else None


def compose_version() -> str | None:
    """Compose v2's version (`docker compose version`), or None where only v1 or nothing is there."""
    if not shutil.which("docker"):
        return None
    done = _run(["docker", "compose", "version", "--short"])
    return done.stdout.strip() if done.returncode == 0 else None


def _apt_install(clock: Clock, *packages: str) -> None:
    clock.say(f"apt-get install {' '.join(packages)} ...")
    done = subprocess.run(["apt-get", "install", "-y", "-q", "--no-install-recommends", *packages],
                          capture_output=True, text=True, env={**os.environ, "DEBIAN_FRONTEND": "noninteractive"})
    if done.returncode != 0:
        raise EngineError(f"apt-get install {' '.join(packages)} failed:\n{processes.tail_text(done.stdout + done.stderr)}")


def install(clock: Clock | None = None) -> None:
    """Install what is missing of dockerd, mmdebstrap and Compose v2 (Debian, as root)."""
    clock = clock or Clock()
    missing = [p for p, command in (("docker.io", "dockerd"), ("mmdebstrap", "mmdebstrap")) if not shutil.which(command)]
    need_compose = compose_version() is None
    if not missing and not need_compose:
        clock.say(f"dockerd, mmdebstrap and Compose {compose_version()} are installed")
        return
    if os.geteuid() != 0 or not shutil.which("apt-get"):
        raise EngineError(
            f"missing: {', '.join(missing + (['Compose v2'] if need_compose else []))}. Installing them needs "
            "apt-get as root (Debian); elsewhere install Docker Engine with the Compose plugin yourself."
        )
    if need_compose and not TRIXIE_SOURCE.exists():
        TRIXIE_SOURCE.write_text(SOURCE)
        TRIXIE_PIN.write_text(PIN)
    clock.say("apt-get update ...")
    update = _run(["apt-get", "update", "-q"], timeout=300)
    if update.returncode != 0:
        raise EngineError(f"apt-get update failed:\n{processes.tail_text(update.stdout + update.stderr)}")
    if missing:
        _apt_install(clock, *missing)
    if need_compose:
        _apt_install(clock, "docker-compose")
    clock.say(f"installed: engine {_run(['dockerd', '--version']).stdout.strip()}, Compose {compose_version()}")


def _state(state_dir: Path) -> dict | None:
    path = state_dir / STATE_FILE
    return json.loads(path.read_text()) if path.exists() else None


def start(state_dir: str | os.PathLike, timeout: float = 60, clock: Clock | None = None) -> str:
    """An engine that answers: the one already there, or `dockerd` started in the background. Its version."""
    clock = clock or Clock()
    state_dir = Path(state_dir)
    version = answers()
    if version:
        clock.say(f"Docker engine {version} answers: using it")
        return version
    if not shutil.which("dockerd"):
        raise EngineError("no Docker engine answers and dockerd is not installed: run `python -m chi_helpers engine install`")
    if os.geteuid() != 0:
        raise EngineError("no Docker engine answers, and starting dockerd by hand needs root: start your Docker service")
    state_dir.mkdir(parents=True, exist_ok=True)
    log = state_dir / LOG_FILE
    clock.say(f"starting dockerd (log: {log})")
    proc = processes.start_background(["dockerd"], log)
    (state_dir / STATE_FILE).write_text(json.dumps({"pid": proc.pid, "log": str(log), "started_at": time.time()}))
    deadline = time.monotonic() + timeout
    while not (version := answers(timeout=5)):
        if proc.poll() is not None or time.monotonic() > deadline:
            stop(state_dir, clock=clock)
            raise EngineError(f"dockerd did not answer within {timeout:.0f} s. Last lines of {log}:\n{processes.tail(log)}")
        time.sleep(0.5)
    clock.say(f"Docker engine {version} answers")
    return version


def stop(state_dir: str | os.PathLike, clock: Clock | None = None) -> bool:
    """Stop the dockerd that `start` started (its containers stop with it); False when it started none."""
    clock = clock or Clock()
    state = _state(Path(state_dir))
    if state is None:
        clock.say("no engine started here: nothing to stop")
        return False
    # dockerd first, alone: it stops its containers and containerd in order; then whatever is left.
    try:
        dockerd = psutil.Process(state["pid"])
        dockerd.terminate()
        dockerd.wait(timeout=60)
    except (psutil.NoSuchProcess, psutil.TimeoutExpired):
        pass
    stopped = 1 + processes.stop_tree(state["pid"], timeout=15)
    (Path(state_dir) / STATE_FILE).unlink()
    clock.say(f"stopped dockerd ({stopped} process(es)); images and build cache kept for the next run")
    return True
