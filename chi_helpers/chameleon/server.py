"""The series' server on the reserved host: brought up once, reachable, and summarized.

Named `node-mlflow-<user>`, from the variant's image, on the lease's reservation (a host for the
bare-metal variants, a flavor for the VM). Safe to run again: python-chi's idempotent submit
brings one up only if none of that name exists, and the floating IP the server has is reused.
"""

from __future__ import annotations

import time

from chi_helpers.chameleon.plan import SECURITY_GROUP_PORTS
from chi_helpers.variants import Variant


# Nova lists a floating IP seconds after Neutron binds it (Neutron's batched notice refreshes Nova's cache);
# should that notice be lost, Nova's periodic refresh (heal_instance_info_cache_interval, 60 s) catches up.
ADDRESS_WAIT_SECONDS = 120

FREE_ONE = ("Release a floating IP that no one uses (dashboard: Network > Floating IPs, 'Release Floating IP' on "
            "an address mapped to no instance; ask your class first: the project is shared), or ask your "
            "instructor; then run this again.")


class ServerError(RuntimeError):
    """The server cannot be used; the message says what to do."""


# Chameleon's docs (technical/cli/authentication.rst): a credential with only the `member` role gets 403 on
# the image list (and Nova's flavor extra specs): Glance and Nova ask for `reader`, and Chameleon's Keystone
# does not add the `reader` that `member` implies to such a credential. A credential's roles cannot be
# changed (Keystone has no update for them), so a new one is made.
NO_READER = ("the application credential has no `reader` role, which reading images and flavors needs. Add the "
             "reader role by making a new application credential with it (an existing one's roles cannot be "
             "changed): on the site's dashboard, Identity > Application Credentials > Create Application "
             "Credential, select both `member` and `reader` (or no role: it then gets all of yours), tick "
             "\"Unrestricted\", download its openrc file, and use it as rc_file.")


def forbidden_read(error: Exception) -> str | None:
    """What Glance or Nova said when it refused a read (403), or None for any other error."""
    from glanceclient.exc import HTTPForbidden
    from novaclient.exceptions import Forbidden

    if isinstance(error, HTTPForbidden):
        return f"Glance refused to list images (403 Forbidden: {' '.join(str(error).split())})"
    if isinstance(error, Forbidden):
        return f"Nova refused to show the flavor's extra specs (403 Forbidden: {getattr(error, 'message', error)})"
    return None


def new_server(profile: Variant, lease, name: str):
    """python-chi's Server for `name`: it looks the image up in Glance, and a flavor's reservation in Nova."""
    import chi.server

    try:
        return chi.server.Server(name, image_name=profile.image, **placement(profile, lease))
    except Exception as error:
        refused = forbidden_read(error)
        if refused is None:
            raise
        raise ServerError(f"{refused}: {NO_READER}") from None


def server_name(user: str) -> str:
    return f"node-mlflow-{user}"


def placement(profile: Variant, lease) -> dict:
    """Where the server goes: the lease's host reservation, or the flavor it reserved."""
    if profile.reservation == "node":
        if not lease.node_reservations:
            raise ServerError(f"lease {lease.name} has no host reservation: was it made for the {profile.name} variant?")
        return {"reservation_id": lease.node_reservations[0]["id"]}
    flavors = lease.get_reserved_flavors()
    if not flavors:
        raise ServerError(f"lease {lease.name} reserves no flavor: was it made for the vm variant?")
    return {"flavor_name": flavors[0].name}


def open_ports(server) -> None:
    """The VM sits behind security groups: open what the series needs, and nothing else.

    A class shares one project, so a group of the same name may exist already, made by someone
    else with other rules: python-chi's idempotent submit would hand it back as it is. So each
    group's rule is checked and added when missing.
    """
    from chi.network import neutron

    client = neutron()
    on_server = {g for p in client.list_ports(device_id=server.id)["ports"] for g in p.get("security_groups") or []}
    for name, port in SECURITY_GROUP_PORTS.items():
        group_name = f"allow-{port}"
        groups = client.list_security_groups(name=group_name)["security_groups"]
        group = groups[0] if groups else client.create_security_group(
            {"security_group": {"name": group_name, "description": f"{name} for the MLflow series"}})["security_group"]
        has_rule = any(rule["direction"] == "ingress" and rule.get("protocol") == "tcp"
                       and rule.get("port_range_min") == port and rule.get("port_range_max") == port
                       and rule.get("remote_ip_prefix") in (None, "0.0.0.0/0") and rule.get("ethertype") == "IPv4"
                       for rule in group.get("security_group_rules", []))
        if not has_rule:
            client.create_security_group_rule({"security_group_rule": {
                "security_group_id": group["id"], "direction": "ingress", "protocol": "tcp", "ethertype": "IPv4",
                "port_range_min": port, "port_range_max": port, "remote_ip_prefix": "0.0.0.0/0"}})
        if group["id"] not in on_server:  # Nova adds a group twice without looking, and Neutron refuses (400)
            server.add_security_group(group["id"])  # by id: a shared project may hold two groups of that name


