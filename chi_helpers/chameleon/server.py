"""The series' server on the reserved host: brought up once, reachable, and summarized.

Named `node-mlflow-<user>`, from the variant's image, on the lease's reservation (a host for the
bare-metal variants, a flavor for the VM). Safe to run again: python-chi's idempotent submit
brings one up only if none of that name exists, and the floating IP the server has is reused.
"""

from __future__ import annotations

from chi_helpers.chameleon.plan import SECURITY_GROUP_PORTS
from chi_helpers.variants import Variant


class ServerError(RuntimeError):
    """The server cannot be used; the message says what to do."""


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
        server.add_security_group(group["id"])  # by id: a shared project may hold two groups of that name


def own_floating_ip(server) -> str:
    """A floating IP that is this server's: python-chi's default takes the project's first unbound one,
    which in a shared project may be a classmate's. Ours carries the server's name in its description."""
    from chi.network import get_network_id, neutron

    client = neutron()
    mark = f"mlflow series: {server.name}"
    mine = [ip for ip in client.list_floatingips()["floatingips"] if ip.get("description") == mark and ip["port_id"] is None]
    if mine:
        return mine[0]["floating_ip_address"]
    made = client.create_floatingip({"floatingip": {"floating_network_id": get_network_id("public"), "description": mark}})
    return made["floatingip"]["floating_ip_address"]


def bring_up(profile: Variant, lease, user: str, wait: bool = True):
    """The server, ACTIVE, with a floating IP and SSH answering; returns the python-chi Server."""
    import chi.server

    if lease.status != "ACTIVE":
        raise ServerError(f"lease {lease.name} is {lease.status}, not ACTIVE: a server can start only once it is. "
                          "Run this again when the lease has started.")
    name = server_name(user)
    server = chi.server.Server(name, image_name=profile.image, **placement(profile, lease))
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
    address = server.get_floating_ip()
    if address:
        print(f"{name} already has floating IP {address}: keeping it")
    else:
        server.associate_floating_ip(own_floating_ip(server))
        address = server.get_floating_ip()
    if profile.needs_security_groups:
        open_ports(server)
    server.check_connectivity()
    print(summary(server, address))
    return server


def summary(server, address: str) -> str:
    return (f"{server.name}: {server.status}, image {server.image_name}, address {address}\n"
            f"  ssh cc@{address}")
