"""Starting and stopping the twin: the services on their loopback address, the nodes, the RC files.

`start()` runs everything in this process (the tests use it directly); `python -m chi_helpers twin
up` runs `main()` in a background process that does the same and keeps going until `twin down`.
CHI@TACC's services answer on the twin's address, KVM@TACC's on a second loopback address with a
Keystone of its own (twin/sites.py). The RC file it writes is CHI@TACC's application credential, like
the one a headless run uses on Chameleon, plus `CHI_RESOURCE_API_URL`, which points python-chi's site
list at the twin. Beside it: KVM@TACC's (`twin-kvm-openrc.sh`: a credential of that site, for the vm
variant), a user-and-password RC file, and `twin-hub.env`, the environment of a kernel on Chameleon's
JupyterHub (no credential of its own: python-chi asks the hub stand-in for an access token).
"""

from __future__ import annotations

import importlib
import ipaddress
import json
import os
import shlex
import socket
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

from chi_helpers import network_guard
from chi_helpers.twin import jupyterhub, keycloak, keystone, sites
from chi_helpers.twin.web import Fault, Request, Service, TwinServer, reply, serve
from chi_helpers.twin.world import FAULTS, World

PORT = 5000  # python-chi builds auth_url as <site web>:5000/v3; every service shares the port
SERVICE_MODULES = ["keystone", "sites", "blazar", "nova", "neutron", "glance", "jupyterhub"]
SITE_SERVICE_MODULES = ["keystone", "blazar", "nova", "neutron", "glance"]  # what KVM@TACC serves itself
PROJECT, USER, PASSWORD = "CHI-000000", "ci-user", "twin-password"
HUB_ENV = "twin-hub.env"
RC_FILE, KVM_RC_FILE = "twin-openrc.sh", "twin-kvm-openrc.sh"


@dataclass
class Twin:
    world: World
    server: TwinServer
    rc_file: Path
    nodes: object | None = None
    _stop: threading.Event | None = None
    site_servers: list = field(default_factory=list)  # KVM@TACC's

    @property
    def url(self) -> str:
        return self.world.url()

    @property
    def kvm_rc_file(self) -> Path:
        """KVM@TACC's RC file: a credential only KVM@TACC's Keystone knows (the vm variant's site)."""
        return self.rc_file.with_name(KVM_RC_FILE)

    def environment(self) -> dict[str, str]:
        """The variables the RC file exports (what a process needs to use the twin at CHI@TACC)."""
        from chi_helpers.chameleon.openstack_rc import parse

        return parse(self.rc_file.read_text())

    def kvm_environment(self) -> dict[str, str]:
        """The variables KVM@TACC's RC file exports."""
        from chi_helpers.chameleon.openstack_rc import parse

        return parse(self.kvm_rc_file.read_text())

    @property
    def hub_env_file(self) -> Path:
        return self.world.state_dir / HUB_ENV

    def hub_environment(self) -> dict[str, str]:
        """What a kernel on the hub stand-in has in its environment (`twin-hub.env`)."""
        return read_env_file(self.hub_env_file)

    def hub_sign_in(self, keys_folder: Path | None = None) -> dict[str, str]:
        """The student signs in to the hub again and starts a new server: new tokens, and `twin-hub.env`
        rewritten with what the hub gives the new server (its key pair in `keys_folder`)."""
        with self.world.lock:
            record = jupyterhub.sign_in(self.world, USER)
            write_hub_env(self.world, self.hub_env_file, record, keys_folder)
        return self.hub_environment()

    def pass_time(self, seconds: float, browser_every: float | None = 60) -> None:
        pass_time(self.world, seconds, browser_every)

    def stop(self) -> None:
        if self._stop:
            self._stop.set()
        if self.nodes is not None:
            self.nodes.stop()
        for server in [self.server, *self.site_servers]:
            server.shutdown()
            server.server_close()


def summary_of(data: dict) -> dict:
    """What `twin status --json` prints from the twin's state (live, or as saved in world.json):
    every lease, server and floating IP that exists."""
    leases = [{"name": lease["name"], "id": lease["id"], "status": lease["status"],
               "start_date": lease["start_date"], "end_date": lease["end_date"]} for lease in data["leases"].values()]
    servers = [{"name": server["name"], "id": server["id"], "status": server["status"]}
               for server in data["servers"].values()]
    addresses = [{"address": ip["floating_ip_address"], "status": ip.get("status", "DOWN"),
                  "port_id": ip.get("port_id"), "description": ip.get("description", "")}
                 for ip in data["floatingips"].values()]
    return {"leases": leases, "servers": servers, "floating_ips": addresses}


