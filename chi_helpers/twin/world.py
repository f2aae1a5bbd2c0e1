"""The twin's state: every project, lease, server and address, kept across calls and saved to disk.

All services share one `World` and take its lock for every request, so a request sees a consistent
state. Its clock can run faster than real time (`speed`), so a lease made for the next full hour
starts within seconds in a test. `faults` holds one-shot failures asked for by a test or by
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

FAULTS = ("lease-error", "server-error", "keystone-refuses", "ssh-drops", "host-taken")


class Clock:
    """Real time, or real time run `speed` times faster from the moment the twin started."""

    def __init__(self, speed: float = 1.0, start: datetime | None = None):
        self.speed = speed
        self.origin_real = time.time()
        self.origin = start or datetime.now(timezone.utc)

    def now(self) -> datetime:
        return self.origin + timedelta(seconds=(time.time() - self.origin_real) * self.speed)


@dataclass
class World:
    state_dir: Path
    address: str  # the services' loopback address, e.g. 127.77.0.1
    port: int  # the port every service but Keystone-on-5000 answers on
    speed: float = 1.0
    lock: threading.RLock = field(default_factory=threading.RLock, repr=False)
    data: dict = field(default_factory=dict)
    faults: dict = field(default_factory=dict)  # name -> remaining count (or detail)

    def __post_init__(self):
        self.state_dir = Path(self.state_dir)
        self.clock = Clock(self.speed)
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

    def url(self, prefix: str = "") -> str:
        return f"http://{self.address}:{self.port}{prefix}"

    def next_address(self) -> str:
        """A fresh loopback address for a floating IP, in the twin's own 127.a.b.0/24."""
        base = self.address.rsplit(".", 1)[0]
        used = {ip["floating_ip_address"] for ip in self.data["floatingips"].values()}
        for last in range(10, 255):
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
