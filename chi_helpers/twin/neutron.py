"""Neutron v2.0, as far as python-chi 1.2.10 and the series use it: networks and subnets (read),
ports, floating IPs, security groups and their rules, resource tags.

Mounted at `/network`, the catalog's endpoint: neutronclient and openstacksdk (python-chi uses both)
append `/v2.0/...` without asking for versions; `GET /network/` answers the versions list for a
client that does. What it keeps from Neutron, because python-chi and our helpers depend on it:

- Everything a project makes belongs to the token's project, and a project sees only its own ports,
  floating IPs and security groups (plus the shared and external networks). On Chameleon a class
  shares one project, so a classmate's floating IPs and security groups ARE in every list.
- Lists come back ordered by id (what Neutron gives when it pages, and what MySQL gives by primary
  key), not by age: "the first unbound floating IP" is whichever id sorts first.
- A floating IP is created DOWN and unbound, at an address on the external network `public` (here a
  fresh loopback address, where the twin's SSH node for its server listens). PUT with `port_id`
  binds it (`fixed_ip_address` from the port, the router that joins the port's subnet to `public`,
  ACTIVE) even if it is bound elsewhere already: Neutron moves it without asking. `port_id: null`
  unbinds it; a body without `port_id` leaves the binding alone. A project holds at most
  FLOATINGIP_QUOTA of them (409 OverQuota); an external network with no address left in its pools
  is 409 IpAddressGenerationFailure. Faults `floating-ip-quota` and `floating-ips-exhausted` make
  the next creation answer so.
- A new security group comes with Neutron's two egress rules (IPv4, IPv6); each project gets a
  `default` group the first time it lists, shows or makes groups. A rule equal to an existing one
  (protocol names and numbers, 0.0.0.0/0 and no prefix count as equal) is 409
  `SecurityGroupRuleExists`. `description: null` is refused, as Neutron's string validator does, and
  a port's `security_groups` with a group twice (what Nova's addSecurityGroup sends for a group the
  server has already), as its list validator does.
- Errors are `{"NeutronError": {"type", "message", "detail"}}`, so neutronclient raises the
  exception of that type (`...NotFound`, `Conflict`, `BadRequest`).

Nova writes its servers' ports into `world.data["ports"]` itself; `new_port`, `release_port` and
`ensure_default_group` below are there for it to do so the way Neutron would.
"""

from __future__ import annotations

import ipaddress
import time
from urllib.parse import urlencode

from .web import Fault, Request, Service, reply

OPERATOR_PROJECT = "c4a1e0de5a2b4d7e9f10a0c0ffee0001"  # Chameleon's own project: owns sharednet1, public
SHARED_NETWORK, SHARED_SUBNET, SHARED_CIDR = "sharednet1", "sharednet1-subnet", "10.52.0.0/22"
PUBLIC_NETWORK, PUBLIC_SUBNET = "public", "public-subnet"
DEFAULT_GROUP = "default"
PROTOCOLS = {  # the names Neutron accepts, and their IP protocol numbers
    "ah": 51, "dccp": 33, "egp": 8, "esp": 50, "gre": 47, "icmp": 1, "icmpv6": 58, "igmp": 2, "ipip": 4,
    "ipv6-encap": 41, "ipv6-frag": 44, "ipv6-icmp": 58, "ipv6-nonxt": 59, "ipv6-opts": 60, "ipv6-route": 43,
    "ospf": 89, "pgm": 113, "rsvp": 46, "sctp": 132, "tcp": 6, "udp": 17, "udplite": 136, "vrrp": 112,
}
PORT_PROTOCOLS = {"tcp", "udp", "dccp", "sctp", "udplite", "6", "17", "33", "132", "136"}
FLOATINGIP_QUOTA = 50  # quota_floatingip, per project (neutron/conf/quota.py: DEFAULT_QUOTA_FIP)
PAGING = {"fields", "limit", "marker", "page_reverse", "sort_key", "sort_dir"}
TAG_FILTERS = {"tags", "tags-any", "not-tags", "not-tags-any"}
COLLECTIONS = {  # URL name -> (table, JSON name of one, JSON name of many)
    "networks": ("networks", "network", "networks"),
    "subnets": ("subnets", "subnet", "subnets"),
    "ports": ("ports", "port", "ports"),
    "floatingips": ("floatingips", "floatingip", "floatingips"),
    "security-groups": ("security_groups", "security_group", "security_groups"),
    "security-group-rules": ("security_group_rules", "security_group_rule", "security_group_rules"),
    "routers": ("routers", "router", "routers"),
}
NOT_FOUND = {  # resource -> (Neutron's exception type, message)
    "network": ("NetworkNotFound", "Network {} could not be found."),
    "subnet": ("SubnetNotFound", "Subnet {} could not be found."),
    "port": ("PortNotFound", "Port {} could not be found."),
    "floatingip": ("FloatingIPNotFound", "Floating IP {} could not be found"),
    "security_group": ("SecurityGroupNotFound", "Security group {} does not exist"),
    "security_group_rule": ("SecurityGroupRuleNotFound", "Security group rule {} does not exist"),
    "router": ("RouterNotFound", "Router {} could not be found"),
}
EXTENSIONS = [  # (alias, name) of the extensions this twin answers for
    ("external-net", "Neutron external network"), ("router", "Neutron L3 Router"),
    ("security-group", "security-group"), ("port-security", "Port Security"),
    ("standard-attr-tag", "Tag support for resources with standard attribute: subnet, trunk, network, ..."),
    ("standard-attr-description", "standard-attr-description"), ("standard-attr-revisions", "Resource revision numbers"),
    ("standard-attr-timestamp", "Resource timestamps"), ("project-id", "project_id field enabled"),
    ("fip-port-details", "Floating IP Port Details Extension"), ("filter-validation", "Filter parameters validation"),
    ("revision-if-match", "If-Match constraints based on revision_number"),
]


class NeutronError(Fault):
    """An error as Neutron words it: neutronclient raises `<type>Client` if it has one."""

    def __init__(self, status: int, kind: str, message: str, detail: str = ""):
        super().__init__(status, message)
        self.kind, self.detail = kind, detail


def not_found(resource: str, ident: str) -> NeutronError:
    kind, text = NOT_FOUND[resource]
    return NeutronError(404, kind, text.format(ident))


def bad_request(message: str, kind: str = "HTTPBadRequest") -> NeutronError:
    return NeutronError(400, kind, message)


def bad_input(attribute: str, reason: str) -> NeutronError:
    return bad_request(f"Invalid input for {attribute}. Reason: {reason}.")


# --- state shared with Nova ------------------------------------------------------------------------


def _stamp(world, record: dict) -> dict:
    """Creation or change: timestamps and revision number, as Neutron's standard attributes."""
    now = world.now().strftime("%Y-%m-%dT%H:%M:%SZ")
    record.setdefault("created_at", now)
    record["updated_at"] = now
    record["revision_number"] = record.get("revision_number", -1) + 1
    return record


def _owner(project_id: str) -> dict:
    return {"tenant_id": project_id, "project_id": project_id}


def _project_name(world, project_id: str) -> str:
    return world.data["projects"].get(project_id, {}).get("name", project_id)


