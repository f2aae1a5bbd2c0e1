"""Nova (compute API v2.1), as far as python-chi 1.2.10 and its clients use it.

Mounted at `/compute`, as DevStack lays it out: the catalog's endpoint is `/compute/v2.1`, the version
document that keystoneauth and openstacksdk discover is at `/compute/v2.1` and the list of versions
at `/compute/`. As Nova does:

- **microversions**: a request names one in `OpenStack-API-Version: compute X.Y` (preferred) or
  `X-OpenStack-Nova-API-Version: X.Y`; none means 2.1, `latest` the maximum; one outside
  [MIN_VERSION, MAX_VERSION] is 406. Every answer echoes the version in both headers. What the
  series' clients depend on changes with it: the flavor embedded in a server (2.47), flavors'
  `extra_specs` and `description` (2.61, 2.55), key pair `type` and 201/204 codes (2.2), key pair
  paging (2.35), the floating IP actions (gone from 2.44), a required `networks` (2.37).
- **errors** are `{"<name>": {"code", "message"}}` (`itemNotFound`, `badRequest`,
  `conflictingRequest`...), which is what novaclient and openstacksdk turn into their exceptions.
- **servers** are per project; `?name=` on a listing is a regular expression (searched, not
  anchored); names may repeat. A server is BUILD while it is scheduled and deployed, then ACTIVE,
  or ERROR with Nova's `fault`. Scheduling follows Chameleon's Blazar filter: a bare-metal server
  needs the `reservation` scheduler hint naming a `physical:host` reservation of an ACTIVE lease of
  its project, and lands on one of that reservation's hosts that no other server holds; a VM whose
  flavor is a reservation's flavor needs that reservation's lease ACTIVE (and room in its amount);
  a GPU flavor that is not a reservation's cannot be placed. Otherwise: "No valid host was found".
- **networking** is Neutron's: once placed, the server gets a port (`device_owner`
  `compute:nova`) with a fixed IP on each network it asked for, and its `addresses` are computed
  from its ports and the floating IPs bound to them whenever it is read; a floating IP that Neutron
  bound shows there only NETWORK_CHANGED_SECONDS later, as Nova hears of it. Deleting a server deletes
  the ports Nova made and leaves their floating IPs allocated to the project, unbound.
  addSecurityGroup of a group the server has already is 400: Nova appends it and Neutron refuses.
- **key pairs** belong to a user (`world.data["keypairs"][name]`, with `user_id`); the fingerprint
  is the colon-separated MD5 of the key, as python-chi computes it.

Time: scheduling takes SCHEDULE_SECONDS and a deployment BAREMETAL_BUILD_SECONDS (VM:
VM_BUILD_SECONDS) of twin time, each at most MAX_REAL_SECONDS of real time. The fault
`server-error` makes the next server fail its deployment (ERROR after the build time, as Nova
reports a deployment that failed on every host it could try).
"""

from __future__ import annotations

import base64
import hashlib
import ipaddress
import random
import re
import secrets
import threading
import time
from urllib.parse import unquote

from .keystone import has_role
from .web import Fault, Reply, Request, Service, reply

MIN_VERSION = (2, 1)
MAX_VERSION = (2, 95)  # Nova 2023.1 (Antelope), the release Chameleon runs

SCHEDULE_SECONDS = 20  # twin time from create to a placement (or "No valid host")
BAREMETAL_BUILD_SECONDS = 600  # twin time Ironic takes to deploy a host
VM_BUILD_SECONDS = 60
MAX_REAL_SECONDS = {"schedule": 0.5, "build": 4.0}
# Real seconds from Neutron binding a floating IP to Nova listing it in the server's `addresses`: Neutron
# sends its events to Nova in batches (neutron/notifiers/nova.py, send_events_interval: 2 s by default),
# and Nova's `network-changed` handler then refreshes the instance's network info cache, which is where
# `addresses` come from. Short here to keep tests fast; a World's `network_changed_seconds` overrides it.
NETWORK_CHANGED_SECONDS = 1.0

NO_VALID_HOST = "No valid host was found. There are not enough hosts available."
DEPLOY_FAILED = ("Exceeded maximum number of retries. Exhausted all hosts available for retrying build "
                 "failures for instance {id}.")
BAREMETAL_FLAVOR = "baremetal"
RESERVATION_SPEC = "aggregate_instance_extra_specs:reservation"

FAULT_NAMES = {400: "badRequest", 401: "unauthorized", 403: "forbidden", 404: "itemNotFound", 405: "badMethod",
               409: "conflictingRequest", 413: "overLimit", 415: "badMediaType", 429: "overLimit",
               501: "notImplemented", 503: "serviceUnavailable"}

SERVER_KEYS = {  # what the create schema allows in "server" (additionalProperties: false), by microversion
    "name": (2, 1), "imageRef": (2, 1), "flavorRef": (2, 1), "adminPass": (2, 1), "metadata": (2, 1),
    "networks": (2, 1), "OS-DCF:diskConfig": (2, 1), "accessIPv4": (2, 1), "accessIPv6": (2, 1),
    "key_name": (2, 1), "user_data": (2, 1), "availability_zone": (2, 1), "block_device_mapping": (2, 1),
    "block_device_mapping_v2": (2, 1), "min_count": (2, 1), "max_count": (2, 1),
    "return_reservation_id": (2, 1), "security_groups": (2, 1), "config_drive": (2, 1),
    "description": (2, 19), "tags": (2, 52), "trusted_image_certificates": (2, 63), "host": (2, 74),
    "hypervisor_hostname": (2, 74), "hostname": (2, 90),
}


# --- helpers shared with the other services ---------------------------------------------------------


def fingerprint(public_key: str) -> str:
    """The MD5 fingerprint Nova gives an SSH public key (aa:bb:...); ValueError if it is not one."""
    parts = public_key.strip().split()
    if len(parts) < 2:
        raise ValueError("not an SSH public key")
    try:
        blob = base64.b64decode(parts[1].encode("ascii"), validate=True)
    except (ValueError, UnicodeEncodeError):
        raise ValueError("not an SSH public key") from None
    try:  # the blob starts with its own type name, as in the key's first word
        size = int.from_bytes(blob[:4], "big")
        if blob[4:4 + size].decode("ascii") != parts[0]:
            raise ValueError("the key's type does not match its data")
    except (UnicodeDecodeError, IndexError):
        raise ValueError("not an SSH public key") from None
    digest = hashlib.md5(blob).hexdigest()
    return ":".join(digest[i:i + 2] for i in range(0, len(digest), 2))


def _reservation(world, reservation_id: str):
    """(lease, reservation) for a Blazar reservation id, or None (blazar's own lookup when it has one)."""
    from . import blazar

    finder = getattr(blazar, "reservation", None)
    if callable(finder):
        try:
            return finder(world, reservation_id)
        except (KeyError, ValueError, TypeError):  # a lease record Blazar cannot read: look ourselves
            pass
    for lease in world.data["leases"].values():
        for reservation in lease.get("reservations") or []:
            if reservation.get("id") == reservation_id:
                return lease, reservation
    return None


def _reservation_hosts(reservation: dict) -> list[str]:
    """The hosts Blazar allocated to a physical:host reservation (blazar keeps them in `_host_ids`)."""
    return list(reservation.get("_host_ids") or reservation.get("_hosts") or [])


def sync_leases(world) -> None:
    """Bring every lease up to date with the clock (Blazar's start and end events), and end the
    servers of the reservations that ended, as Blazar does when a lease ends."""
    for lease in list(world.data["leases"].values()):
        _lease_status(world, lease)
    for server in list(world.data["servers"].values()):
        reservation_id = server.get("_placed_on")
        if not reservation_id:
            continue
        found = _reservation(world, reservation_id)
        if found is None or found[1].get("status") == "deleted" or _lease_status(world, found[0]) in ("TERMINATED", "DELETED"):
            remove_server(world, server["id"], f"its reservation {reservation_id} ended")


def _lease_status(world, lease: dict) -> str:
    from . import blazar

    status = getattr(blazar, "lease_status", None)
    if callable(status):
        try:
            return status(world, lease)
        except (KeyError, ValueError, TypeError):  # a lease written without Blazar's dates: as stored
            pass
    return lease.get("status", "")