def summary(world: World) -> dict:
    with world.lock:
        return summary_of(world.data)


class Admin(Service):
    """The twin's own controls, beside the services: status, and faults on request."""

    prefix = "/twin"
    name = "twin"
    routes = [("GET", "/status", "status"), ("POST", "/faults", "fault"), ("POST", "/clock", "clock")]

    def status(self, request: Request):
        return reply(200, summary(self.world))

    def clock(self, request: Request):
        """{"advance": seconds, "browser_every": seconds or null}: the time a session spends elsewhere."""
        body = request.json()
        try:
            seconds = float(body.get("advance", 0))
            every = body.get("browser_every", 60)
            every = None if every is None else float(every)
        except (TypeError, ValueError):
            raise Fault(400, "advance (and browser_every) must be numbers of seconds") from None
        if seconds < 0 or (every is not None and every <= 0):
            raise Fault(400, "the clock only moves forward, and the browser asks at a positive interval")
        pass_time(self.world, seconds, every)
        return reply(200, {"now": self.world.now().isoformat(), "offset": self.world.clock.offset})

    def fault(self, request: Request):
        body = request.json()
        if body.get("fault") not in FAULTS:
            raise Fault(400, f"unknown fault {body.get('fault')!r}: one of {', '.join(FAULTS)}")
        self.world.inject(body["fault"], int(body.get("count", 1)))
        return reply(200, {"faults": self.world.faults})


def pass_time(world: World, seconds: float, browser_every: float | None = 60) -> None:
    """`seconds` of a hub session go by at once: the twin's clock moves on (and every kernel's that follows
    its offset file), with the student's hub page open, asking the hub every `browser_every` seconds
    (None: the page is closed)."""
    left, step = seconds, browser_every or seconds
    while left > 0:
        moved = min(step, left)
        with world.lock:
            world.clock.advance(moved)
            if browser_every and USER in world.data.get("hub_users", {}):
                jupyterhub.browser_request(world, USER)
        left -= moved


def free_address(state_dir: Path, site: str = "", taken: tuple[str, ...] = ()) -> str:
    """A loopback address 127.a.b.1 whose port 5000 is free, stable for a state folder (and site) when
    possible, in none of the /24s of `taken` (the twin's floating IPs come from its own /24)."""
    seed = sum(f"{state_dir.resolve()}{site}".encode()) % 200
    busy = {address.rsplit(".", 1)[0] for address in taken}
    for offset in range(200):
        a, b = 100 + (seed + offset) % 100, (seed * 7 + offset) % 250 + 1
        address = f"127.{a}.{b}.1"
        if address.rsplit(".", 1)[0] in busy:
            continue
        with socket.socket() as probe:
            try:
                probe.bind((address, PORT))
            except OSError:
                continue
        return address
    raise RuntimeError("no loopback address with port 5000 free")


def write_rc(world: World, path: Path, credential_id: str, secret: str, site: str = "CHI@TACC") -> None:
    """An application credential's RC file, as `site`'s dashboard hands it out (its Keystone, its region).
    The site list (CHI_RESOURCE_API_URL) is the twin's, whichever site wrote it."""
    lines = [
        f"# OpenStack RC file for the Chameleon twin's {site} (an application credential, as a headless run uses).",
        f"export OS_AUTH_URL=http://{sites.address_of(world, site)}:{world.port}/v3",
        "export OS_AUTH_TYPE=v3applicationcredential",
        "export OS_IDENTITY_API_VERSION=3",
        "export OS_INTERFACE=public",
        f"export OS_REGION_NAME={site}",
        f"export OS_APPLICATION_CREDENTIAL_ID={credential_id}",
        f"export OS_APPLICATION_CREDENTIAL_SECRET={secret}",
        "export OS_KEYPAIR_NAME=twin-rehearsal",  # python-chi's default is $USER-jupyter; CI may have no USER
        f"export OS_KEYPAIR_PRIVATE_KEY={world.state_dir / 'keys' / 'id_rsa'}",
        f"export OS_KEYPAIR_PUBLIC_KEY={world.state_dir / 'keys' / 'id_rsa.pub'}",
        # python-chi reads the site list here instead of Chameleon's API.
        f"export CHI_RESOURCE_API_URL={world.url('/api')}",
        # Nothing that uses these credentials may leave this machine: the series installs the guard.
        f"export {network_guard.VARIABLE}={network_guard.LOOPBACK}",
    ]
    path.write_text("\n".join(lines) + "\n")
    path.chmod(0o600)