def _rule_record(world, group: dict, direction: str, ethertype: str, protocol=None, port_min=None,
                 port_max=None, remote_ip_prefix=None, remote_group_id=None, description="") -> dict:
    rule = {"id": world.new_id(), **_owner(group["project_id"]), "security_group_id": group["id"],
            "direction": direction, "ethertype": ethertype, "protocol": protocol, "port_range_min": port_min,
            "port_range_max": port_max, "remote_ip_prefix": remote_ip_prefix, "normalized_cidr": remote_ip_prefix,
            "remote_group_id": remote_group_id, "remote_address_group_id": None, "description": description}
    world.data["security_group_rules"][rule["id"]] = _stamp(world, rule)
    return rule


def _new_group(world, project_id: str, name: str, description: str) -> dict:
    group = {"id": world.new_id(), "name": name, "description": description, **_owner(project_id),
             "stateful": True, "shared": False, "tags": []}
    world.data["security_groups"][group["id"]] = _stamp(world, group)
    if name == DEFAULT_GROUP:  # members of the default group reach each other
        for ethertype in ("IPv4", "IPv6"):
            _rule_record(world, group, "ingress", ethertype, remote_group_id=group["id"])
    for ethertype in ("IPv4", "IPv6"):  # every group may send anywhere
        _rule_record(world, group, "egress", ethertype)
    return group


def ensure_default_group(world, project_id: str) -> dict:
    """The project's `default` security group, made the first time it is needed (as Neutron does)."""
    for group in world.data["security_groups"].values():
        if group["project_id"] == project_id and group["name"] == DEFAULT_GROUP:
            return group
    group = _new_group(world, project_id, DEFAULT_GROUP, "Default security group")
    world.record("neutron", f"security group default made for {_project_name(world, project_id)}")
    return group


def _mac(world) -> str:
    used = {p.get("mac_address") for p in world.data["ports"].values()}
    while True:
        raw = world.new_id().replace("-", "")
        mac = "fa:16:3e:" + ":".join(raw[i:i + 2] for i in range(0, 6, 2))
        if mac not in used:
            return mac


def _used_addresses(world, subnet_id: str) -> set[str]:
    """The subnet's addresses in use: its ports' and, on an external network, its floating IPs' (each
    of which Neutron gives a port of its own there)."""
    network_id = (world.data["subnets"].get(subnet_id) or {}).get("network_id")
    floating = {f["floating_ip_address"] for f in world.data["floatingips"].values()
                if f.get("floating_network_id") == network_id}
    return floating | {ip["ip_address"] for p in world.data["ports"].values() for ip in p.get("fixed_ips") or []
                       if ip.get("subnet_id") == subnet_id}


def _allocate(world, subnet: dict, wanted: str | None = None) -> str:
    """An address of `subnet` for a port: `wanted` if it is free, else the first free one of its pools."""
    used = _used_addresses(world, subnet["id"]) | {subnet.get("gateway_ip")}
    if wanted:
        try:
            inside = ipaddress.ip_address(wanted) in ipaddress.ip_network(subnet["cidr"])
        except ValueError:
            inside = False
        if not inside:
            raise bad_request(f"IP address {wanted} is not a valid IP for the specified subnet.", "InvalidIpForSubnet")
        if wanted in used:
            raise NeutronError(409, "IpAddressAlreadyAllocated",
                               f"IP address {wanted} already allocated in subnet {subnet['id']}")
        return wanted
    for pool in subnet.get("allocation_pools") or []:
        address, end = ipaddress.ip_address(pool["start"]), ipaddress.ip_address(pool["end"])
        while address <= end:
            if str(address) not in used:
                return str(address)
            address += 1
    raise NeutronError(409, "IpAddressGenerationFailure",
                       f"No more IP addresses available on network {subnet['network_id']}.")


def new_port(world, project_id: str, network_id: str, device_id: str = "", device_owner: str = "",
             name: str = "", fixed_ips: list | None = None, security_groups: list | None = None,
             port_security_enabled: bool = True, description: str = "", admin_state_up: bool = True) -> dict:
    """A port as Neutron makes one: an address on the network's (first) subnet, a MAC, the project's
    default security group; ACTIVE once a device owns it. Nova can call this for a server's port."""
    subnets = [s for s in world.data["subnets"].values() if s["network_id"] == network_id]
    if fixed_ips is None:
        fixed_ips = [{"subnet_id": subnets[0]["id"]}] if subnets else []
    allocated = []
    for wanted in fixed_ips:
        subnet = world.data["subnets"].get(wanted.get("subnet_id") or "")
        if subnet is None and wanted.get("ip_address"):
            subnet = next((s for s in subnets if _contains(s["cidr"], wanted["ip_address"])), None)
        if subnet is None or subnet["network_id"] != network_id:
            raise bad_request(f"Invalid input for fixed_ips. Reason: no subnet {wanted.get('subnet_id') or wanted.get('ip_address')} "
                              f"on network {network_id}.")
        allocated.append({"subnet_id": subnet["id"], "ip_address": _allocate(world, subnet, wanted.get("ip_address"))})
    if security_groups is None:
        security_groups = [ensure_default_group(world, project_id)["id"]] if port_security_enabled else []
    port = {"id": world.new_id(), "name": name, "description": description, "network_id": network_id,
            **_owner(project_id), "admin_state_up": admin_state_up, "mac_address": _mac(world),
            "fixed_ips": allocated, "device_id": device_id, "device_owner": device_owner,
            "status": "ACTIVE" if device_id else "DOWN", "security_groups": list(security_groups),
            "port_security_enabled": port_security_enabled, "allowed_address_pairs": [], "extra_dhcp_opts": [],
            "binding:vnic_type": "normal", "dns_name": "", "tags": []}
    world.data["ports"][port["id"]] = _stamp(world, port)
    return port


def check_group_list(ids) -> None:
    """A port's `security_groups` as neutron_lib's `type:uuid_list` validator checks it, before any
    lookup: a list, no item twice, each a UUID (neutron_lib/api/validators/__init__.py:
    _validate_list_of_items; neutron/extensions/securitygroup.py puts it on ports)."""
    if not isinstance(ids, list):
        raise bad_input("security_groups", f"'{ids}' is not a list")
    twice = list(dict.fromkeys(ident for n, ident in enumerate(ids) if ident in ids[:n]))
    if twice:
        raise bad_input("security_groups", f"Duplicate items in the list: '{', '.join(map(str, twice))}'")
    for ident in ids:
        if not _looks_like_uuid(ident):
            raise bad_input("security_groups", f"'{ident}' is not a valid UUID")


def _unbind(world, fip: dict) -> None:
    fip.update(port_id=None, fixed_ip_address=None, router_id=None, status="DOWN")
    _stamp(world, fip)


def release_port(world, port_id: str) -> None:
    """Delete a port; floating IPs bound to it become unbound (still the project's), as in Neutron."""
    world.data["ports"].pop(port_id, None)
    for fip in world.data["floatingips"].values():
        if fip.get("port_id") == port_id:
            _unbind(world, fip)
            world.record("neutron", f"floating IP {fip['floating_ip_address']} unbound: its port {port_id} was deleted")


def _contains(cidr: str, address: str) -> bool:
    try:
        return ipaddress.ip_address(address) in ipaddress.ip_network(cidr, strict=False)
    except ValueError:
        return False