def remove_server(world, server_id: str, why: str = "") -> None:
    """Delete a server as Nova does (also when Blazar ends its lease): the ports Nova made for it are
    deleted, ports the user made are unbound; their floating IPs stay the project's, unbound."""
    server = world.data["servers"].pop(server_id, None)
    if server is None:
        return
    _drop_ports(world, server)
    world.record("nova", f"server {server['name']} ({server_id}) deleted" + (f": {why}" if why else ""))


def advance(world) -> bool:
    """Move every server along its lifecycle as far as the clock says; True if anything changed."""
    changed = False
    with world.lock:
        before = len(world.data["servers"])
        sync_leases(world)
        changed = len(world.data["servers"]) != before
        now = time.time()
        for server in list(world.data["servers"].values()):
            if server.get("_phase") == "scheduling" and now >= server["_schedule_at"]:
                _schedule(world, server)
                changed = True
            if server.get("_phase") == "spawning" and now >= server["_ready_at"]:
                _finish(world, server)
                changed = True
    return changed


# --- lifecycle ----------------------------------------------------------------------------------------


def _stamp(world) -> str:
    return world.now().strftime("%Y-%m-%dT%H:%M:%SZ")


def _real_seconds(world, twin_seconds: float, kind: str) -> float:
    return min(twin_seconds / max(world.speed, 1e-9), MAX_REAL_SECONDS[kind])


def _is_baremetal(flavor: dict) -> bool:
    specs = flavor.get("extra_specs") or {}
    return flavor.get("name") == BAREMETAL_FLAVOR or "resources:CUSTOM_BAREMETAL" in specs


def _live(server: dict) -> bool:
    return server.get("status") in ("BUILD", "ACTIVE", "SHUTOFF", "REBOOT")


def _place(world, server: dict) -> tuple[str | None, str | None]:
    """(host, None) where the scheduler puts the server, or (None, fault message)."""
    flavor = server["_flavor"]
    project = server["tenant_id"]
    hint = (server.get("_hints") or {}).get("reservation")
    specs = flavor.get("extra_specs") or {}
    if _is_baremetal(flavor):
        found = _reservation(world, hint) if hint else None
        if not found:
            return None, NO_VALID_HOST
        lease, reservation = found
        if (reservation.get("resource_type") != "physical:host" or lease.get("project_id") != project
                or _lease_status(world, lease) != "ACTIVE"):
            return None, NO_VALID_HOST
        taken = {s.get("_host") for s in world.data["servers"].values() if s is not server and _live(s)}
        free = [h for h in _reservation_hosts(reservation) if h not in taken]
        return (free[0], None) if free else (None, NO_VALID_HOST)
    reserved = specs.get(RESERVATION_SPEC)
    if reserved:
        found = _reservation(world, reserved)
        if not found:
            return None, NO_VALID_HOST
        lease, reservation = found
        if lease.get("project_id") != project or _lease_status(world, lease) != "ACTIVE":
            return None, NO_VALID_HOST
        used = sum(1 for s in world.data["servers"].values() if s is not server and _live(s)
                   and (s["_flavor"].get("extra_specs") or {}).get(RESERVATION_SPEC) == reserved
                   and s.get("_host"))
        if used >= int(reservation.get("amount") or reservation.get("max") or 1):
            return None, NO_VALID_HOST
        return f"kvm-{reserved[:8]}", None
    if specs.get("trait:CUSTOM_GPU") == "required" or any(k.startswith("resources:CUSTOM_RESERVATION_") for k in specs):
        return None, NO_VALID_HOST  # a reservable flavor is only placed through a reservation
    return "kvm-shared", None


def _fail(world, server: dict, message: str) -> None:
    server.update({"status": "ERROR", "OS-EXT-STS:vm_state": "error", "OS-EXT-STS:task_state": None,
                   "OS-EXT-STS:power_state": 0, "updated": _stamp(world), "_phase": "error"})
    server["fault"] = {"code": 500, "created": _stamp(world), "message": message}
    world.record("nova", f"server {server['name']} ({server['id']}) ERROR: {message}")


def _schedule(world, server: dict) -> None:
    host, problem = _place(world, server)
    if problem:
        _fail(world, server, problem)
        return
    server["_host"] = host
    specs = server["_flavor"].get("extra_specs") or {}
    server["_placed_on"] = ((server.get("_hints") or {}).get("reservation") if _is_baremetal(server["_flavor"])
                            else specs.get(RESERVATION_SPEC))
    server["OS-EXT-AZ:availability_zone"] = "nova"
    server["hostId"] = hashlib.sha224((server["tenant_id"] + host).encode()).hexdigest()
    server["OS-EXT-STS:task_state"] = "spawning"
    server["updated"] = _stamp(world)
    server["_phase"] = "spawning"
    build = BAREMETAL_BUILD_SECONDS if _is_baremetal(server["_flavor"]) else VM_BUILD_SECONDS
    server["_ready_at"] = time.time() + _real_seconds(world, build, "build")
    try:
        for requested in server.get("_networks") or []:
            _bind_port(world, server, requested)
    except Exception as error:  # e.g. the network has no address left: Nova gives up on the build
        _drop_ports(world, server)
        server["hostId"], server["_host"], server["_placed_on"] = "", None, None
        message = getattr(error, "message", None) or str(error)
        _fail(world, server, f"Build of instance {server['id']} aborted: {message}")
        return
    _later(world, server["_ready_at"] - time.time())


def _finish(world, server: dict) -> None:
    if server.get("_doomed"):
        _drop_ports(world, server)
        server["hostId"] = ""
        server["_host"] = server["_placed_on"] = None
        _fail(world, server, DEPLOY_FAILED.format(id=server["id"]))
        return
    now = _stamp(world)
    server.update({"status": "ACTIVE", "OS-EXT-STS:vm_state": "active", "OS-EXT-STS:task_state": None,
                   "OS-EXT-STS:power_state": 1, "OS-SRV-USG:launched_at": now.replace("Z", ".000000"),
                   "updated": now, "progress": 0, "_phase": "active"})
    world.record("nova", f"server {server['name']} ({server['id']}) ACTIVE on {server['_host']}")


def _later(world, delay: float) -> None:
    """Advance the servers once `delay` seconds from now (what the node and `twin status` see)."""
    def tick():
        with world.lock:
            if advance(world) and world.state_dir.exists():  # not after the twin's folder is gone
                world.save()

    timer = threading.Timer(max(delay, 0) + 0.02, tick)
    timer.daemon = True
    timer.start()


# --- ports and addresses ------------------------------------------------------------------------------


def _neutron(name: str):
    """A helper of the Neutron twin (new_port, release_port, ensure_default_group), if it has it."""
    from . import neutron

    helper = getattr(neutron, name, None)
    return helper if callable(helper) else None


def _mac(world) -> str:
    used = {p.get("mac_address") for p in world.data["ports"].values()}
    while True:
        mac = "fa:16:3e:" + ":".join(f"{random.randint(0, 255):02x}" for _ in range(3))
        if mac not in used:
            return mac


def _free_ip(world, subnet: dict, wanted: str | None = None) -> str | None:
    used = {ip.get("ip_address") for port in world.data["ports"].values() for ip in port.get("fixed_ips") or []
            if ip.get("subnet_id") == subnet["id"]} | {subnet.get("gateway_ip")}
    network = ipaddress.ip_network(subnet["cidr"], strict=False)
    if wanted:
        return wanted if wanted not in used and ipaddress.ip_address(wanted) in network else None
    pools = [(ipaddress.ip_address(p["start"]), ipaddress.ip_address(p["end"]))
             for p in subnet.get("allocation_pools") or []]
    for candidate in network.hosts():
        if str(candidate) not in used and (not pools or any(lo <= candidate <= hi for lo, hi in pools)):
            return str(candidate)
    return None


def _default_group(world, project: str) -> str | None:
    ensure = _neutron("ensure_default_group")
    if ensure:
        return ensure(world, project)["id"]
    return next((g["id"] for g in world.data["security_groups"].values()
                 if g.get("project_id", g.get("tenant_id")) == project and g.get("name") == "default"), None)