def write_password_rc(world: World, path: Path) -> None:
    """A user-and-password RC file, with no project: the kind that leaves the choice to python-chi's
    project widget, as a student's own login does."""
    keys = world.state_dir / "keys"
    lines = [
        "# OpenStack RC file for the Chameleon twin: a user and password, no project (the widget picks one).",
        f"export OS_AUTH_URL={world.url('/v3')}",
        "export OS_AUTH_TYPE=v3password",
        "export OS_IDENTITY_API_VERSION=3",
        "export OS_INTERFACE=public",
        f"export OS_USERNAME={USER}",
        f"export OS_PASSWORD={PASSWORD}",
        "export OS_USER_DOMAIN_NAME=chameleon",
        "export OS_KEYPAIR_NAME=twin-rehearsal",
        f"export OS_KEYPAIR_PRIVATE_KEY={keys / 'id_rsa'}",
        f"export OS_KEYPAIR_PUBLIC_KEY={keys / 'id_rsa.pub'}",
        f"export CHI_RESOURCE_API_URL={world.url('/api')}",
        f"export {network_guard.VARIABLE}={network_guard.LOOPBACK}",
    ]
    path.write_text("\n".join(lines) + "\n")
    path.chmod(0o600)


def write_hub_env(world: World, path: Path, hub_user: dict, keys_folder: Path | None = None) -> None:
    """The environment of a kernel on Chameleon's JupyterHub (twin/jupyterhub.py `spawn_environment`: the
    hub's OS_*, JUPYTERHUB_*, the key pair) and, as in the RC files, the twin's site list and the network
    guard. No OS_KEYPAIR_NAME (python-chi makes it $USER-jupyter)."""
    values = {**jupyterhub.spawn_environment(world, hub_user, str(keys_folder or world.state_dir / "keys")),
              "CHI_RESOURCE_API_URL": world.url("/api"), network_guard.VARIABLE: network_guard.LOOPBACK}
    lines = ["# The environment of a kernel on Chameleon's JupyterHub, for the twin: no RC file and no credential;",
             "# python-chi asks the hub's API for the student's access token and signs in through Keystone's",
             "# federation route. Source it (or give its variables to a kernel) before python-chi's first import."]
    lines += [f"export {key}={shlex.quote(value)}" for key, value in values.items()]
    path.write_text("\n".join(lines) + "\n")
    path.chmod(0o600)


def read_env_file(path: Path) -> dict[str, str]:
    """The `export NAME=value` lines of an environment file such as `twin-hub.env`."""
    values = {}
    for line in path.read_text().splitlines():
        if line.startswith("export ") and "=" in line:
            name, _, value = line[len("export "):].partition("=")
            words = shlex.split(value)
            values[name] = words[0] if words else ""
    return values


def make_key_pair(directory: Path) -> None:
    """The SSH key pair a headless run names in its RC file (the hub gives students one)."""
    directory.mkdir(parents=True, exist_ok=True)
    if (directory / "id_rsa").exists():
        return
    import paramiko

    key = paramiko.RSAKey.generate(2048)
    key.write_private_key_file(str(directory / "id_rsa"))
    (directory / "id_rsa.pub").write_text(f"ssh-rsa {key.get_base64()} twin-key\n")