# --- inventory -------------------------------------------------------------------------------------


def _network(world, name: str, shared: bool, external: bool, description: str) -> dict:
    network = {"id": world.new_id(), "name": name, "description": description, **_owner(OPERATOR_PROJECT),
               "admin_state_up": True, "status": "ACTIVE", "shared": shared, "router:external": external,
               "is_default": external, "mtu": 1500, "port_security_enabled": True,
               "availability_zone_hints": [], "availability_zones": ["nova"], "ipv4_address_scope": None,
               "ipv6_address_scope": None, "l2_adjacency": True, "dns_domain": "", "qos_policy_id": None,
               "tags": []}
    world.data["networks"][network["id"]] = _stamp(world, network)
    return network


def _subnet(world, network: dict, name: str, cidr: str, gateway: str, start: str, end: str,
            nameservers: list[str]) -> dict:
    subnet = {"id": world.new_id(), "name": name, "description": "", "network_id": network["id"],
              **_owner(OPERATOR_PROJECT), "ip_version": 4, "cidr": cidr, "gateway_ip": gateway,
              "allocation_pools": [{"start": start, "end": end}], "enable_dhcp": True,
              "dns_nameservers": nameservers, "host_routes": [], "ipv6_ra_mode": None,
              "ipv6_address_mode": None, "subnetpool_id": None, "service_types": [], "segment_id": None,
              "dns_publish_fixed_ip": False, "tags": []}
    world.data["subnets"][subnet["id"]] = _stamp(world, subnet)
    return subnet


def seed_inventory(world) -> None:
    """`sharednet1` (shared, 10.52.0.0/22) and `public` (external: the twin's own loopback /24, where
    floating IPs are made), joined by Chameleon's router, as at a bare-metal site."""
    world.data.setdefault("routers", {})
    if any(n["name"] == SHARED_NETWORK for n in world.data["networks"].values()):
        return
    shared = _network(world, SHARED_NETWORK, shared=True, external=False, description="Shared network")
    inner = _subnet(world, shared, SHARED_SUBNET, SHARED_CIDR, "10.52.3.254", "10.52.0.10", "10.52.3.250",
                    ["129.114.97.1", "129.114.97.2"])
    public = _network(world, PUBLIC_NETWORK, shared=False, external=True, description="Public network")
    base = world.address.rsplit(".", 1)[0]
    outer = _subnet(world, public, PUBLIC_SUBNET, f"{base}.0/24", f"{base}.254", f"{base}.10", f"{base}.253", [])
    router = {"id": world.new_id(), "name": f"{SHARED_NETWORK}-router", "description": "", **_owner(OPERATOR_PROJECT),
              "admin_state_up": True, "status": "ACTIVE", "routes": [], "tags": [],
              "external_gateway_info": {"network_id": public["id"], "enable_snat": True,
                                        "external_fixed_ips": [{"subnet_id": outer["id"], "ip_address": f"{base}.2"}]},
              "interface_subnets": [inner["id"]]}
    world.data["routers"][router["id"]] = _stamp(world, router)


# --- the service -----------------------------------------------------------------------------------

ID = "(?P<id>[^/]+)"
TAGGED = "(?P<collection>networks|subnets|ports|floatingips|security-groups|routers)"