def _new_port(world, server: dict, network_id: str, fixed_ip: str | None, groups: list[str]) -> dict:
    """A port for the server, as Neutron makes it when Nova asks (Neutron's own helper when there)."""
    vnic = "baremetal" if _is_baremetal(server["_flavor"]) else "normal"
    make = _neutron("new_port")
    if make:
        port = make(world, server["tenant_id"], network_id, device_id=server["id"], device_owner="compute:nova",
                    fixed_ips=[{"ip_address": fixed_ip}] if fixed_ip else None, security_groups=groups)
        port["binding:vnic_type"] = vnic
        return port
    fixed_ips = []
    for subnet in world.data["subnets"].values():
        if subnet.get("network_id") == network_id and subnet.get("ip_version", 4) == 4:
            address = _free_ip(world, subnet, fixed_ip)
            if address is None:
                raise ValueError(f"No more IP addresses available on network {network_id}.")
            fixed_ips.append({"subnet_id": subnet["id"], "ip_address": address})
            break
    now = _stamp(world)
    port = {"id": world.new_id(), "name": "", "network_id": network_id, "tenant_id": server["tenant_id"],
            "project_id": server["tenant_id"], "mac_address": _mac(world), "admin_state_up": True,
            "status": "ACTIVE", "device_id": server["id"], "device_owner": "compute:nova", "fixed_ips": fixed_ips,
            "allowed_address_pairs": [], "extra_dhcp_opts": [], "security_groups": list(groups), "description": "",
            "binding:vnic_type": vnic, "port_security_enabled": True, "dns_name": "", "tags": [],
            "created_at": now, "updated_at": now, "revision_number": 1}
    world.data["ports"][port["id"]] = port
    return port


def _bind_port(world, server: dict, requested: dict) -> None:
    port_id = requested.get("port")
    if port_id:  # a port the user made: Nova binds it to the server
        port = world.data["ports"].get(port_id)
        if port is not None:
            port.update({"device_id": server["id"], "device_owner": "compute:nova", "status": "ACTIVE",
                         "updated_at": _stamp(world)})
        return
    groups = list(server.get("_security_group_ids") or [])
    if "default" in (server.get("_security_group_names") or []) and not groups:
        default = _default_group(world, server["tenant_id"])
        groups = [default] if default else []
    port = _new_port(world, server, requested["uuid"], requested.get("fixed_ip"), groups)
    server.setdefault("_nova_ports", []).append(port["id"])


def _unbind_floating_ips(world, port_id: str) -> None:
    for ip in world.data["floatingips"].values():
        if ip.get("port_id") == port_id:
            ip.update({"port_id": None, "fixed_ip_address": None, "router_id": None, "status": "DOWN",
                       "updated_at": _stamp(world)})


def _drop_ports(world, server: dict) -> None:
    """Nova's cleanup: delete the ports it made, unbind the ones it was given."""
    release = _neutron("release_port")
    made = set(server.get("_nova_ports") or [])
    for port_id, port in list(world.data["ports"].items()):
        if port.get("device_id") != server["id"]:
            continue
        if port_id in made:
            if release:
                release(world, port_id)
            else:
                _unbind_floating_ips(world, port_id)
                del world.data["ports"][port_id]
        else:
            _unbind_floating_ips(world, port_id)
            port.update({"device_id": "", "device_owner": "", "status": "DOWN", "updated_at": _stamp(world)})
    server["_nova_ports"] = []


def server_ports(world, server_id: str) -> list[dict]:
    ports = [p for p in world.data["ports"].values() if p.get("device_id") == server_id]
    return sorted(ports, key=lambda p: p.get("created_at", ""))


def network_changed_seconds(world) -> float:
    return getattr(world, "network_changed_seconds", NETWORK_CHANGED_SECONDS)


def _nova_knows(world, ip: dict) -> bool:
    """Has Nova's cache caught up with this floating IP's binding? (Neutron stamps `_bound_at`.)"""
    return time.time() >= (ip.get("_bound_at") or 0) + network_changed_seconds(world)


def addresses(world, server_id: str) -> dict:
    """Nova's `addresses` for a server: its fixed IPs and the floating IPs on its ports, by network name;
    a floating IP once Nova has heard that Neutron bound it (NETWORK_CHANGED_SECONDS)."""
    shown: dict[str, list] = {}
    for port in server_ports(world, server_id):
        label = (world.data["networks"].get(port["network_id"]) or {}).get("name", port["network_id"])
        entries = shown.setdefault(label, [])
        for fixed in port.get("fixed_ips") or []:
            version = ipaddress.ip_address(fixed["ip_address"]).version
            entries.append({"version": version, "addr": fixed["ip_address"], "OS-EXT-IPS:type": "fixed",
                            "OS-EXT-IPS-MAC:mac_addr": port["mac_address"]})
        for ip in world.data["floatingips"].values():
            if ip.get("port_id") == port["id"] and _nova_knows(world, ip):
                entries.append({"version": 4, "addr": ip["floating_ip_address"], "OS-EXT-IPS:type": "floating",
                                "OS-EXT-IPS-MAC:mac_addr": port["mac_address"]})
    return shown


# --- the service ----------------------------------------------------------------------------------------


def _version_text(version: tuple[int, int]) -> str:
    return f"{version[0]}.{version[1]}"