def start(state_dir: str | os.PathLike, address: str | None = None, speed: float = 1.0,
          nodes: bool = True, end_speed: float | None = None, access_token_seconds: float | None = None) -> Twin:
    """Start the twin's services (and, with `nodes`, an SSH node per floating IP) in this process.

    `speed`: how many times sooner a lease starts than its start date says (`end_speed`: ends;
    default the same). A rehearsal of the whole series wants leases that start soon and last.
    `access_token_seconds`: how long Keycloak's access tokens last (twin/keycloak.py says why an hour)."""
    state_dir = Path(state_dir).resolve()
    state_dir.mkdir(parents=True, exist_ok=True)
    address = address or free_address(state_dir)
    if not ipaddress.ip_address(address).is_loopback:
        raise ValueError(f"the twin only listens on loopback addresses (127.0.0.0/8), not {address}")
    world = World(state_dir, address, PORT, speed=speed, end_speed=end_speed)
    kvm = sites.SiteWorld(world, free_address(state_dir, sites.KVM, taken=(address,)))
    sites.place(world, kvm.address)
    credential_id, secret = world.new_id().replace("-", ""), world.new_id().replace("-", "")
    keystone.seed(world, PROJECT, USER, PASSWORD, credential_id, secret)
    kvm_credential = keystone.add_site_credential(world, sites.KVM, f"{USER}-twin")
    keycloak.set_lifetimes(world, access_token=access_token_seconds)
    mounted: list[Service] = [Admin(world)]
    for name in SERVICE_MODULES:
        module = importlib.import_module(f"{__package__}.{name}")
        mounted.extend(module.services(world))
    for name in SERVICE_MODULES:  # state that needs every service mounted (hosts, flavors, images)
        module = importlib.import_module(f"{__package__}.{name}")
        if hasattr(module, "seed_inventory"):
            module.seed_inventory(world)
    server = serve(world, mounted, address, PORT)
    kvm_server = serve(kvm, [service for name in SITE_SERVICE_MODULES
                             for service in importlib.import_module(f"{__package__}.{name}").services(kvm)],
                       kvm.address, PORT)
    make_key_pair(state_dir / "keys")
    rc_file = state_dir / RC_FILE
    write_rc(world, rc_file, credential_id, secret)
    write_rc(world, state_dir / KVM_RC_FILE, kvm_credential["id"], kvm_credential["secret"], site=sites.KVM)
    write_password_rc(world, state_dir / "twin-password-openrc.sh")
    write_hub_env(world, state_dir / HUB_ENV, jupyterhub.seed(world, USER))
    world.save()
    twin = Twin(world, server, rc_file, site_servers=[kvm_server])
    if nodes:
        from chi_helpers.twin.node import Nodes

        twin.nodes = Nodes(world)
        twin._stop = threading.Event()

        def keep_in_step():
            while not twin._stop.wait(0.3):
                twin.nodes.sync()

        threading.Thread(target=keep_in_step, name="twin-nodes", daemon=True).start()
    (state_dir / "twin.json").write_text(json.dumps({"address": address, "port": PORT, "pid": os.getpid(),
                                                     "rc_file": str(rc_file), "hub_env": str(twin.hub_env_file),
                                                     "kvm_rc_file": str(twin.kvm_rc_file),
                                                     "site_addresses": world.data["site_addresses"],
                                                     "started": time.time()}))
    return twin


def main(argv: list[str] | None = None) -> int:
    """The background process behind `twin up`: start, then serve until SIGTERM (`twin down`)."""
    import argparse
    import signal

    parser = argparse.ArgumentParser(prog="python -m chi_helpers.twin.control")
    parser.add_argument("--state-dir", type=Path, required=True)
    parser.add_argument("--speed", type=float, default=60.0)
    parser.add_argument("--end-speed", type=float, default=1.0)
    parser.add_argument("--access-token-seconds", type=float, default=None,
                        help="how long Keycloak's access tokens last (default 3600: twin/keycloak.py says why)")
    args = parser.parse_args(argv)
    from chi_helpers import network_guard as guard

    guard.install()  # the twin itself never reaches out either
    twin = start(args.state_dir, speed=args.speed, end_speed=args.end_speed,
                 access_token_seconds=args.access_token_seconds)
    stopping = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stopping.set())
    signal.signal(signal.SIGINT, lambda *_: stopping.set())
    print(f"twin at {twin.url} (KVM@TACC at {sites.address_of(twin.world, sites.KVM)}); RC files {twin.rc_file} "
          f"(CHI@TACC) and {twin.kvm_rc_file} (KVM@TACC); a hub kernel's environment {twin.hub_env_file}", flush=True)
    stopping.wait()
    twin.stop()
    print("twin stopped", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
