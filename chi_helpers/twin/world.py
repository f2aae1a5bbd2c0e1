"""The twin's state: every project, lease, server and address, kept across calls and saved to disk.

All services share one `World` and take its lock for every request, so a request sees a consistent
state. Its clock is real time (clients compute lease dates from theirs, and Blazar refuses a start
in the past), but waits are shortened: a lease made for the next full hour starts `speed` times
sooner than its start date says (`reached`), so in a test it starts within seconds; its dates,
and so the host's calendar, stay as asked. `end_speed` does the same for its end. A test may also
move the clock forward (`Clock.advance`: hours of a hub session in a moment); clients that must agree
follow it through the offset file `Clock` keeps. `faults` holds one-shot failures asked for by a test or by
`twin fault ...`; each is used up by the first request it applies to.
"""

from __future__ import annotations

import json
import os
import threading
import time
import uuid
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from pathlib import Path

CLOCK_FILE = "clock-offset"  # how far the twin's clock is ahead of this machine's, as libfaketime reads it
FAULTS = (
    "lease-error", "server-error", "keystone-refuses", "ssh-drops", "host-taken",
    # Blazar's refusals as Chameleon's filters give them (twin/blazar.py)
    "no-allocation", "allocation-used-up", "flavor-exhausted",
    # Neutron's (twin/neutron.py)
    "floating-ips-exhausted", "floating-ip-quota",
)


class Clock:
    """Real time: the dates clients send are computed from this machine's clock, as on Chameleon.

    `advance` moves it forward, for a test that compresses hours of a session into seconds (a student
    back at the hub two hours later). A client's clock must move with it: `write_offset` keeps the
    offset in a file in libfaketime's notation ("+7200"), which a kernel started with libfaketime
    (FAKETIME_TIMESTAMP_FILE, FAKETIME_NO_CACHE) reads at every look at the time."""

    def __init__(self, offset_file: Path | None = None):
        self.offset = 0.0  # seconds ahead of this machine's clock
        self.offset_file = offset_file
        self.write_offset()

    def now(self) -> datetime:
        return datetime.now(timezone.utc) + timedelta(seconds=self.offset)

    def advance(self, seconds: float) -> None:
        if seconds < 0:
            raise ValueError("the twin's clock only moves forward")
        self.offset += seconds
        self.write_offset()

    def write_offset(self) -> None:
        if self.offset_file is not None:
            temporary = self.offset_file.with_suffix(".tmp")
            temporary.write_text(f"+{self.offset:.0f}\n")
            os.replace(temporary, self.offset_file)  # a reader never sees half a number


@dataclass
class World:
    state_dir: Path
    address: str  # the services' loopback address, e.g. 127.77.0.1
    port: int  # the port every service but Keystone-on-5000 answers on
    speed: float = 1.0
    end_speed: float | None = None  # None: as `speed`
    # How long a node's background work takes here: the Jupyter image build (minutes on a real node:
    # its base is gigabytes), and the Jupyter server's start in its container (seconds). Never zero,
    # so that what waits for them is tested.
    image_build_seconds: float = 3.0
    jupyter_start_seconds: float = 1.5
    # A fresh Ubuntu 24.04 runs unattended-upgrades after boot, which holds apt's lock (minutes there).
    apt_lock_seconds: float = 2.0
    # Nova lists a floating IP in a server's addresses only after its network cache is refreshed,
    # seconds after Neutron binds it (Neutron's batched notice, then Nova's refresh).
    network_changed_seconds: float = 1.0
    lock: threading.RLock = field(default_factory=threading.RLock, repr=False)
    data: dict = field(default_factory=dict)
    faults: dict = field(default_factory=dict)  # name -> remaining count (or detail)

    def __post_init__(self):
        self.state_dir = Path(self.state_dir)
        self.state_dir.mkdir(parents=True, exist_ok=True)
        self.clock = Clock(self.state_dir / CLOCK_FILE)
        if self.end_speed is None:
            self.end_speed = self.speed
        for table in ("projects", "users", "application_credentials", "tokens", "hosts", "leases", "flavors",
                      "images", "keypairs", "servers", "networks", "subnets", "ports", "floatingips",
                      "security_groups", "security_group_rules"):
            self.data.setdefault(table, {})
        self.data.setdefault("events", [])  # every request that changed something, in order

    # --- ids, time, addresses -------------------------------------------------------------------

    @staticmethod
    def new_id() -> str:
        return str(uuid.uuid4())

    def now(self) -> datetime:
        return self.clock.now()

    def reached(self, moment: datetime, since: datetime | None, end: bool = False) -> bool:
        """Has `moment` come, with the wait from `since` shortened `speed` (or `end_speed`) times?
        Naive datetimes are UTC; without `since`, the full wait."""
        utc = lambda t: t.replace(tzinfo=timezone.utc) if t.tzinfo is None else t  # noqa: E731
        moment, now = utc(moment), self.now()
        if since is None:
            return now >= moment
        since = utc(since)
        factor = max(self.end_speed if end else self.speed, 1.0)
        return now >= moment or now >= since + (moment - since) / factor

    def url(self, prefix: str = "") -> str:
        return f"http://{self.address}:{self.port}{prefix}"

    def next_address(self) -> str:
        """A fresh loopback address for a floating IP, in the twin's own 127.a.b.0/24."""
        base = self.address.rsplit(".", 1)[0]
        used = {ip["floating_ip_address"] for ip in self.data["floatingips"].values()}
        for last in range(10, 254):  # .254 is the public subnet's gateway
            candidate = f"{base}.{last}"
            if candidate not in used:
                return candidate
        raise RuntimeError("the twin has no floating IP left")

    # --- faults ---------------------------------------------------------------------------------

    def inject(self, fault: str, count: int = 1) -> None:
        if fault not in FAULTS:
            raise ValueError(f"unknown fault {fault!r}: one of {', '.join(FAULTS)}")
        with self.lock:
            self.faults[fault] = self.faults.get(fault, 0) + count

    def take_fault(self, fault: str) -> bool:
        """True (and one fewer left) if `fault` was asked for."""
        with self.lock:
            left = self.faults.get(fault, 0)
            if left <= 0:
                return False
            self.faults[fault] = left - 1
            return True

    # --- records --------------------------------------------------------------------------------

    def record(self, service: str, what: str) -> None:
        self.data["events"].append({"at": self.now().isoformat(), "service": service, "what": what})

    def save(self) -> None:
        """Write the state where `twin status` reads it (atomically)."""
        self.state_dir.mkdir(parents=True, exist_ok=True)
        path = self.state_dir / "world.json"
        temporary = path.with_suffix(".tmp")
        temporary.write_text(json.dumps(self.data, indent=1, default=str))
        os.replace(temporary, path)
