"""The server's public address: a floating IP of its own, bound through Neutron, and seen by Nova.

python-chi's `associate_floating_ip()` takes the project's first unbound address, which in a class's
shared project may be a classmate's; and its SSH reads the address from Nova, which lists it only
seconds after Neutron binds it. Neutron refuses a new address when the site's pool or the project's
quota is used up: the error says what to do.
"""

from __future__ import annotations

import time


class FloatingIPError(RuntimeError):
    """No address to be had, or none seen; the message says what to do."""


# Nova lists a floating IP seconds after Neutron binds it (Neutron's batched notice refreshes Nova's cache);
# should that notice be lost, Nova's periodic refresh (heal_instance_info_cache_interval, 60 s) catches up.
ADDRESS_WAIT_SECONDS = 120

FREE_ONE = ("Release a floating IP that no one uses (dashboard: Network > Floating IPs, 'Release Floating IP' on "
            "an address mapped to no instance; ask your class first: the project is shared), or ask your "
            "instructor; then run this again.")


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
        raise FloatingIPError(no_floating_ip(refused, held)) from None
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


def _of(server) -> list[dict]:
    """Neutron's floating IPs of the server: bound to its ports, or made for it and not bound yet (the
    description own_floating_ip gives them), by address."""
    from chi.network import neutron

    client = neutron()
    ports = {p["id"] for p in client.list_ports(device_id=server.id)["ports"]}
    mark = f"mlflow series: {server.name}"
    return sorted((ip for ip in client.list_floatingips()["floatingips"]
                   if ip.get("port_id") in ports or (ip.get("description") == mark and not ip.get("port_id"))),
                  key=lambda ip: ip["floating_ip_address"])


def bound_floating_ip(server) -> str | None:
    """The floating IP Neutron has bound to one of the server's ports. Nova's `addresses`, which
    `server.get_floating_ip()` reads, show it only seconds after it is bound."""
    return next((ip["floating_ip_address"] for ip in _of(server) if ip.get("port_id")), None)


def wait_for_address(server, address: str, limit: float = ADDRESS_WAIT_SECONDS, every: float = 0.5) -> None:
    """Until Nova lists `address` for the server: python-chi's SSH and checks take the address from there."""
    if address in server.get_all_floating_ips():
        return
    print(f"waiting for Nova to list {address} for {server.name} (Neutron bound it; Nova hears within seconds)")
    deadline = time.monotonic() + limit
    while address not in server.get_all_floating_ips():
        if time.monotonic() > deadline:
            raise FloatingIPError(f"Nova still does not list {address} for {server.name} {limit:.0f} s after it was "
                              "bound, so python-chi cannot reach the server by it. Run this again in a few minutes; "
                              "if it stays so, detach the address and run this again (dashboard: Compute > "
                              "Instances, Disassociate Floating IP).")
        time.sleep(every)


def held_by(server) -> list[str]:
    """What release frees: the server's floating IPs from Neutron, bound or not yet. Nova's `addresses`
    miss one bound seconds ago, before its cache refresh."""
    return [ip["floating_ip_address"] for ip in _of(server)]
