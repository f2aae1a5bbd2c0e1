"""The network guard: in a process that uses the twin, a connection to anything outside loopback fails
at once, before a packet (or a DNS query) leaves the machine.

python-chi has Chameleon's real addresses built in (its site list's default, KVM@TACC's Keystone), so
a twin run that forgot to point one of them at the twin must stop loudly, not reach the Internet.
`install()` patches this process's socket module; `environment()` gives child processes (notebook
kernels, scripts) the same guard through `sitecustomize`, which Python imports at start-up.
"""

from __future__ import annotations

import ipaddress
import os
import socket
from pathlib import Path

SITE_DIR = Path(__file__).resolve().parent / "guard_site"
FLAG = "CHI_SERIES_NETWORK_GUARD"


class BlockedConnection(ConnectionRefusedError):
    """A connection to an address outside 127.0.0.0/8 (or ::1) in a guarded process."""


def allowed(host) -> bool:
    if host in ("localhost", "localhost.localdomain", "", None):
        return True
    try:
        address = ipaddress.ip_address(str(host).split("%")[0])
    except ValueError:
        return False  # a name: resolving it would ask a DNS server
    return address.is_loopback


def _refuse(host, port) -> None:
    raise BlockedConnection(f"network guard: refused a connection to {host}:{port}; only 127.0.0.0/8 may be "
                            "reached in a run against the twin (something still points at a real address)")


def install() -> None:
    """Guard this process (idempotent)."""
    if getattr(socket, "_chi_series_guarded", False):
        return
    real_getaddrinfo, real_connect, real_connect_ex = socket.getaddrinfo, socket.socket.connect, socket.socket.connect_ex

    def getaddrinfo(host, port, *args, **kwargs):
        if not allowed(host.decode() if isinstance(host, bytes) else host):
            _refuse(host, port)
        return real_getaddrinfo(host, port, *args, **kwargs)

    def check(sock, address):
        if sock.family in (socket.AF_INET, socket.AF_INET6) and not allowed(address[0]):
            _refuse(address[0], address[1])

    def connect(self, address):
        check(self, address)
        return real_connect(self, address)

    def connect_ex(self, address):
        check(self, address)
        return real_connect_ex(self, address)

    socket.getaddrinfo = getaddrinfo
    socket.socket.connect = connect
    socket.socket.connect_ex = connect_ex
    socket._chi_series_guarded = True


def environment(base: dict | None = None) -> dict[str, str]:
    """`base` (default: this environment) with the guard switched on for every Python started with it."""
    env = dict(os.environ if base is None else base)
    paths = [p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p and p != str(SITE_DIR)]
    env["PYTHONPATH"] = os.pathsep.join([str(SITE_DIR), *paths])
    env[FLAG] = "1"
    return env


def is_twin(site_list_url: str) -> bool:
    """True when python-chi's site list is on a loopback address: a run against the twin."""
    from urllib.parse import urlsplit

    host = urlsplit(site_list_url).hostname if site_list_url else None
    return bool(host) and allowed(host) and host not in ("", None)
