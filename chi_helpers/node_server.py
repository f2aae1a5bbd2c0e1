"""The series' server on the reserved host: brought up once, reachable, and summarized.

Named `node-mlflow-<user>`, from the variant's image, on the lease's reservation (a host for the
bare-metal variants, a flavor for the VM). Safe to run again: python-chi's idempotent submit
brings one up only if none of that name exists, and the floating IP the server has is reused.
"""

from __future__ import annotations

from .chameleon_plan import SECURITY_GROUP_PORTS
from .variants import Variant


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
    """The VM sits behind security groups: open what the series needs, and nothing else."""
    from chi import network

    for name, port in SECURITY_GROUP_PORTS.items():
        group = network.SecurityGroup({"name": f"allow-{port}", "description": f"{name} for the MLflow series"})
        group.add_rule(direction="ingress", protocol="tcp", port=port)
        group.submit(idempotent=True)
        server.add_security_group(group.name)


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
        server.associate_floating_ip()
        address = server.get_floating_ip()
    if profile.needs_security_groups:
        open_ports(server)
    server.check_connectivity()
    print(summary(server, address))
    return server


def summary(server, address: str) -> str:
    return (f"{server.name}: {server.status}, image {server.image_name}, address {address}\n"
            f"  ssh cc@{address}")
