"""The network guard: in a process that asks for it, a connection outside the allowed networks fails at
once, before a packet (or a DNS query) leaves the machine.

python-chi has Chameleon's real addresses built in (its site list's default, KVM@TACC's Keystone), so a
rehearsal against a stand-in that forgot to point one of them elsewhere must stop loudly, not reach the
Internet. Whoever hands out the credentials asks for it the way a site hands out everything else: the
RC file exports `CHI_SERIES_ALLOWED_NETWORKS` (e.g. `127.0.0.0/8`), and the series honours it.
`install()` patches this process's socket module; `environment()` gives child processes (notebook
kernels, scripts) the same guard through `sitecustomize`, which Python imports at start-up.
"""

from __future__ import annotations

import ipaddress
import os
import socket
from pathlib import Path

SITE_DIR = Path(__file__).resolve().parent / "network_guard_site"
VARIABLE = "CHI_SERIES_ALLOWED_NETWORKS"  # comma-separated networks, e.g. "127.0.0.0/8"
LOOPBACK = "127.0.0.0/8,::1/128"


class BlockedConnection(ConnectionRefusedError):
    """A connection to an address outside the allowed networks in a guarded process."""


def parse(networks: str) -> list:
    """`"127.0.0.0/8, ::1/128"` as networks; a clear error for anything else."""
    parsed = []
    for text in (part.strip() for part in networks.split(",")):
        if not text:
            continue
        try:
            parsed.append(ipaddress.ip_network(text, strict=False))
        except ValueError:
            raise ValueError(f"{VARIABLE}: {text!r} is not a network (write it as 127.0.0.0/8)") from None
    if not parsed:
        raise ValueError(f"{VARIABLE} is set but names no network (write it as 127.0.0.0/8)")
    return parsed


def allowed(host, networks: str = LOOPBACK) -> bool:
    if host in ("localhost", "localhost.localdomain", "", None):
        return True
    try:
        address = ipaddress.ip_address(str(host).split("%")[0])
    except ValueError:
        return False  # a name: resolving it would ask a DNS server
    return any(address in network for network in parse(networks))


def install(networks: str | None = None) -> None:
    """Guard this process: `networks`, or the environment's, or loopback. A second call changes nothing."""
    if getattr(socket, "_chi_series_guarded", False):
        return
    networks = networks or os.environ.get(VARIABLE) or LOOPBACK
    parse(networks)  # a bad value is an error now, not at the first connection
    real_getaddrinfo, real_connect, real_connect_ex = socket.getaddrinfo, socket.socket.connect, socket.socket.connect_ex

    def refuse(host, port):
        raise BlockedConnection(f"network guard: refused a connection to {host}:{port}; only {networks} may be "
                                f"reached in this run ({VARIABLE}): something still points at a real address")

    def getaddrinfo(host, port, *args, **kwargs):
        if not allowed(host.decode() if isinstance(host, bytes) else host, networks):
            refuse(host, port)
        return real_getaddrinfo(host, port, *args, **kwargs)

    def check(sock, address):
        if sock.family in (socket.AF_INET, socket.AF_INET6) and not allowed(address[0], networks):
            refuse(address[0], address[1])

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


def environment(base: dict | None = None, networks: str = LOOPBACK) -> dict[str, str]:
    """`base` (default: this environment) with the guard switched on for every Python started with it."""
    env = dict(os.environ if base is None else base)
    paths = [p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p and p != str(SITE_DIR)]
    env["PYTHONPATH"] = os.pathsep.join([str(SITE_DIR), *paths])
    env[VARIABLE] = networks
    return env