class Nova(Service):
    prefix = "/compute"
    name = "nova"
    routes = [
        ("GET", "/", "versions"),
        ("GET", "/v2.1", "version"),
        # flavors
        ("GET", "/v2.1/flavors", "list_flavors"),
        ("GET", "/v2.1/flavors/detail", "list_flavors_detail"),
        ("GET", "/v2.1/flavors/(?P<flavor>[^/]+)", "get_flavor"),
        ("GET", "/v2.1/flavors/(?P<flavor>[^/]+)/os-extra_specs", "flavor_extra_specs"),
        ("GET", "/v2.1/flavors/(?P<flavor>[^/]+)/os-extra_specs/(?P<key>[^/]+)", "flavor_extra_spec"),
        # key pairs
        ("GET", "/v2.1/os-keypairs", "list_keypairs"),
        ("POST", "/v2.1/os-keypairs", "create_keypair"),
        ("GET", "/v2.1/os-keypairs/(?P<name>[^/]+)", "get_keypair"),
        ("DELETE", "/v2.1/os-keypairs/(?P<name>[^/]+)", "delete_keypair"),
        # servers
        ("GET", "/v2.1/servers", "list_servers"),
        ("POST", "/v2.1/servers", "create_server"),
        ("GET", "/v2.1/servers/detail", "list_servers_detail"),
        ("GET", "/v2.1/servers/(?P<server>[^/]+)", "get_server"),
        ("PUT", "/v2.1/servers/(?P<server>[^/]+)", "update_server"),
        ("DELETE", "/v2.1/servers/(?P<server>[^/]+)", "delete_server"),
        ("POST", "/v2.1/servers/(?P<server>[^/]+)/action", "server_action"),
        ("GET", "/v2.1/servers/(?P<server>[^/]+)/os-interface", "list_interfaces"),
        ("GET", "/v2.1/servers/(?P<server>[^/]+)/os-interface/(?P<port>[^/]+)", "get_interface"),
        ("GET", "/v2.1/servers/(?P<server>[^/]+)/ips", "list_ips"),
        ("GET", "/v2.1/servers/(?P<server>[^/]+)/ips/(?P<label>[^/]+)", "get_ips"),
        ("GET", "/v2.1/servers/(?P<server>[^/]+)/os-security-groups", "server_security_groups"),
        ("GET", "/v2.1/servers/(?P<server>[^/]+)/metadata", "get_metadata"),
        ("POST", "/v2.1/servers/(?P<server>[^/]+)/metadata", "merge_metadata"),
        ("PUT", "/v2.1/servers/(?P<server>[^/]+)/metadata", "replace_metadata"),
        ("GET", "/v2.1/servers/(?P<server>[^/]+)/metadata/(?P<key>[^/]+)", "get_metadata_item"),
        ("PUT", "/v2.1/servers/(?P<server>[^/]+)/metadata/(?P<key>[^/]+)", "set_metadata_item"),
        ("DELETE", "/v2.1/servers/(?P<server>[^/]+)/metadata/(?P<key>[^/]+)", "delete_metadata_item"),
    ]

    def error_body(self, status, message):
        if status == 401:  # keystonemiddleware answers these, in Keystone's format
            return {"error": {"code": 401, "title": "Unauthorized", "message": message}}
        return {FAULT_NAMES.get(status, "computeFault"): {"code": status, "message": message}}

    # --- microversions ------------------------------------------------------------------------

    def _requested_version(self, request: Request) -> tuple[int, int]:
        value = None
        for part in (request.headers.get("openstack-api-version") or "").split(","):
            bits = part.split()
            if len(bits) == 2 and bits[0].lower() == "compute":
                value = bits[1]
        if value is None:
            value = request.headers.get("x-openstack-nova-api-version")
        if value is None:
            return MIN_VERSION
        value = value.strip()
        if value.lower() == "latest":
            return MAX_VERSION
        match = re.fullmatch(r"(\d+)\.(\d+)", value)
        if not match:
            raise Fault(400, f"API Version String {value} is of invalid format. Must be of format "
                             "MajorNum.MinorNum.")
        version = (int(match.group(1)), int(match.group(2)))
        if not MIN_VERSION <= version <= MAX_VERSION:
            raise Fault(406, f"Version {value} is not supported by the API. Minimum is "
                             f"{_version_text(MIN_VERSION)} and maximum is {_version_text(MAX_VERSION)}.")
        return version

    def handle(self, request: Request) -> Reply:
        if request.path in ("/", "/v2.1"):
            return super().handle(request)
        try:
            version = self._requested_version(request)
        except Fault as fault:
            fault.headers.update({"Vary": "OpenStack-API-Version, X-OpenStack-Nova-API-Version"})
            raise
        request.version = version
        text = _version_text(version)
        headers = {"OpenStack-API-Version": f"compute {text}", "X-OpenStack-Nova-API-Version": text,
                   "Vary": "OpenStack-API-Version, X-OpenStack-Nova-API-Version",
                   "x-openstack-request-id": f"req-{self.world.new_id()}"}
        headers["x-compute-request-id"] = headers["x-openstack-request-id"]
        try:
            token = request.token()
            if not token.get("project"):
                raise Fault(403, "Policy doesn't allow this request to be performed without a project.")
            if advance(self.world):
                self.world.save()
            answer = super().handle(request)
        except Fault as fault:
            fault.headers.update(headers)
            raise
        answer.headers = {**headers, **answer.headers}
        return answer

    # --- versions ---------------------------------------------------------------------------------

    def _version_doc(self) -> dict:
        return {
            "id": "v2.1", "status": "CURRENT", "version": _version_text(MAX_VERSION),
            "min_version": _version_text(MIN_VERSION), "updated": "2013-07-23T11:33:21Z",
            "links": [{"rel": "self", "href": self.world.url("/compute/v2.1/")},
                      {"rel": "describedby", "type": "text/html", "href": "http://docs.openstack.org/"}],
            "media-types": [{"base": "application/json",
                             "type": "application/vnd.openstack.compute+json;version=2.1"}],
        }

    def versions(self, request: Request):
        doc = self._version_doc()
        del doc["media-types"]
        doc["links"] = doc["links"][:1]
        return reply(200, {"versions": [doc]})

    def version(self, request: Request):
        return reply(200, {"version": self._version_doc()})

    # --- common -------------------------------------------------------------------------------------

    def _project(self, request: Request) -> str:
        return request.token()["project"]["id"]

    def _user(self, request: Request) -> str:
        return request.token()["user"]["id"]

    def _page(self, items: list[dict], request: Request, key=lambda item: item["id"]) -> list[dict]:
        marker = request.arg("marker")
        if marker is not None:
            ids = [key(item) for item in items]
            if marker not in ids:
                raise Fault(400, f"marker [{marker}] not found")
            items = items[ids.index(marker) + 1:]
        limit = request.arg("limit")
        if limit is not None:
            try:
                limit = int(limit)
            except ValueError:
                raise Fault(400, f"Invalid input for query parameters limit. Value: {limit}. "
                                 f"'{limit}' does not match '^[0-9]*$'") from None
            items = items[:min(limit, 1000)]
        return items[:1000]

    def _link(self, kind: str, ident: str) -> list[dict]:
        return [{"rel": "self", "href": self.world.url(f"/compute/v2.1/{kind}/{ident}")},
                {"rel": "bookmark", "href": self.world.url(f"/compute/{kind}/{ident}")}]

    # --- flavors ------------------------------------------------------------------------------------

    def _visible_flavors(self, request: Request) -> list[dict]:
        """Public flavors, and the private ones this project was given (as Blazar's reserved ones are)."""
        project = self._project(request)
        return [f for f in self.world.data["flavors"].values()
                if f.get("os-flavor-access:is_public", True) or project in (f.get("_access") or [])]

    def _flavors(self, request: Request) -> list[dict]:
        shown = self._visible_flavors(request)
        wanted = request.arg("is_public")
        if wanted is not None and wanted.lower() in ("true", "t", "1", "yes", "false", "f", "0", "no"):
            flag = wanted.lower() in ("true", "t", "1", "yes")
            shown = [f for f in shown if f.get("os-flavor-access:is_public", True) == flag]
        for name, field in (("minRam", "ram"), ("minDisk", "disk")):
            if request.arg(name) is not None:
                try:
                    least = int(request.arg(name))
                except ValueError:
                    raise Fault(400, f"Invalid {name} filter [{request.arg(name)}]") from None
                shown = [f for f in shown if int(f.get(field) or 0) >= least]
        sort_key = request.arg("sort_key", "flavorid")
        field = "id" if sort_key == "flavorid" else sort_key
        reverse = request.arg("sort_dir", "asc") == "desc"
        shown.sort(key=lambda f: (str(f.get(field, "")), f["id"]), reverse=reverse)
        return self._page(shown, request)

    def _flavor(self, flavor: dict, request: Request, detail: bool = True) -> dict:
        body = {"id": flavor["id"], "name": flavor["name"], "links": self._link("flavors", flavor["id"])}
        if request.version >= (2, 55):
            body["description"] = flavor.get("description")
        if not detail:
            return body
        body.update({
            "ram": flavor.get("ram", 0), "disk": flavor.get("disk", 0), "vcpus": flavor.get("vcpus", 0),
            "OS-FLV-EXT-DATA:ephemeral": flavor.get("OS-FLV-EXT-DATA:ephemeral", 0),
            "OS-FLV-DISABLED:disabled": flavor.get("OS-FLV-DISABLED:disabled", False),
            "swap": (flavor.get("swap") or (0 if request.version >= (2, 75) else "")),
            "rxtx_factor": flavor.get("rxtx_factor", 1.0),
            "os-flavor-access:is_public": flavor.get("os-flavor-access:is_public", True),
        })
        if request.version >= (2, 61) and self._may_read_extra_specs(request):
            body["extra_specs"] = dict(flavor.get("extra_specs") or {})
        return body

    @staticmethod
    def _may_read_extra_specs(request: Request) -> bool:
        """nova/policies/flavor_extra_specs.py: index and show are PROJECT_READER_OR_ADMIN, so a token
        without `reader` (a member-only application credential's) may not read them. From 2.61 a
        flavor simply leaves them out for such a token (compute/flavors.py checks with fatal=False)."""
        token = request.token()
        return has_role(token, "reader") or has_role(token, "admin")

    def _authorize_extra_specs(self, request: Request, action: str) -> None:
        if not self._may_read_extra_specs(request):  # nova/exception.py PolicyNotAuthorized
            raise Fault(403, f"Policy doesn't allow os_compute_api:os-flavor-extra-specs:{action} to be performed.")

    def _find_flavor(self, request: Request, ident: str) -> dict:
        for flavor in self._visible_flavors(request):
            if flavor["id"] == ident:
                return flavor
        raise Fault(404, f"Flavor {ident} could not be found.")

    def list_flavors(self, request: Request):
        return reply(200, {"flavors": [self._flavor(f, request, detail=False) for f in self._flavors(request)]})

    def list_flavors_detail(self, request: Request):
        return reply(200, {"flavors": [self._flavor(f, request) for f in self._flavors(request)]})

    def get_flavor(self, request: Request):
        return reply(200, {"flavor": self._flavor(self._find_flavor(request, unquote(request.param("flavor"))), request)})

    def flavor_extra_specs(self, request: Request):
        self._authorize_extra_specs(request, "index")  # the policy before the flavor (flavors_extraspecs.py)
        flavor = self._find_flavor(request, unquote(request.param("flavor")))
        return reply(200, {"extra_specs": dict(flavor.get("extra_specs") or {})})

    def flavor_extra_spec(self, request: Request):
        self._authorize_extra_specs(request, "show")
        ident, key = unquote(request.param("flavor")), unquote(request.param("key"))
        specs = self._find_flavor(request, ident).get("extra_specs") or {}
        if key not in specs:
            raise Fault(404, f"Flavor {ident} has no extra specs with key {key}.")
        return reply(200, {key: specs[key]})

    # --- key pairs ----------------------------------------------------------------------------------

    def _keypairs(self, request: Request) -> list[dict]:
        user = self._user(request)
        wanted = request.arg("user_id")
        if wanted is not None and request.version >= (2, 10) and wanted != user:
            raise Fault(403, "Policy doesn't allow os_compute_api:os-keypairs:index to be performed.")
        pairs = [k for k in self.world.data["keypairs"].values() if k.get("user_id") == user]
        return sorted(pairs, key=lambda k: k["name"])

    def _keypair(self, request: Request, name: str) -> dict:
        pair = self.world.data["keypairs"].get(name)
        if pair is None or pair.get("user_id") != self._user(request):
            raise Fault(404, f"Keypair {name} not found for user {self._user(request)}")
        return pair

    def list_keypairs(self, request: Request):
        pairs = self._keypairs(request)
        if request.version >= (2, 35):
            pairs = self._page(pairs, request, key=lambda k: k["name"])
        shown = []
        for pair in pairs:
            entry = {"name": pair["name"], "public_key": pair["public_key"], "fingerprint": pair["fingerprint"]}
            if request.version >= (2, 2):
                entry["type"] = pair.get("type", "ssh")
            shown.append({"keypair": entry})
        body = {"keypairs": shown}
        limit = request.arg("limit")
        if request.version >= (2, 35) and limit and shown and len(shown) == int(limit):
            body["keypairs_links"] = [{"rel": "next", "href": self.world.url(
                f"/compute/v2.1/os-keypairs?limit={limit}&marker={shown[-1]['keypair']['name']}")}]
        return reply(200, body)

    def get_keypair(self, request: Request):
        pair = self._keypair(request, unquote(request.param("name")))
        body = {key: pair[key] for key in ("name", "public_key", "fingerprint", "user_id")}
        body.update({"created_at": pair.get("created_at"), "deleted": False, "deleted_at": None, "updated_at": None,
                     "id": pair.get("_number", 1)})
        if request.version >= (2, 2):
            body["type"] = pair.get("type", "ssh")
        return reply(200, {"keypair": body})

    def create_keypair(self, request: Request):
        given = request.json().get("keypair")
        if not isinstance(given, dict):
            raise Fault(400, "Invalid input for field/attribute keypair. Value: None. None is not of type 'object'")
        allowed = {"name", "public_key"} | ({"type"} if request.version >= (2, 2) else set()) \
            | ({"user_id"} if request.version >= (2, 10) else set())
        extra = sorted(set(given) - allowed)
        if extra:
            raise Fault(400, f"Additional properties are not allowed ({', '.join(repr(e) for e in extra)} "
                             f"{'was' if len(extra) == 1 else 'were'} unexpected)")
        name = given.get("name")
        # Nova's name formats: letters, digits, "-", "_" and " " (2.92 adds "@" and ".")
        characters = r"[a-zA-Z0-9 _@.-]" if request.version >= (2, 92) else r"[a-zA-Z0-9 _-]"
        problem = None
        if not isinstance(name, str) or len(name) > 255:
            problem = "Keypair name must be string and between 1 and 255 characters long"
        elif not name:
            problem = "Keypair name cannot be empty"
        elif name != name.strip():
            problem = "Keypair name cannot have leading or trailing spaces"
        elif not re.fullmatch(f"{characters}+", name):
            problem = f"Keypair name contains invalid characters: {name}"
        if problem:
            raise Fault(400, f"Invalid input for field/attribute name. Value: {name}. An invalid 'name' value was "
                             f"provided. The name must be: {problem}")
        kind = given.get("type", "ssh")
        if kind not in ("ssh", "x509"):
            raise Fault(400, f"Invalid input for field/attribute type. Value: {kind}. '{kind}' is not one of ['ssh', 'x509']")
        user = self._user(request)
        if given.get("user_id") not in (None, user):
            raise Fault(403, "Policy doesn't allow os_compute_api:os-keypairs:create to be performed.")
        public_key = given.get("public_key")
        private_key = None
        if public_key is None:
            if request.version >= (2, 92):
                raise Fault(400, "Invalid input for field/attribute keypair. 'public_key' is a required property")
            public_key, private_key = _generate_key()
        try:
            printed = fingerprint(public_key)
        except ValueError:
            raise Fault(400, "Keypair data is invalid: failed to generate fingerprint") from None
        if name in self.world.data["keypairs"]:
            if self.world.data["keypairs"][name].get("user_id") == user:
                raise Fault(409, f"Key pair '{name}' already exists.")
            raise Fault(409, f"Key pair '{name}' already exists (the twin keeps one key pair per name).")
        number = 1 + max((k.get("_number", 0) for k in self.world.data["keypairs"].values()), default=0)
        pair = {"name": name, "public_key": public_key.strip(), "fingerprint": printed, "user_id": user,
                "type": kind, "created_at": self.world.now().strftime("%Y-%m-%dT%H:%M:%S.000000"), "_number": number}
        self.world.data["keypairs"][name] = pair
        self.world.record("nova", f"key pair {name} created ({printed})")
        body = {key: pair[key] for key in ("name", "public_key", "fingerprint", "user_id")}
        if request.version >= (2, 2):
            body["type"] = kind
        if private_key:
            body["private_key"] = private_key
        return reply(201 if request.version >= (2, 2) else 200, {"keypair": body})

    def delete_keypair(self, request: Request):
        pair = self._keypair(request, unquote(request.param("name")))
        del self.world.data["keypairs"][pair["name"]]
        self.world.record("nova", f"key pair {pair['name']} deleted")
        return reply(204 if request.version >= (2, 2) else 202)

    # --- servers: reading ---------------------------------------------------------------------------

    def _servers(self, request: Request) -> list[dict]:
        project = self._project(request)
        return [s for s in self.world.data["servers"].values() if s["tenant_id"] == project]

    def _server(self, request: Request, ident: str | None = None) -> dict:
        ident = ident or unquote(request.param("server"))
        server = self.world.data["servers"].get(ident)
        if server is None or server["tenant_id"] != self._project(request):
            raise Fault(404, f"Instance {ident} could not be found.")
        return server

    def _show(self, server: dict, request: Request) -> dict:
        body = {k: v for k, v in server.items() if not k.startswith("_") and k != "fault"}
        body["links"] = self._link("servers", server["id"])
        body["addresses"] = addresses(self.world, server["id"])
        ports = server_ports(self.world, server["id"])
        if ports:
            ids = []
            for port in ports:
                ids.extend(g for g in port.get("security_groups") or [] if g not in ids)
            groups = self.world.data["security_groups"]
            body["security_groups"] = [{"name": groups[g]["name"]} for g in ids if g in groups]
        else:
            body["security_groups"] = [{"name": n} for n in server.get("_security_group_names") or []]
        if not body["security_groups"]:
            del body["security_groups"]
        flavor = server["_flavor"]
        if request.version >= (2, 47):
            body["flavor"] = {"vcpus": flavor.get("vcpus", 0), "ram": flavor.get("ram", 0),
                              "disk": flavor.get("disk", 0), "ephemeral": flavor.get("OS-FLV-EXT-DATA:ephemeral", 0),
                              "swap": flavor.get("swap") or 0, "original_name": flavor["name"],
                              "extra_specs": dict(flavor.get("extra_specs") or {})}
        else:
            body["flavor"] = {"id": flavor["id"], "links": [{"rel": "bookmark",
                                                              "href": self.world.url(f"/compute/flavors/{flavor['id']}")}]}
        if server.get("status") == "ERROR" and server.get("fault"):
            body["fault"] = dict(server["fault"])
        if request.version < (2, 9):
            body.pop("locked", None)
        if request.version < (2, 19):
            body.pop("description", None)
        if request.version < (2, 26):
            body.pop("tags", None)
        if request.version >= (2, 63):
            body["trusted_image_certificates"] = None
        if request.version >= (2, 73):
            body["locked_reason"] = None
        if request.version >= (2, 90):
            body["OS-EXT-SRV-ATTR:hostname"] = re.sub(r"[^a-z0-9-]+", "-", server["name"].lower()).strip("-")[:63]
        return body

    def _filtered(self, request: Request) -> list[dict]:
        servers = self._servers(request)
        name = request.arg("name")
        if name is not None:
            try:
                pattern = re.compile(name)
                servers = [s for s in servers if pattern.search(s["name"])]
            except re.error:
                servers = [s for s in servers if name in s["name"]]
        status = request.arg("status")
        if status is not None:
            servers = [s for s in servers if s["status"].upper() == status.upper()]
        for field, get in (("image", lambda s: (s.get("image") or {}).get("id")),
                           ("flavor", lambda s: s["_flavor"]["id"]),
                           ("reservation_id", lambda s: s.get("_reservation_id")),
                           ("key_name", lambda s: s.get("key_name"))):
            wanted = request.arg(field)
            if wanted is not None:
                servers = [s for s in servers if get(s) == wanted]
        ip = request.arg("ip")
        if ip is not None:
            pattern = re.compile(ip)
            servers = [s for s in servers if any(pattern.search(a["addr"]) for entries in
                                                 addresses(self.world, s["id"]).values() for a in entries)]
        sort_key = request.arg("sort_key", "created_at")
        field = {"created_at": "created", "updated_at": "updated", "display_name": "name"}.get(sort_key, sort_key)
        reverse = request.arg("sort_dir", "desc") != "asc"
        servers.sort(key=lambda s: (str(s.get(field, "")), s["id"]), reverse=reverse)
        return self._page(servers, request)

    def _links(self, servers: list[dict], request: Request, detail: bool) -> dict:
        limit = request.arg("limit")
        if servers and (len(servers) == 1000 or (limit and len(servers) == int(limit))):
            path = "/compute/v2.1/servers" + ("/detail" if detail else "")
            return {"servers_links": [{"rel": "next", "href": self.world.url(
                f"{path}?limit={limit or 1000}&marker={servers[-1]['id']}")}]}
        return {}

    def list_servers(self, request: Request):
        servers = self._filtered(request)
        shown = [{"id": s["id"], "name": s["name"], "links": self._link("servers", s["id"])} for s in servers]
        return reply(200, {"servers": shown, **self._links(servers, request, False)})

    def list_servers_detail(self, request: Request):
        servers = self._filtered(request)
        return reply(200, {"servers": [self._show(s, request) for s in servers], **self._links(servers, request, True)})

    def get_server(self, request: Request):
        body = self._show(self._server(request), request)
        if request.version >= (2, 71):
            body["server_groups"] = []
        return reply(200, {"server": body})

    # --- servers: creating and deleting ---------------------------------------------------------

    def _image(self, request: Request, ref) -> dict:
        ident = str(ref).rstrip("/").rsplit("/", 1)[-1]
        image = self.world.data["images"].get(ident)
        project = self._project(request)
        if image is None or (image.get("visibility", "public") not in ("public", "community", "shared")
                             and image.get("owner") != project):
            raise Fault(400, "Can not find requested image")
        if image.get("status", "active") != "active":
            raise Fault(400, f"Image {ident} is not active.")
        return image

    def _networks(self, request: Request, requested) -> list[dict]:
        project = self._project(request)
        networks = self.world.data["networks"]
        if requested in ("auto", "none"):
            if requested == "none":
                return []
            mine = [n for n in networks.values() if n.get("project_id", n.get("tenant_id")) == project
                    and not n.get("router:external")]
            shared = [n for n in networks.values() if n.get("shared") and not n.get("router:external")]
            choice = mine or shared
            if len(choice) > 1:
                raise Fault(409, "Multiple possible networks found, use a Network ID to be more specific.")
            if not choice:
                raise Fault(400, "Unable to automatically allocate a network for project " + project)
            return [{"uuid": choice[0]["id"]}]
        if not isinstance(requested, list):
            raise Fault(400, f"Invalid input for field/attribute networks. Value: {requested}. "
                             f"{requested!r} is not of type 'array'")
        chosen = []
        for entry in requested:
            if not isinstance(entry, dict):
                raise Fault(400, f"Invalid input for field/attribute networks. Value: {entry}.")
            unexpected = set(entry) - {"uuid", "port", "fixed_ip", "tag"}
            if unexpected:
                raise Fault(400, f"Additional properties are not allowed ({', '.join(map(repr, sorted(unexpected)))} "
                                 "was unexpected)")
            if entry.get("port"):
                port = self.world.data["ports"].get(entry["port"])
                if port is None or port.get("project_id", port.get("tenant_id")) != project:
                    raise Fault(400, f"Port id {entry['port']} could not be found.")
                if port.get("device_id"):
                    raise Fault(409, f"Port {entry['port']} is still in use.")
                chosen.append({"port": entry["port"], "uuid": port["network_id"]})
                continue
            ident = entry.get("uuid")
            network = networks.get(ident) if isinstance(ident, str) else None
            if network is None or not (network.get("shared") or network.get("project_id", network.get("tenant_id")) == project):
                raise Fault(400, f"Network {ident} could not be found.")
            if entry.get("fixed_ip"):
                try:
                    ipaddress.ip_address(entry["fixed_ip"])
                except ValueError:
                    raise Fault(400, f"Invalid input for field/attribute fixed_ip. Value: {entry['fixed_ip']}.") from None
            chosen.append({"uuid": ident, **({"fixed_ip": entry["fixed_ip"]} if entry.get("fixed_ip") else {})})
        return chosen

    def _security_groups(self, request: Request, requested) -> tuple[list[str], list[str]]:
        """(names, ids) of the groups a new server asks for ("default" when it names none)."""
        project = self._project(request)
        requested = requested if requested is not None else [{"name": "default"}]
        names, ids = [], []
        groups = [g for g in self.world.data["security_groups"].values()
                  if g.get("project_id", g.get("tenant_id")) == project]
        for entry in requested:
            name = entry.get("name") if isinstance(entry, dict) else None
            if not name:
                raise Fault(400, "Invalid input for field/attribute security_groups.")
            matches = [g for g in groups if g["id"] == name] or [g for g in groups if g.get("name") == name]
            if len(matches) > 1:
                raise Fault(409, f"Multiple security_group matches found for name '{name}', use an ID to be more specific.")
            if not matches and name == "default":  # Neutron makes it the first time it is needed
                default = _default_group(self.world, project)
                matches = [self.world.data["security_groups"][default]] if default else []
                if not matches:
                    names.append(name)
                    continue
            if not matches:
                raise Fault(400, f"Security group {name} not found.")
            names.append(matches[0].get("name", name))
            ids.append(matches[0]["id"])
        return names, ids

    def create_server(self, request: Request):
        body = request.json()
        given = body.get("server")
        if not isinstance(given, dict):
            raise Fault(400, "Invalid input for field/attribute server. Value: None. None is not of type 'object'")
        version = request.version
        unexpected = sorted(k for k in given if k not in SERVER_KEYS or version < SERVER_KEYS[k])
        if unexpected:
            raise Fault(400, "Invalid input for field/attribute server. Additional properties are not allowed "
                             f"({', '.join(map(repr, unexpected))} {'was' if len(unexpected) == 1 else 'were'} unexpected)")
        name = given.get("name")
        if not isinstance(name, str) or not 1 <= len(name) <= 255 or name != name.strip():
            raise Fault(400, f"Invalid input for field/attribute name. Value: {name}.")
        if "flavorRef" not in given:
            raise Fault(400, "Invalid input for field/attribute server. 'flavorRef' is a required property")
        if "networks" not in given and version >= (2, 37):
            raise Fault(400, "Invalid input for field/attribute server. 'networks' is a required property")
        hints = body.get("os:scheduler_hints") or body.get("OS-SCH-HNT:scheduler_hints") or {}
        if not isinstance(hints, dict):
            raise Fault(400, "Invalid input for field/attribute os:scheduler_hints.")
        flavor_ref = str(given["flavorRef"]).rstrip("/").rsplit("/", 1)[-1]
        try:
            flavor = self._find_flavor(request, flavor_ref)
        except Fault:
            raise Fault(400, "Invalid flavorRef provided.") from None
        image_ref = given.get("imageRef")
        if not image_ref and not given.get("block_device_mapping_v2"):
            raise Fault(400, "Can not find requested image")
        image = self._image(request, image_ref) if image_ref else None
        key_name = given.get("key_name")
        if key_name is not None:
            pair = self.world.data["keypairs"].get(key_name)
            if pair is None or pair.get("user_id") != self._user(request):
                raise Fault(400, "Invalid key_name provided.")
        networks = self._networks(request, given.get("networks", "auto"))
        group_names, group_ids = self._security_groups(request, given.get("security_groups"))
        metadata = given.get("metadata") or {}
        if not isinstance(metadata, dict) or not all(isinstance(v, str) for v in metadata.values()):
            raise Fault(400, "Invalid input for field/attribute metadata.")
        try:
            least, most = int(given.get("min_count", 1)), int(given.get("max_count", given.get("min_count", 1)))
        except (TypeError, ValueError):
            raise Fault(400, "Invalid input for field/attribute min_count.") from None
        if least < 1 or most < least:
            raise Fault(400, "min_count must be <= max_count" if least >= 1 else "min_count must be >= 1")
        reservation_id = "r-" + secrets.token_hex(4)
        doomed = self.world.take_fault("server-error")
        made = []
        for number in range(1, most + 1):
            made.append(self._new_server(request, name if most == 1 else f"{name}-{number}", flavor, image, key_name,
                                         networks, group_names, group_ids, hints, metadata, reservation_id,
                                         given, doomed and number == 1))
        _later(self.world, made[0]["_schedule_at"] - time.time())
        if given.get("return_reservation_id"):
            return reply(202, {"reservation_id": reservation_id})
        first = made[0]
        answer = {"id": first["id"], "links": self._link("servers", first["id"]), "OS-DCF:diskConfig": "MANUAL",
                  "security_groups": [{"name": n} for n in group_names]}
        answer["adminPass"] = given.get("adminPass") or secrets.token_urlsafe(9)
        return reply(202, {"server": answer}, Location=answer["links"][0]["href"])

    def _new_server(self, request, name, flavor, image, key_name, networks, group_names, group_ids, hints, metadata,
                    reservation_id, given, doomed) -> dict:
        ident = self.world.new_id()
        now = _stamp(self.world)
        server = {
            "id": ident, "name": name, "status": "BUILD", "tenant_id": self._project(request),
            "user_id": self._user(request), "key_name": key_name, "metadata": dict(metadata),
            "image": {"id": image["id"], "links": [{"rel": "bookmark", "href": self.world.url(
                f"/compute/images/{image['id']}")}]} if image else "",
            "created": now, "updated": now, "hostId": "", "accessIPv4": given.get("accessIPv4", ""),
            "accessIPv6": given.get("accessIPv6", ""), "progress": 0, "config_drive": "",
            "OS-DCF:diskConfig": given.get("OS-DCF:diskConfig", "MANUAL"), "OS-EXT-AZ:availability_zone": "",
            "OS-EXT-STS:power_state": 0, "OS-EXT-STS:task_state": "scheduling", "OS-EXT-STS:vm_state": "building",
            "OS-SRV-USG:launched_at": None, "OS-SRV-USG:terminated_at": None,
            "os-extended-volumes:volumes_attached": [], "locked": False, "description": given.get("description"),
            "tags": list(given.get("tags") or []),
            "_flavor": dict(flavor), "_hints": dict(hints), "_networks": networks,
            "_security_group_names": group_names, "_security_group_ids": group_ids, "_reservation_id": reservation_id,
            "_phase": "scheduling", "_doomed": bool(doomed), "_host": None,
            "_schedule_at": time.time() + _real_seconds(self.world, SCHEDULE_SECONDS, "schedule"),
        }
        self.world.data["servers"][ident] = server
        self.world.record("nova", f"server {name} ({ident}) created: flavor {flavor['name']}, "
                                  f"reservation {hints.get('reservation', '-')}")
        return server

    def update_server(self, request: Request):
        server = self._server(request)
        given = request.json().get("server")
        if not isinstance(given, dict):
            raise Fault(400, "Invalid input for field/attribute server.")
        allowed = {"name", "accessIPv4", "accessIPv6", "OS-DCF:diskConfig"} | (
            {"description"} if request.version >= (2, 19) else set()) | (
            {"hostname"} if request.version >= (2, 90) else set())
        unexpected = sorted(set(given) - allowed)
        if unexpected:
            raise Fault(400, f"Additional properties are not allowed ({', '.join(map(repr, unexpected))} was unexpected)")
        if "name" in given and (not isinstance(given["name"], str) or not 1 <= len(given["name"]) <= 255):
            raise Fault(400, f"Invalid input for field/attribute name. Value: {given['name']}.")
        server.update(given)
        server["updated"] = _stamp(self.world)
        return reply(200, {"server": self._show(server, request)})

    def delete_server(self, request: Request):
        server = self._server(request)
        if server.get("locked"):
            raise Fault(409, f"Instance {server['id']} is locked")
        remove_server(self.world, server["id"])
        return reply(204)

    # --- servers: actions -----------------------------------------------------------------------

    def server_action(self, request: Request):
        server = self._server(request)
        body = request.json()
        if not isinstance(body, dict) or len(body) != 1:
            raise Fault(400, "Malformed request body")
        action, given = next(iter(body.items()))
        handlers = {"addSecurityGroup": self._add_security_group, "removeSecurityGroup": self._remove_security_group,
                    "os-stop": self._stop, "os-start": self._start, "reboot": self._reboot,
                    "addFloatingIp": self._add_floating_ip, "removeFloatingIp": self._remove_floating_ip,
                    "os-getConsoleOutput": self._console_output}
        if action not in handlers:
            raise Fault(400, f"There is no such action: {action}")
        return handlers[action](request, server, given)

    def _group_name(self, given, action: str) -> str:
        if not isinstance(given, dict):
            raise Fault(400, "Missing parameter dict")
        if "name" not in given:
            raise Fault(400, "Security group not specified")
        if not given["name"] or not isinstance(given["name"], str) or not given["name"].strip():
            raise Fault(400, "Security group name cannot be empty")
        return given["name"]

    def _find_group(self, request: Request, name: str) -> dict:
        project = self._project(request)
        groups = [g for g in self.world.data["security_groups"].values()
                  if g.get("project_id", g.get("tenant_id")) == project]
        matches = [g for g in groups if g["id"] == name] or [g for g in groups if g.get("name") == name]
        if len(matches) > 1:
            raise Fault(409, f"Multiple security_group matches found for name '{name}', use an ID to be more specific.")
        if not matches:
            raise Fault(404, f"Security group {name} is not found for project {project}")
        return matches[0]

    def _add_security_group(self, request: Request, server: dict, given):
        group = self._find_group(request, self._group_name(given, "addSecurityGroup"))
        ports = server_ports(self.world, server["id"])
        if not ports:
            raise Fault(404, f"instance_id {server['id']} could not be found as device id on any ports")
        for port in ports:
            if not port.get("port_security_enabled", True) or not port.get("fixed_ips"):
                raise Fault(400, "Network requires port_security_enabled and subnet associated in order to apply "
                                 "security groups.")
        for port in ports:  # appended without a look, as Nova does: Neutron refuses a group twice
            wanted = list(port.get("security_groups") or []) + [group["id"]]
            self._neutron_check_groups(wanted)
            port["security_groups"] = wanted
            port["updated_at"] = _stamp(self.world)
            port["revision_number"] = port.get("revision_number", 1) + 1
        self.world.record("nova", f"security group {group.get('name')} added to server {server['name']}")
        return reply(202)

    def _neutron_check_groups(self, ids: list[str]) -> None:
        """Neutron's check of a port update (nova/network/security_group_api.py: add_to_instance); its 400
        becomes Nova's 400 with neutronclient's text of it (the message, then the request ids)."""
        check = _neutron("check_group_list")
        if check is None:
            return
        try:
            check(ids)
        except Fault as refused:
            raise Fault(400, f"{refused.message}\nNeutron server returns request_ids: "
                             f"['req-{self.world.new_id()}']") from None

    def _remove_security_group(self, request: Request, server: dict, given):
        name = self._group_name(given, "removeSecurityGroup")
        group = self._find_group(request, name)
        ports = server_ports(self.world, server["id"])
        if not ports:
            raise Fault(404, f"instance_id {server['id']} could not be found as device id on any ports")
        if not any(group["id"] in (p.get("security_groups") or []) for p in ports):  # security_group_api.py
            raise Fault(404, f"Security group {name} not associated with the instance {server['id']}")
        for port in ports:
            if group["id"] in (port.get("security_groups") or []):
                port["security_groups"].remove(group["id"])
                port["updated_at"] = _stamp(self.world)
        self.world.record("nova", f"security group {group.get('name')} removed from server {server['name']}")
        return reply(202)

    def _conflict(self, server: dict, action: str):
        return Fault(409, f"Cannot '{action}' instance {server['id']} while it is in vm_state "
                          f"{server['OS-EXT-STS:vm_state']}")

    def _stop(self, request, server, given):
        if server["status"] != "ACTIVE":
            raise self._conflict(server, "stop")
        server.update({"status": "SHUTOFF", "OS-EXT-STS:vm_state": "stopped", "OS-EXT-STS:power_state": 4,
                       "updated": _stamp(self.world)})
        return reply(202)

    def _start(self, request, server, given):
        if server["status"] != "SHUTOFF":
            raise self._conflict(server, "start")
        server.update({"status": "ACTIVE", "OS-EXT-STS:vm_state": "active", "OS-EXT-STS:power_state": 1,
                       "updated": _stamp(self.world)})
        return reply(202)

    def _reboot(self, request, server, given):
        if not isinstance(given, dict) or given.get("type") not in ("HARD", "SOFT", "hard", "soft"):
            raise Fault(400, "Invalid input for field/attribute reboot.")
        if server["status"] not in ("ACTIVE", "SHUTOFF"):
            raise self._conflict(server, "reboot")
        server.update({"status": "ACTIVE", "OS-EXT-STS:vm_state": "active", "OS-EXT-STS:power_state": 1,
                       "updated": _stamp(self.world)})
        return reply(202)

    def _console_output(self, request, server, given):
        if server["status"] != "ACTIVE":
            raise self._conflict(server, "os-getConsoleOutput")
        return reply(200, {"output": f"Ubuntu 24.04 LTS {server['name']} ttyS0\n\n{server['name']} login: \n"})

    def _floating_action_allowed(self, request: Request):
        if request.version >= (2, 44):  # removed from the API in 2.44: use Neutron
            raise Fault(404, "The resource could not be found.")

    def _add_floating_ip(self, request, server, given):
        self._floating_action_allowed(request)
        address = (given or {}).get("address")
        ip = next((i for i in self.world.data["floatingips"].values() if i.get("floating_ip_address") == address
                   and i.get("project_id", i.get("tenant_id")) == server["tenant_id"]), None)
        if ip is None:
            raise Fault(404, f"floating IP not found")
        ports = [p for p in server_ports(self.world, server["id"]) if p.get("fixed_ips")]
        if not ports:
            raise Fault(400, "No nw_info cache associated with instance")
        ip.update({"port_id": ports[0]["id"], "fixed_ip_address": ports[0]["fixed_ips"][0]["ip_address"],
                   "status": "ACTIVE", "updated_at": _stamp(self.world)})
        ip.pop("_bound_at", None)  # Nova's own action refreshes its cache at once (@refresh_cache)
        return reply(202)

    def _remove_floating_ip(self, request, server, given):
        self._floating_action_allowed(request)
        address = (given or {}).get("address")
        ports = {p["id"] for p in server_ports(self.world, server["id"])}
        ip = next((i for i in self.world.data["floatingips"].values() if i.get("floating_ip_address") == address), None)
        if ip is None:
            raise Fault(404, "floating IP not found")
        if ip.get("port_id") not in ports:
            raise Fault(409, f"Floating IP {address} is not associated with instance {server['id']}.")
        ip.update({"port_id": None, "fixed_ip_address": None, "status": "DOWN", "updated_at": _stamp(self.world)})
        return reply(202)

    # --- servers: interfaces, addresses, groups, metadata ---------------------------------------

    def _interface(self, port: dict, request: Request) -> dict:
        shown = {"port_id": port["id"], "net_id": port["network_id"], "mac_addr": port["mac_address"],
                 "port_state": port.get("status", "ACTIVE"),
                 "fixed_ips": [{"subnet_id": f["subnet_id"], "ip_address": f["ip_address"]}
                               for f in port.get("fixed_ips") or []]}
        if request.version >= (2, 70):
            shown["tag"] = None
        return shown

    def list_interfaces(self, request: Request):
        server = self._server(request)
        return reply(200, {"interfaceAttachments": [self._interface(p, request) for p in server_ports(self.world, server["id"])]})

    def get_interface(self, request: Request):
        server = self._server(request)
        for port in server_ports(self.world, server["id"]):
            if port["id"] == request.param("port"):
                return reply(200, {"interfaceAttachment": self._interface(port, request)})
        raise Fault(404, f"Port {request.param('port')} is not attached")

    def list_ips(self, request: Request):
        server = self._server(request)
        shown = {label: [{"version": a["version"], "addr": a["addr"]} for a in entries]
                 for label, entries in addresses(self.world, server["id"]).items()}
        return reply(200, {"addresses": shown})

    def get_ips(self, request: Request):
        server = self._server(request)
        label = unquote(request.param("label"))
        found = addresses(self.world, server["id"])
        if label not in found:
            raise Fault(404, "Instance is not a member of specified network")
        return reply(200, {label: [{"version": a["version"], "addr": a["addr"]} for a in found[label]]})

    def server_security_groups(self, request: Request):
        server = self._server(request)
        ids = []
        for port in server_ports(self.world, server["id"]):
            ids.extend(g for g in port.get("security_groups") or [] if g not in ids)
        shown = []
        for ident in ids:
            group = self.world.data["security_groups"].get(ident)
            if group:
                shown.append({"id": group["id"], "name": group.get("name"), "description": group.get("description", ""),
                              "tenant_id": group.get("project_id", group.get("tenant_id")), "rules": []})
        return reply(200, {"security_groups": shown})

    def _metadata_body(self, request: Request, key: str) -> dict:
        given = request.json().get(key)
        if not isinstance(given, dict) or not all(isinstance(v, str) and isinstance(k, str) and 1 <= len(k) <= 255
                                                  and len(v) <= 255 for k, v in given.items()):
            raise Fault(400, f"Invalid input for field/attribute {key}.")
        return given

    def get_metadata(self, request: Request):
        return reply(200, {"metadata": dict(self._server(request)["metadata"])})

    def merge_metadata(self, request: Request):
        server = self._server(request)
        server["metadata"].update(self._metadata_body(request, "metadata"))
        return reply(200, {"metadata": dict(server["metadata"])})

    def replace_metadata(self, request: Request):
        server = self._server(request)
        server["metadata"] = dict(self._metadata_body(request, "metadata"))
        return reply(200, {"metadata": dict(server["metadata"])})

    def get_metadata_item(self, request: Request):
        server = self._server(request)
        key = unquote(request.param("key"))
        if key not in server["metadata"]:
            raise Fault(404, "Metadata item was not found")
        return reply(200, {"meta": {key: server["metadata"][key]}})

    def set_metadata_item(self, request: Request):
        server = self._server(request)
        key = unquote(request.param("key"))
        given = self._metadata_body(request, "meta")
        if len(given) != 1:
            raise Fault(400, "Request body contains too many items")
        if key not in given:
            raise Fault(400, "Request body and URI mismatch")
        server["metadata"][key] = given[key]
        return reply(200, {"meta": {key: given[key]}})

    def delete_metadata_item(self, request: Request):
        server = self._server(request)
        key = unquote(request.param("key"))
        if key not in server["metadata"]:
            raise Fault(404, "Metadata item was not found")
        del server["metadata"][key]
        return reply(204)