class Neutron(Service):
    prefix = "/network"
    name = "neutron"
    routes = [
        ("GET", "/", "versions"),
        ("GET", "/v2.0", "resources"),
        ("GET", "/v2.0/extensions", "list_extensions"),
        ("GET", "/v2.0/extensions/(?P<alias>[^/]+)", "show_extension"),
        ("GET", "/v2.0/networks", "list_networks"),
        ("GET", f"/v2.0/networks/{ID}", "show_network"),
        ("GET", "/v2.0/subnets", "list_subnets"),
        ("GET", f"/v2.0/subnets/{ID}", "show_subnet"),
        ("GET", "/v2.0/routers", "list_routers"),
        ("GET", f"/v2.0/routers/{ID}", "show_router"),
        ("GET", "/v2.0/ports", "list_ports"),
        ("POST", "/v2.0/ports", "create_port"),
        ("GET", f"/v2.0/ports/{ID}", "show_port"),
        ("PUT", f"/v2.0/ports/{ID}", "update_port"),
        ("DELETE", f"/v2.0/ports/{ID}", "delete_port"),
        ("GET", "/v2.0/floatingips", "list_floatingips"),
        ("POST", "/v2.0/floatingips", "create_floatingip"),
        ("GET", f"/v2.0/floatingips/{ID}", "show_floatingip"),
        ("PUT", f"/v2.0/floatingips/{ID}", "update_floatingip"),
        ("DELETE", f"/v2.0/floatingips/{ID}", "delete_floatingip"),
        ("GET", "/v2.0/security-groups", "list_security_groups"),
        ("POST", "/v2.0/security-groups", "create_security_group"),
        ("GET", f"/v2.0/security-groups/{ID}", "show_security_group"),
        ("PUT", f"/v2.0/security-groups/{ID}", "update_security_group"),
        ("DELETE", f"/v2.0/security-groups/{ID}", "delete_security_group"),
        ("GET", "/v2.0/security-group-rules", "list_rules"),
        ("POST", "/v2.0/security-group-rules", "create_rule"),
        ("GET", f"/v2.0/security-group-rules/{ID}", "show_rule"),
        ("DELETE", f"/v2.0/security-group-rules/{ID}", "delete_rule"),
        ("GET", f"/v2.0/{TAGGED}/{ID}/tags", "get_tags"),
        ("PUT", f"/v2.0/{TAGGED}/{ID}/tags", "replace_tags"),
        ("DELETE", f"/v2.0/{TAGGED}/{ID}/tags", "remove_tags"),
        ("GET", f"/v2.0/{TAGGED}/{ID}/tags/(?P<tag>[^/]+)", "check_tag"),
        ("PUT", f"/v2.0/{TAGGED}/{ID}/tags/(?P<tag>[^/]+)", "add_tag"),
        ("DELETE", f"/v2.0/{TAGGED}/{ID}/tags/(?P<tag>[^/]+)", "remove_tag"),
    ]

    def __init__(self, world):
        super().__init__(world)
        world.data.setdefault("routers", {})

    def error_body(self, status, message):
        if status == 401:  # keystonemiddleware answers these, before Neutron sees the request
            return {"error": {"code": 401, "title": "Unauthorized", "message": message}}
        kinds = {400: "HTTPBadRequest", 403: "HTTPForbidden", 404: "HTTPNotFound", 405: "HTTPMethodNotAllowed",
                 409: "HTTPConflict", 412: "HTTPPreconditionFailed"}
        if status == 404 and message.startswith("the resource could not be found"):
            message = "The resource could not be found."
        return {"NeutronError": {"type": kinds.get(status, "HTTPInternalServerError"), "message": message, "detail": ""}}

    def handle(self, request: Request):
        if request.path.endswith(".json"):  # Neutron still takes the old format suffix
            request.path = request.path[:-len(".json")]
        try:
            return super().handle(request)
        except NeutronError as error:
            return reply(error.status, {"NeutronError": {"type": error.kind, "message": error.message,
                                                         "detail": error.detail}})

    # --- plumbing -------------------------------------------------------------------------------

    @property
    def data(self) -> dict:
        return self.world.data

    def _project(self, request: Request) -> str:
        project = request.token().get("project")
        if not project:
            raise Fault(401, "The request you have made requires authentication.")
        return project["id"]

    def _body(self, request: Request, key: str, allowed: set[str], project: str) -> dict:
        """The request's `{key: {...}}`, checked as Neutron's API layer checks it."""
        body = request.json()
        if not isinstance(body, dict) or not isinstance(body.get(key), dict):
            raise bad_request(f"Unable to find '{key}' in request body")
        fields = dict(body[key])
        unknown = sorted(set(fields) - allowed - {"tenant_id", "project_id"})
        if unknown:
            raise bad_request(f"Unrecognized attribute(s) '{', '.join(unknown)}'")
        for owner_key in ("tenant_id", "project_id"):
            if owner_key in fields and fields[owner_key] != project:
                raise bad_request("Specifying 'project_id' or 'tenant_id' other than the authenticated project "
                                  "in request requires admin privileges")
            fields.pop(owner_key, None)
        for text in ("name", "description"):
            if text in fields and not isinstance(fields[text], str):
                raise bad_input(text, f"'{fields[text]}' is not a valid string")
            if text in fields and len(fields[text]) > 255:
                raise bad_input(text, f"'{fields[text]}' exceeds maximum length of 255")
        return fields

    def _read_only(self, fields: dict, writable: set[str]) -> None:
        for key in fields:
            if key not in writable:
                raise bad_request(f"Cannot update read-only attribute {key}")

    def _check_revision(self, request: Request, record: dict) -> None:
        wanted = request.headers.get("if-match", "")
        if wanted.startswith("revision_number="):
            expected = wanted.split("=", 1)[1]
            if str(record.get("revision_number")) != expected:
                raise NeutronError(412, "RevisionNumberConstraintFailed",
                                   f"Constrained to {expected}, but current revision is {record.get('revision_number')}")

    def _changed(self, what: str) -> None:
        self.world.record("neutron", what)

    @staticmethod
    def _matches(value, wanted: list[str]) -> bool:
        if isinstance(value, bool):
            return any(w.lower() in (("true", "1") if value else ("false", "0")) for w in wanted)
        if value is None:
            return False
        if isinstance(value, list):
            return any(str(v) in wanted for v in value)
        return str(value) in wanted

    def _fixed_ip_filter(self, record: dict, wanted: list[str]) -> bool:
        for condition in wanted:
            key, _, value = condition.partition("=")
            if key == "ip_address_substr":
                hit = any(value in ip["ip_address"] for ip in record.get("fixed_ips") or [])
            else:
                hit = any(ip.get(key) == value for ip in record.get("fixed_ips") or [])
            if not hit:
                return False
        return True

    def _list(self, request: Request, collection: str, rows: list[dict], filterable: set[str]):
        """Filters, sort, pages and fields over the visible `rows`, as Neutron lists."""
        query = request.query
        for key, wanted in query.items():
            if key in PAGING:
                continue
            if key in TAG_FILTERS:
                tags = {t for w in wanted for t in w.split(",")}
                test = {"tags": lambda have: tags <= have, "tags-any": lambda have: bool(tags & have),
                        "not-tags": lambda have: not tags <= have,
                        "not-tags-any": lambda have: not (tags & have)}[key]
                rows = [r for r in rows if test(set(r.get("tags") or []))]
            elif key == "fixed_ips" and collection == "ports":
                rows = [r for r in rows if self._fixed_ip_filter(r, wanted)]
            elif key in filterable:
                rows = [r for r in rows if self._matches(r.get(key), wanted)]
            else:
                raise bad_request(f"Invalid input for operation: [{key}] is invalid attribute for filtering.",
                                  "InvalidInput")
        sort_keys = query.get("sort_key") or ["id"]
        directions = query.get("sort_dir") or []
        for index in reversed(range(len(sort_keys))):
            key = sort_keys[index]
            backwards = index < len(directions) and directions[index] == "desc"
            rows = sorted(rows, key=lambda r: (r.get(key) is None, str(r.get(key))), reverse=backwards)
        links = []
        limit = request.arg("limit")
        if limit is not None:
            marker = request.arg("marker")
            if marker:
                ids = [r["id"] for r in rows]
                if marker in ids:
                    rows = rows[ids.index(marker) + 1:]
            size = int(limit) if str(limit).isdigit() else 0
            if size and len(rows) > size:
                rows = rows[:size]
                params = {k: v for k, v in query.items() if k != "marker"}
                params["marker"] = [rows[-1]["id"]]
                links.append({"rel": "next", "href": self.world.url(f"/network{request.path}") + "?" +
                              urlencode(params, doseq=True)})
        fields = query.get("fields")
        if fields:
            rows = [{k: v for k, v in r.items() if k in fields} for r in rows]
        body = {collection: rows}
        if links:
            body[f"{collection}_links"] = links
        return reply(200, body)

    def _show(self, record: dict, key: str, request: Request):
        fields = request.query.get("fields")
        if fields:
            record = {k: v for k, v in record.items() if k in fields}
        return reply(200, {key: record})

    # --- versions and extensions ------------------------------------------------------------------

    def versions(self, request: Request):
        return reply(200, {"versions": [{"id": "v2.0", "status": "CURRENT",
                                         "links": [{"rel": "self", "href": self.world.url("/network/v2.0/")}]}]})

    def resources(self, request: Request):
        self._project(request)
        return reply(200, {"resources": [
            {"name": one, "collection": many, "links": [{"rel": "self", "href": self.world.url(f"/network/v2.0/{url}")}]}
            for url, (_, one, many) in COLLECTIONS.items()]})

    @staticmethod
    def _extension(alias: str, name: str) -> dict:
        return {"alias": alias, "name": name, "description": name, "updated": "2019-01-01T00:00:00-00:00", "links": []}

    def list_extensions(self, request: Request):
        self._project(request)
        return reply(200, {"extensions": [self._extension(a, n) for a, n in EXTENSIONS]})

    def show_extension(self, request: Request):
        self._project(request)
        for alias, name in EXTENSIONS:
            if alias == request.param("alias"):
                return reply(200, {"extension": self._extension(alias, name)})
        raise NeutronError(404, "HTTPNotFound", f"Extension with alias {request.param('alias')} does not exist")

    # --- networks, subnets, routers ------------------------------------------------------------------

    def _network_view(self, network: dict) -> dict:
        subnets = sorted(s["id"] for s in self.data["subnets"].values() if s["network_id"] == network["id"])
        return {**network, "subnets": subnets}

    @staticmethod
    def _network_visible(network: dict, project: str) -> bool:
        return network["project_id"] == project or network.get("shared") or network.get("router:external")

    def _networks(self, project: str) -> list[dict]:
        return [self._network_view(n) for n in self.data["networks"].values() if self._network_visible(n, project)]

    def list_networks(self, request: Request):
        rows = self._networks(self._project(request))
        return self._list(request, "networks", rows, set().union(*(r.keys() for r in rows)) | {"id", "name"})

    def show_network(self, request: Request):
        project, ident = self._project(request), request.param("id")
        network = self.data["networks"].get(ident)
        if network is None or not self._network_visible(network, project):
            raise not_found("network", ident)
        return self._show(self._network_view(network), "network", request)

    def _subnet_visible(self, subnet: dict, project: str) -> bool:
        network = self.data["networks"].get(subnet["network_id"], {})
        return subnet["project_id"] == project or bool(network.get("shared"))

    def list_subnets(self, request: Request):
        project = self._project(request)
        rows = [dict(s) for s in self.data["subnets"].values() if self._subnet_visible(s, project)]
        return self._list(request, "subnets", rows, set().union(*(r.keys() for r in rows)) | {"id", "name", "network_id"})

    def show_subnet(self, request: Request):
        project, ident = self._project(request), request.param("id")
        subnet = self.data["subnets"].get(ident)
        if subnet is None or not self._subnet_visible(subnet, project):
            raise not_found("subnet", ident)
        return self._show(dict(subnet), "subnet", request)

    @staticmethod
    def _router_view(router: dict) -> dict:
        return {k: v for k, v in router.items() if k != "interface_subnets"}

    def list_routers(self, request: Request):
        project = self._project(request)
        rows = [self._router_view(r) for r in self.data["routers"].values() if r["project_id"] == project]
        return self._list(request, "routers", rows, {"id", "name", "status", "project_id", "tenant_id", "description",
                                                     "admin_state_up", "revision_number"})

    def show_router(self, request: Request):
        project, ident = self._project(request), request.param("id")
        router = self.data["routers"].get(ident)
        if router is None or router["project_id"] != project:
            raise not_found("router", ident)
        return self._show(self._router_view(router), "router", request)

    # --- ports ------------------------------------------------------------------------------------

    def _port_view(self, port: dict) -> dict:
        """A port as Neutron shows it (Nova's records may carry fewer fields)."""
        view = {"name": "", "description": "", "admin_state_up": True, "status": "ACTIVE", "mac_address": "",
                "device_id": "", "device_owner": "", "fixed_ips": [], "security_groups": [],
                "port_security_enabled": True, "allowed_address_pairs": [], "extra_dhcp_opts": [],
                "binding:vnic_type": "normal", "dns_name": "", "tags": [], "revision_number": 0}
        view.update(port)
        owner = port.get("project_id") or port.get("tenant_id")
        view.update(tenant_id=owner, project_id=owner)
        return {k: v for k, v in view.items() if not k.startswith("binding:") or k == "binding:vnic_type"}

    def _port(self, project: str, ident: str) -> dict:
        port = self.data["ports"].get(ident)
        if port is None or (port.get("project_id") or port.get("tenant_id")) != project:
            raise not_found("port", ident)
        return port

    PORT_FIELDS = {"id", "name", "description", "network_id", "tenant_id", "project_id", "admin_state_up", "status",
                   "mac_address", "device_id", "device_owner", "fixed_ips", "security_groups", "port_security_enabled",
                   "allowed_address_pairs", "binding:vnic_type", "dns_name", "revision_number", "created_at",
                   "updated_at", "ip_allocation"}

    def list_ports(self, request: Request):
        project = self._project(request)
        rows = [self._port_view(p) for p in self.data["ports"].values()
                if (p.get("project_id") or p.get("tenant_id")) == project]
        return self._list(request, "ports", rows, self.PORT_FIELDS)

    def show_port(self, request: Request):
        port = self._port(self._project(request), request.param("id"))
        return self._show(self._port_view(port), "port", request)

    def _groups_of_project(self, project: str, ids) -> list[str]:
        check_group_list(ids)
        for ident in ids:
            group = self.data["security_groups"].get(ident)
            if group is None or group["project_id"] != project:
                raise not_found("security_group", ident)
        return list(ids)

    def create_port(self, request: Request):
        project = self._project(request)
        fields = self._body(request, "port", {"name", "description", "network_id", "fixed_ips", "admin_state_up",
                                              "port_security_enabled", "security_groups", "device_id",
                                              "device_owner", "allowed_address_pairs", "dns_name",
                                              "binding:vnic_type"}, project)
        if "network_id" not in fields:
            raise bad_request("Failed to parse request. Required attribute 'network_id' not specified")
        network = self.data["networks"].get(fields["network_id"] or "")
        if network is None or not self._network_visible(network, project):
            raise not_found("network", fields["network_id"])
        if network["project_id"] != project and not network.get("shared"):
            raise NeutronError(403, "PolicyNotAuthorized", "(rule:create_port) is disallowed by policy")
        secure = fields.get("port_security_enabled", network.get("port_security_enabled", True))
        groups = fields.get("security_groups")
        if groups is not None:
            ensure_default_group(self.world, project)
            groups = self._groups_of_project(project, groups)
            if groups and not secure:
                raise bad_request("Port has security group associated. Cannot disable port security or ip address "
                                  "until security group is removed", "PortSecurityAndIPRequiredForSecurityGroups")
        port = new_port(self.world, project, network["id"], device_id=fields.get("device_id") or "",
                        device_owner=fields.get("device_owner") or "", name=fields.get("name", ""),
                        fixed_ips=fields.get("fixed_ips"), security_groups=groups, port_security_enabled=secure,
                        description=fields.get("description", ""), admin_state_up=fields.get("admin_state_up", True))
        for key in ("allowed_address_pairs", "dns_name", "binding:vnic_type"):
            if key in fields:
                port[key] = fields[key]
        self._changed(f"port {port['id']} made on {network['name']} for {_project_name(self.world, project)}")
        return reply(201, {"port": self._port_view(port)})

    def update_port(self, request: Request):
        project = self._project(request)
        port = self._port(project, request.param("id"))
        self._check_revision(request, port)
        writable = {"name", "description", "admin_state_up", "security_groups", "port_security_enabled",
                    "allowed_address_pairs", "device_id", "device_owner", "dns_name", "binding:vnic_type"}
        fields = self._body(request, "port", writable | {"id", "network_id", "mac_address", "status", "fixed_ips"},
                            project)
        self._read_only({k: v for k, v in fields.items() if k != "fixed_ips"}, writable)
        if "fixed_ips" in fields:
            raise NeutronError(403, "PolicyNotAuthorized", "(rule:update_port:fixed_ips) is disallowed by policy")
        if "security_groups" in fields:
            fields["security_groups"] = self._groups_of_project(project, fields["security_groups"] or [])
        secure = fields.get("port_security_enabled", port.get("port_security_enabled", True))
        if not secure and fields.get("security_groups", port.get("security_groups")):
            raise bad_request("Port has security group associated. Cannot disable port security or ip address "
                              "until security group is removed", "PortSecurityAndIPRequiredForSecurityGroups")
        port.update(fields)
        _stamp(self.world, port)
        self._changed(f"port {port['id']} updated: {', '.join(sorted(fields)) or 'nothing'}")
        return reply(200, {"port": self._port_view(port)})

    def delete_port(self, request: Request):
        port = self._port(self._project(request), request.param("id"))
        release_port(self.world, port["id"])
        self._changed(f"port {port['id']} deleted")
        return reply(204)

    # --- floating IPs -----------------------------------------------------------------------------

    def _fip_view(self, fip: dict) -> dict:
        if fip.get("port_id") and fip["port_id"] not in self.data["ports"]:
            _unbind(self.world, fip)  # its port went away without Neutron hearing of it
        view = {k: v for k, v in fip.items() if not k.startswith("_")}
        port = self.data["ports"].get(fip.get("port_id") or "")
        view["port_details"] = None if port is None else {
            k: self._port_view(port)[k] for k in ("name", "network_id", "mac_address", "admin_state_up", "status",
                                                  "device_id", "device_owner")}
        return view

    def _fip(self, project: str, ident: str) -> dict:
        fip = self.data["floatingips"].get(ident)
        if fip is None or fip["project_id"] != project:
            raise not_found("floatingip", ident)
        return fip

    def list_floatingips(self, request: Request):
        project = self._project(request)
        rows = [self._fip_view(f) for f in self.data["floatingips"].values() if f["project_id"] == project]
        return self._list(request, "floatingips", rows,
                          {"id", "floating_ip_address", "floating_network_id", "port_id", "fixed_ip_address",
                           "router_id", "status", "project_id", "tenant_id", "description", "revision_number",
                           "subnet_id", "created_at", "updated_at"})

    def show_floatingip(self, request: Request):
        fip = self._fip(self._project(request), request.param("id"))
        return self._show(self._fip_view(fip), "floatingip", request)

    def _bind(self, fip: dict, fields: dict, project: str) -> None:
        """Neutron's floating IP association (`_check_and_get_fip_assoc`), for create and update."""
        if fields.get("fixed_ip_address") and not fields.get("port_id"):
            raise bad_request("Bad floatingip request: fixed_ip_address cannot be specified without a port_id.",
                              "BadRequest")
        if "port_id" not in fields:
            return  # no change (Neutron bug 1610045: an update without port_id keeps the binding)
        port_id = fields["port_id"]
        if not port_id:
            if fip.get("port_id"):
                self._changed(f"floating IP {fip['floating_ip_address']} unbound from port {fip['port_id']}")
            _unbind(self.world, fip)
            return
        port = self.data["ports"].get(port_id)
        if port is None or (port.get("project_id") or port.get("tenant_id")) != project:
            raise not_found("port", port_id)
        v4 = [ip for ip in port.get("fixed_ips") or [] if ipaddress.ip_address(ip["ip_address"]).version == 4]
        if fields.get("fixed_ip_address"):
            chosen = [ip for ip in port.get("fixed_ips") or [] if ip["ip_address"] == fields["fixed_ip_address"]]
            if not chosen:
                raise bad_request(f"Bad floatingip request: Port {port_id} does not have fixed ip "
                                  f"{fields['fixed_ip_address']}.", "BadRequest")
        elif not v4:
            raise bad_request(f"Bad floatingip request: Cannot add floating IP to port {port_id} that has no fixed "
                              "IPv4 addresses.", "BadRequest")
        elif len(v4) > 1:
            raise bad_request(f"Bad floatingip request: Port {port_id} has multiple fixed IPv4 addresses.  Must "
                              "provide a specific IPv4 address when assigning a floating IP.", "BadRequest")
        else:
            chosen = v4
        fixed, subnet_id = chosen[0]["ip_address"], chosen[0]["subnet_id"]
        router = next((r for r in self.data["routers"].values()
                       if (r.get("external_gateway_info") or {}).get("network_id") == fip["floating_network_id"]
                       and subnet_id in r.get("interface_subnets", [])), None)
        if router is None:
            raise NeutronError(404, "ExternalGatewayForFloatingIPNotFound",
                               f"External network {fip['floating_network_id']} is not reachable from subnet {subnet_id}.  "
                               f"Therefore, cannot associate Port {port_id} with a Floating IP.")
        if port_id == fip.get("port_id"):
            return
        for other in self.data["floatingips"].values():
            if (other["id"] != fip["id"] and other.get("port_id") == port_id and other.get("fixed_ip_address") == fixed
                    and other["floating_network_id"] == fip["floating_network_id"]):
                raise NeutronError(409, "FloatingIPPortAlreadyAssociated",
                                   f"Cannot associate floating IP {fip['floating_ip_address']} ({fip['id']}) with port "
                                   f"{port_id} using fixed IP {fixed}, as that fixed IP already has a floating IP on "
                                   f"external network {fip['floating_network_id']}.")
        before = fip.get("port_id")
        fip.update(port_id=port_id, fixed_ip_address=fixed, router_id=router["id"], status="ACTIVE")
        fip["_bound_at"] = time.time()  # Nova hears of it later (nova.py: addresses)
        moved = f" (moved from port {before})" if before else ""
        self._changed(f"floating IP {fip['floating_ip_address']} bound to port {port_id} "
                      f"of {port.get('device_id') or 'no device'}{moved}")

    FIP_POST = {"floating_network_id", "port_id", "fixed_ip_address", "floating_ip_address", "subnet_id",
                "description", "dns_name", "dns_domain", "qos_policy_id"}

    def create_floatingip(self, request: Request):
        project = self._project(request)
        fields = self._body(request, "floatingip", self.FIP_POST, project)
        if "floating_network_id" not in fields:
            raise bad_request("Failed to parse request. Required attribute 'floating_network_id' not specified")
        if "floating_ip_address" in fields:
            raise NeutronError(403, "PolicyNotAuthorized",
                               "(rule:create_floatingip:floating_ip_address) is disallowed by policy")
        self._check_floatingip_quota(project)
        network_id = fields["floating_network_id"]
        network = self.data["networks"].get(network_id or "")
        if network is None or not self._network_visible(network, project):
            raise not_found("network", network_id)
        if not network.get("router:external"):
            raise bad_request(f"Bad floatingip request: Network {network_id} is not a valid external network.",
                              "BadRequest")
        address = self._external_address(network_id)
        fip = {"id": self.world.new_id(), **_owner(project), "floating_ip_address": address,
               "floating_network_id": network_id, "router_id": None, "port_id": None, "fixed_ip_address": None,
               "status": "DOWN", "description": fields.get("description", ""), "tags": [],
               "port_forwardings": [], "qos_policy_id": fields.get("qos_policy_id"),
               "dns_name": fields.get("dns_name", ""), "dns_domain": fields.get("dns_domain", "")}
        _stamp(self.world, fip)
        if fields.get("port_id") or fields.get("fixed_ip_address"):
            self._bind(fip, fields, project)  # raises before the address is taken if the port is wrong
        self.data["floatingips"][fip["id"]] = fip
        self._changed(f"floating IP {address} allocated to {_project_name(self.world, project)}")
        return reply(201, {"floatingip": self._fip_view(fip)})

    def _check_floatingip_quota(self, project: str) -> None:
        """Neutron's API layer reserves quota before the plugin runs (neutron/api/v2/base.py; the driver
        raises OverQuota, neutron/db/quota/driver.py). Fault `floating-ip-quota`: the quota is used up."""
        held = sum(1 for f in self.data["floatingips"].values() if f["project_id"] == project)
        if self.world.take_fault("floating-ip-quota") or held >= FLOATINGIP_QUOTA:
            raise NeutronError(409, "OverQuota", "Quota exceeded for resources: ['floatingip'].")

    def _external_address(self, network_id: str) -> str:
        """An address from the external network's pools, as IPAM gives the floating IP's port one: none
        left is 409 IpAddressGenerationFailure (neutron/db/ipam_pluggable_backend.py; ExternalIpAddressExhausted
        is only for a port that got no IPv4 address, neutron/db/l3_db.py). Fault `floating-ips-exhausted`."""
        exhausted = NeutronError(409, "IpAddressGenerationFailure",
                                 f"No more IP addresses available on network {network_id}.")
        if self.world.take_fault("floating-ips-exhausted"):
            raise exhausted
        for subnet in sorted((s for s in self.data["subnets"].values() if s["network_id"] == network_id),
                             key=lambda s: s["id"]):
            try:
                return _allocate(self.world, subnet)
            except NeutronError:  # this subnet is full: IPAM tries the next
                continue
        raise exhausted

    def update_floatingip(self, request: Request):
        project = self._project(request)
        fip = self._fip(project, request.param("id"))
        self._check_revision(request, fip)
        writable = {"port_id", "fixed_ip_address", "description", "qos_policy_id"}
        fields = self._body(request, "floatingip", writable | self.FIP_POST | {"id", "status", "router_id"}, project)
        self._read_only(fields, writable)
        self._bind(fip, fields, project)
        for key in ("description", "qos_policy_id"):
            if key in fields:
                fip[key] = fields[key]
        _stamp(self.world, fip)
        return reply(200, {"floatingip": self._fip_view(fip)})

    def delete_floatingip(self, request: Request):
        fip = self._fip(self._project(request), request.param("id"))
        del self.data["floatingips"][fip["id"]]
        self._changed(f"floating IP {fip['floating_ip_address']} released by {_project_name(self.world, fip['project_id'])}")
        return reply(204)

    # --- security groups --------------------------------------------------------------------------

    def _group_view(self, group: dict) -> dict:
        rules = sorted((self._rule_view(r) for r in self.data["security_group_rules"].values()
                        if r["security_group_id"] == group["id"]), key=lambda r: r["id"])
        return {**group, "security_group_rules": rules}

    def _rule_view(self, rule: dict) -> dict:
        group = self.data["security_groups"].get(rule["security_group_id"], {})
        return {**rule, "belongs_to_default_sg": group.get("name") == DEFAULT_GROUP}

    def _group(self, project: str, ident: str) -> dict:
        group = self.data["security_groups"].get(ident)
        if group is None or group["project_id"] != project:
            raise not_found("security_group", ident)
        return group

    def list_security_groups(self, request: Request):
        project = self._project(request)
        ensure_default_group(self.world, project)
        rows = [self._group_view(g) for g in self.data["security_groups"].values() if g["project_id"] == project]
        return self._list(request, "security_groups", rows,
                          {"id", "name", "description", "project_id", "tenant_id", "stateful", "shared",
                           "revision_number", "created_at", "updated_at"})

    def show_security_group(self, request: Request):
        project = self._project(request)
        ensure_default_group(self.world, project)
        return self._show(self._group_view(self._group(project, request.param("id"))), "security_group", request)

    def create_security_group(self, request: Request):
        project = self._project(request)
        fields = self._body(request, "security_group", {"name", "description", "stateful"}, project)
        ensure_default_group(self.world, project)
        name = fields.get("name", "")
        if name == DEFAULT_GROUP:
            raise NeutronError(409, "SecurityGroupDefaultAlreadyExists", "Default security group already exists.")
        group = _new_group(self.world, project, name, fields.get("description", ""))
        if "stateful" in fields:
            group["stateful"] = bool(fields["stateful"])
        self._changed(f"security group {name} ({group['id']}) made in {_project_name(self.world, project)}")
        return reply(201, {"security_group": self._group_view(group)})

    def update_security_group(self, request: Request):
        project = self._project(request)
        group = self._group(project, request.param("id"))
        self._check_revision(request, group)
        fields = self._body(request, "security_group", {"name", "description", "stateful", "id"}, project)
        self._read_only(fields, {"name", "description", "stateful"})
        if group["name"] == DEFAULT_GROUP and fields.get("name", DEFAULT_GROUP) != DEFAULT_GROUP:
            raise NeutronError(409, "SecurityGroupCannotUpdateDefault", "Updating default security group not allowed.")
        group.update(fields)
        _stamp(self.world, group)
        self._changed(f"security group {group['id']} updated: {', '.join(sorted(fields))}")
        return reply(200, {"security_group": self._group_view(group)})

    def delete_security_group(self, request: Request):
        project = self._project(request)
        group = self._group(project, request.param("id"))
        if group["name"] == DEFAULT_GROUP:
            raise NeutronError(409, "SecurityGroupCannotRemoveDefault",
                               "Insufficient rights for removing default security group.")
        if any(group["id"] in (p.get("security_groups") or []) for p in self.data["ports"].values()):
            raise NeutronError(409, "SecurityGroupInUse", f"Security Group {group['id']} in use.")
        for rule_id in [r["id"] for r in self.data["security_group_rules"].values()
                        if r["security_group_id"] == group["id"] or r.get("remote_group_id") == group["id"]]:
            del self.data["security_group_rules"][rule_id]
        del self.data["security_groups"][group["id"]]
        self._changed(f"security group {group['name']} ({group['id']}) deleted")
        return reply(204)

    # --- security group rules ---------------------------------------------------------------------

    def _rule(self, project: str, ident: str) -> dict:
        rule = self.data["security_group_rules"].get(ident)
        if rule is None or rule["project_id"] != project:
            raise not_found("security_group_rule", ident)
        return rule

    def list_rules(self, request: Request):
        project = self._project(request)
        rows = [self._rule_view(r) for r in self.data["security_group_rules"].values() if r["project_id"] == project]
        return self._list(request, "security_group_rules", rows,
                          {"id", "security_group_id", "direction", "ethertype", "protocol", "port_range_min",
                           "port_range_max", "remote_ip_prefix", "remote_group_id", "description", "project_id",
                           "tenant_id", "revision_number", "created_at", "updated_at", "normalized_cidr"})

    def show_rule(self, request: Request):
        rule = self._rule(self._project(request), request.param("id"))
        return self._show(self._rule_view(rule), "security_group_rule", request)

    @staticmethod
    def _protocol(value) -> str | None:
        if value is None or str(value).lower() == "any":
            return None
        text = str(value).lower()
        if text in PROTOCOLS or (text.isdigit() and 0 <= int(text) <= 255):
            return text
        raise bad_request(f"Security group rule protocol {value} not supported. Only protocol values "
                          f"[None, {', '.join(sorted(PROTOCOLS))}] and integer representations [0 to 255] are supported.",
                          "SecurityGroupRuleInvalidProtocol")

    @staticmethod
    def _port_value(value):
        if value is None:
            return None
        try:
            number = int(value)
        except (TypeError, ValueError):
            number = -1
        if isinstance(value, bool) or not 0 <= number <= 65535:
            raise bad_request(f"Invalid value for port {value}.", "SecurityGroupInvalidPortValue")
        return number

    @staticmethod
    def _protocol_number(protocol: str | None, ethertype: str) -> str | None:
        if protocol is None:
            return None
        if protocol.isdigit():
            return protocol
        if protocol in ("icmp", "icmpv6", "ipv6-icmp") and ethertype == "IPv6":
            return "58"
        return str(PROTOCOLS[protocol])

    def _rule_key(self, rule: dict) -> tuple:
        prefix = rule.get("remote_ip_prefix")
        return (rule["direction"], rule["ethertype"], rule.get("port_range_max"), rule.get("port_range_min"),
                self._protocol_number(rule.get("protocol"), rule["ethertype"]), rule.get("remote_group_id"),
                rule.get("remote_address_group_id"), None if prefix in ("0.0.0.0/0", "::/0") else prefix,
                rule["security_group_id"])

    def create_rule(self, request: Request):
        project = self._project(request)
        fields = self._body(request, "security_group_rule",
                            {"security_group_id", "direction", "protocol", "port_range_min", "port_range_max",
                             "ethertype", "remote_ip_prefix", "remote_group_id", "remote_address_group_id",
                             "description"}, project)
        for required in ("security_group_id", "direction"):
            if required not in fields:
                raise bad_request(f"Failed to parse request. Required attribute '{required}' not specified")
        direction = fields["direction"]
        if direction not in ("ingress", "egress"):
            raise bad_input("direction", f"'{direction}' is not in ['ingress', 'egress']")
        ethertype = {"ipv4": "IPv4", "ipv6": "IPv6"}.get(str(fields.get("ethertype") or "IPv4").lower())
        if ethertype is None:
            raise bad_request(f"Security group rule for ethertype '{fields.get('ethertype')}' not supported. "
                              "Allowed values are ['IPv4', 'IPv6'].", "SecurityGroupRuleInvalidEtherType")
        protocol = self._protocol(fields.get("protocol"))
        low, high = self._port_value(fields.get("port_range_min")), self._port_value(fields.get("port_range_max"))
        if (low is not None or high is not None) and protocol is None:
            raise bad_request("Must also specify protocol if port range is given.",
                              "SecurityGroupProtocolRequiredWithPorts")
        if protocol in PORT_PROTOCOLS and (low is not None or high is not None):
            if low is None or high is None or low == 0 or high == 0:
                raise bad_request(f"Invalid value for port {0 if 0 in (low, high) else None}.",
                                  "SecurityGroupInvalidPortValue")
            if low > high:
                raise bad_request("For TCP/UDP protocols, port_range_min must be <= port_range_max",
                                  "SecurityGroupInvalidPortRange")
        prefix = fields.get("remote_ip_prefix")
        if prefix is not None:
            try:
                network = ipaddress.ip_network(prefix, strict=False)
            except ValueError:
                raise bad_input("remote_ip_prefix", f"'{prefix}' is not a valid IP subnet") from None
            if f"IPv{network.version}" != ethertype:
                raise bad_request(f"Conflicting value ethertype {ethertype} for CIDR {prefix}",
                                  "SecurityGroupRuleParameterConflict")
            prefix = str(network)
        remote_group = fields.get("remote_group_id")
        if prefix is not None and remote_group is not None:
            raise bad_request("Only remote_ip_prefix or remote_group_id may be provided.",
                              "SecurityGroupRemoteGroupAndRemoteIpPrefix")
        if remote_group is not None:
            self._group(project, remote_group)
        group = self._group(project, fields["security_group_id"])
        candidate = {"direction": direction, "ethertype": ethertype, "protocol": protocol, "port_range_min": low,
                     "port_range_max": high, "remote_ip_prefix": prefix, "remote_group_id": remote_group,
                     "remote_address_group_id": None, "security_group_id": group["id"]}
        key = self._rule_key(candidate)
        for existing in sorted(self.data["security_group_rules"].values(), key=lambda r: r["id"]):
            if existing["security_group_id"] == group["id"] and self._rule_key(existing) == key:
                raise NeutronError(409, "SecurityGroupRuleExists",
                                   f"Security group rule already exists. Rule id is {existing['id']}.")
        description = fields.get("description", "")
        rule = _rule_record(self.world, group, direction, ethertype, protocol, low, high, prefix, remote_group,
                            description)
        _stamp(self.world, group)
        ports = f" {protocol or 'any'} {low}-{high}" if low is not None else f" {protocol or 'any'}"
        self._changed(f"rule {direction}{ports} from {prefix or remote_group or 'anywhere'} added to "
                      f"security group {group['name']} ({rule['id']})")
        return reply(201, {"security_group_rule": self._rule_view(rule)})

    def delete_rule(self, request: Request):
        rule = self._rule(self._project(request), request.param("id"))
        del self.data["security_group_rules"][rule["id"]]
        self._changed(f"security group rule {rule['id']} deleted")
        return reply(204)

    # --- tags -------------------------------------------------------------------------------------

    def _tagged(self, request: Request, change: bool) -> dict:
        project = self._project(request)
        table, one, _ = COLLECTIONS[request.param("collection")]
        ident = request.param("id")
        record = self.data[table].get(ident)
        if record is None:
            raise not_found(one, ident)
        owner = record.get("project_id") or record.get("tenant_id")
        visible = owner == project or (table == "networks" and self._network_visible(record, project)) or (
            table == "subnets" and self._subnet_visible(record, project))
        if not visible:
            raise not_found(one, ident)
        if change and owner != project:
            raise NeutronError(403, "PolicyNotAuthorized", f"(rule:update_{one}:tags) is disallowed by policy")
        return record

    @staticmethod
    def _valid_tags(tags) -> list[str]:
        if not isinstance(tags, list) or not all(isinstance(t, str) and 0 < len(t) <= 255 and "," not in t
                                                 for t in tags):
            raise bad_input("tags", f"'{tags}' is not a valid list of tags")
        return list(dict.fromkeys(tags))

    def get_tags(self, request: Request):
        return reply(200, {"tags": list(self._tagged(request, False).get("tags") or [])})

    def replace_tags(self, request: Request):
        record = self._tagged(request, True)
        body = request.json()
        record["tags"] = self._valid_tags(body.get("tags") if isinstance(body, dict) else None)
        _stamp(self.world, record)
        self._changed(f"tags of {request.param('collection')} {record['id']}: {', '.join(record['tags']) or 'none'}")
        return reply(200, {"tags": record["tags"]})

    def remove_tags(self, request: Request):
        record = self._tagged(request, True)
        record["tags"] = []
        _stamp(self.world, record)
        self._changed(f"tags of {request.param('collection')} {record['id']} removed")
        return reply(204)

    def check_tag(self, request: Request):
        if request.param("tag") not in (self._tagged(request, False).get("tags") or []):
            raise NeutronError(404, "TagNotFound", f"Tag {request.param('tag')} could not be found.")
        return reply(204)

    def add_tag(self, request: Request):
        record = self._tagged(request, True)
        tags = self._valid_tags([request.param("tag")])
        if tags[0] not in (record.get("tags") or []):
            record["tags"] = list(record.get("tags") or []) + tags
            _stamp(self.world, record)
            self._changed(f"tag {tags[0]} added to {request.param('collection')} {record['id']}")
        return reply(201)

    def remove_tag(self, request: Request):
        record = self._tagged(request, True)
        if request.param("tag") not in (record.get("tags") or []):
            raise NeutronError(404, "TagNotFound", f"Tag {request.param('tag')} could not be found.")
        record["tags"] = [t for t in record["tags"] if t != request.param("tag")]
        _stamp(self.world, record)
        return reply(204)


def _looks_like_uuid(text: str) -> bool:
    import uuid

    try:
        uuid.UUID(str(text))
        return True
    except ValueError:
        return False


def services(world) -> list[Service]:
    return [Neutron(world)]
