"""The series' server on the reserved host: brought up once, reachable, and summarized (its public
address: floating_ip.py).

Named `node-mlflow-<user>`, from the variant's image, on the lease's reservation (a host for the
bare-metal variants, a flavor for the VM). Safe to run again: python-chi's idempotent submit
brings one up only if none of that name exists, and the floating IP the server has is reused.
"""

from __future__ import annotations

from contextlib import contextmanager

from chi_helpers.chameleon.floating_ip import bound_floating_ip, own_floating_ip, wait_for_address
from chi_helpers.chameleon.plan import SECURITY_GROUP_PORTS
from chi_helpers.variants import Variant


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
             "\"Unrestricted\", download its openrc file, and use it (--rc-file, or `source` it before you start Jupyter).")


def forbidden_read(error: Exception) -> str | None:
    """What Glance or Nova said when it refused a read (403), or None for any other error."""
    from glanceclient.exc import HTTPForbidden
    from novaclient.exceptions import Forbidden

    if isinstance(error, HTTPForbidden):
        return f"Glance refused to list images (403 Forbidden: {' '.join(str(error).split())})"
    if isinstance(error, Forbidden):
        return f"Nova refused to show the flavor's extra specs (403 Forbidden: {getattr(error, 'message', error)})"
    return None


@contextmanager
def explain_forbidden():
    """Around python-chi's `Server(...)`, which reads the image from Glance (and a flavor from Nova): a
    credential without the `reader` role is refused there, and this says what to do."""
    try:
        yield
    except Exception as error:
        refused = forbidden_read(error)
        if refused is None:
            raise
        raise ServerError(f"{refused}: {NO_READER}") from None


def new_server(profile: Variant, lease, name: str):
    """python-chi's Server for `name`: it looks the image up in Glance, and a flavor's reservation in Nova."""
    import chi.server

    with explain_forbidden():
        return chi.server.Server(name, image_name=profile.image, **placement(profile, lease))


def require_active(lease) -> None:
    """A server starts only on an ACTIVE lease: stop with when it starts, or what to do."""
    if lease is None:
        raise ServerError("there is no live lease of that name: run notebook 01 first (or check lease_name)")
    if lease.status != "ACTIVE":
        raise ServerError(f"lease {lease.name} is {lease.status}, not ACTIVE: a server can start only once it is. "
                          "Run this again when the lease has started.")


def check_not_error(server, user: str) -> None:
    """A server in ERROR (its host failed to deploy) cannot be used: say what to do."""
    if server.status == "ERROR":
        raise ServerError(
            f"server {server.name} is in ERROR (the host may have failed to deploy). Delete it "
            f"(`python -m chi_helpers release --user {user} ...` or the dashboard: Compute > Instances) and run "
            "this again; if it fails twice, reserve another host."
        )


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


def bring_up(profile: Variant, lease, user: str, wait: bool = True):
    """The server, ACTIVE, with a floating IP and SSH answering; returns the python-chi Server. The same
    steps as notebook 02's cells, in one call, for the tests that drive each refusal against the twin."""
    require_active(lease)
    name = server_name(user)
    server = new_server(profile, lease, name)
    server.submit(idempotent=True, wait_for_active=False, show=None)
    if wait:
        server.wait(show="text")
    else:
        server.refresh()
    check_not_error(server, user)
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