def own_floating_ip(server) -> str:
    """A floating IP that is this server's: python-chi's default takes the project's first unbound one,
    which in a shared project may be a classmate's. Ours carries the server's name in its description."""
    from chi.network import get_network_id, neutron
    from neutronclient.common.exceptions import IpAddressGenerationFailureClient, OverQuotaClient

    client = neutron()
    mark = f"mlflow series: {server.name}"
    held = client.list_floatingips()["floatingips"]
    mine = [ip for ip in held if ip.get("description") == mark and ip["port_id"] is None]
    if mine:
        return mine[0]["floating_ip_address"]
    try:
        made = client.create_floatingip({"floatingip": {"floating_network_id": get_network_id("public"),
                                                        "description": mark}})
    except (IpAddressGenerationFailureClient, OverQuotaClient) as refused:
        raise ServerError(no_floating_ip(refused, held)) from None
    return made["floatingip"]["floating_ip_address"]


def no_floating_ip(refused, held: list[dict]) -> str:
    """What to do when Neutron has no floating IP to give (its quota, or the site's pool, is used up)."""
    from neutronclient.common.exceptions import OverQuotaClient

    unused = sum(1 for ip in held if ip["port_id"] is None)
    neutron_said = str(refused).splitlines()[0]
    if isinstance(refused, OverQuotaClient):
        why = (f"the project has used its quota of floating IPs: it holds {len(held)}, {unused} of them "
               "mapped to no instance")
    else:
        why = ("the site has no public (floating) IP address left: its pool is shared by every project there "
               f"(this project holds {len(held)}, {unused} of them mapped to no instance)")
    return f"no floating IP for the server: {why} (Neutron: {neutron_said}). {FREE_ONE}"


def bound_floating_ip(server) -> str | None:
    """The floating IP Neutron has bound to one of the server's ports. Nova's `addresses`, which
    `server.get_floating_ip()` reads, show it only seconds after it is bound."""
    from chi.network import neutron

    client = neutron()
    ports = {p["id"] for p in client.list_ports(device_id=server.id)["ports"]}
    bound = sorted(ip["floating_ip_address"] for ip in client.list_floatingips()["floatingips"]
                   if ip["port_id"] in ports)
    return bound[0] if bound else None


def wait_for_address(server, address: str, limit: float = ADDRESS_WAIT_SECONDS, every: float = 0.5) -> None:
    """Until Nova lists `address` for the server: python-chi's SSH and checks take the address from there."""
    if address in server.get_all_floating_ips():
        return
    print(f"waiting for Nova to list {address} for {server.name} (Neutron bound it; Nova hears within seconds)")
    deadline = time.monotonic() + limit
    while address not in server.get_all_floating_ips():
        if time.monotonic() > deadline:
            raise ServerError(f"Nova still does not list {address} for {server.name} {limit:.0f} s after it was "
                              "bound, so python-chi cannot reach the server by it. Run this again in a few minutes; "
                              "if it stays so, detach the address and run this again (dashboard: Compute > "
                              "Instances, Disassociate Floating IP).")
        time.sleep(every)


def bring_up(profile: Variant, lease, user: str, wait: bool = True):
    """The server, ACTIVE, with a floating IP and SSH answering; returns the python-chi Server."""
    if lease.status != "ACTIVE":
        raise ServerError(f"lease {lease.name} is {lease.status}, not ACTIVE: a server can start only once it is. "
                          "Run this again when the lease has started.")
    name = server_name(user)
    server = new_server(profile, lease, name)
    server.submit(idempotent=True, wait_for_active=False, show=None)
    if wait:
        server.wait(show="text")
    else:
        server.refresh()
    if server.status == "ERROR":
        raise ServerError(
            f"server {name} is in ERROR (the host may have failed to deploy). Delete it "
            f"(`python -m chi_helpers release --user {user} ...` or the dashboard) and run this again; "
            "if it fails twice, reserve another host."
        )
    address = bound_floating_ip(server)
    if address:
        print(f"{name} already has floating IP {address}: keeping it")
    else:
        address = own_floating_ip(server)
        server.associate_floating_ip(address)
    wait_for_address(server, address)
    if profile.needs_security_groups:
        open_ports(server)
    server.check_connectivity(host=address)
    print(summary(server, address))
    return server


def summary(server, address: str) -> str:
    """The server in a line, and how to reach it from a terminal with the key python-chi made it with."""
    from chi import context

    from chi_helpers.chameleon import node_stack

    key = context.get("keypair_private_key") or "<your private key>"
    return (f"{server.name}: {server.status}, image {server.image_name}, address {address}\n"
            f"  a terminal on the node: {node_stack.ssh_command(address, key)}")
