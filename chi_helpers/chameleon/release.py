"""Releasing everything the series reserved: the stack, the server, its floating IP, the lease.

Safe to run twice, and when some of them are already gone: each part says what it did or found.
Calls python-chi's nova, neutron and Blazar clients (as `server.delete_server`,
`network.deallocate_floating_ip` and `Lease.delete` do).
"""

from __future__ import annotations

from chi_helpers import parameters
from chi_helpers.chameleon import floating_ip, node_stack
from chi_helpers.chameleon import reservation


def _ssh_run(address: str, command: str) -> None:
    """Run a command on the node as `cc` with the key python-chi is set up with."""
    from chi import context
    from fabric import Connection

    key = context.get("keypair_private_key")
    with Connection(address, user="cc", connect_kwargs={"key_filename": key} if key else {}) as connection:
        connection.run(command, hide=True, timeout=120)


def release(lease_name: str, user: str, stop_stack: bool = True, say=print) -> dict[str, str]:
    """Stop the stack, delete `node-mlflow-<user>`, release its floating IP, end the lease."""
    import chi.lease
    import chi.network
    import chi.server
    from chi.exception import CHIValueError

    parameters.check_name("lease_name", lease_name, "mlflow_abc123")
    parameters.check_name("user", user, "abc123")
    outcome: dict[str, str] = {}
    name = f"node-mlflow-{user}"
    nova = chi.server.nova()
    servers = [s for s in nova.servers.list() if s.name == name]
    if not servers:
        outcome["server"] = f"no server named {name}: nothing to delete"
        outcome["floating_ip"] = "no server, so no floating IP of it to release"
    for server in servers:
        addresses = floating_ip.held_by(server)
        if stop_stack and addresses:
            try:
                for command in node_stack.stop_commands():
                    _ssh_run(addresses[0], command)
                outcome["stack"] = f"stopped the containers on {addresses[0]}"
            except Exception as error:  # unreachable, already stopped...: deleting the server stops them anyway
                outcome["stack"] = f"could not stop the containers ({type(error).__name__}: {error}); deleting the server stops them"
        nova.servers.delete(server.id)
        outcome["server"] = f"deleted server {name}"
        released = []
        for address in addresses:
            try:
                chi.network.deallocate_floating_ip(address)
                released.append(f"released {address}")
            except CHIValueError:
                released.append(f"{address} was already released")
        outcome["floating_ip"] = "; ".join(released) or "the server had no floating IP"
    lease = reservation.existing_lease(lease_name)
    if lease is None:
        outcome["lease"] = f"no lease named {lease_name}: nothing to end"
    else:
        lease.delete()
        outcome["lease"] = f"ended lease {lease_name}"
    for part, text in outcome.items():
        say(f"{part:12} {text}")
    return outcome