def _generate_key() -> tuple[str, str]:
    """A new RSA key pair, as Nova made one before 2.92: (OpenSSH public key, PEM private key)."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import rsa

    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    public = key.public_key().public_bytes(serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH)
    private = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.TraditionalOpenSSL,
                                serialization.NoEncryption())
    return public.decode() + " Generated-by-Nova", private.decode()


# --- inventory --------------------------------------------------------------------------------------------

FLAVORS = [
    # (name, vcpus, ram MB, disk GB, extra specs): Ironic's flavor asks placement for a whole node
    ("baremetal", 1, 1, 20, {"resources:CUSTOM_BAREMETAL": "1", "resources:VCPU": "0", "resources:MEMORY_MB": "0",
                             "resources:DISK_GB": "0"}),
    ("g1.h100.pci.1", 16, 126976, 240, {"trait:CUSTOM_GPU": "required", "pci_passthrough:alias": "h100:1",
                                        "hw:cpu_policy": "dedicated"}),
]


def seed_inventory(world) -> None:
    """The flavors the series launches with, unless they are there already."""
    have = {f["name"] for f in world.data["flavors"].values()}
    for name, vcpus, ram, disk, specs in FLAVORS:
        if name in have:
            continue
        ident = world.new_id()
        world.data["flavors"][ident] = {
            "id": ident, "name": name, "vcpus": vcpus, "ram": ram, "disk": disk, "swap": 0,
            "OS-FLV-EXT-DATA:ephemeral": 0, "OS-FLV-DISABLED:disabled": False, "rxtx_factor": 1.0,
            "os-flavor-access:is_public": True, "description": None, "extra_specs": dict(specs),
        }


def services(world) -> list[Service]:
    return [Nova(world)]
