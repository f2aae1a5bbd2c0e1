"""Reserving the variant's GPU host on Chameleon through python-chi: the time block, free windows, the lease.

A lease is a block of `hours` that starts on the hour and ends ten minutes before an hour, in
UTC. Either the next such block, or the first one the host is free for, found from its
allocations in Blazar. `submit` is idempotent by lease name, and refuses a lease of that name
that reserves another host.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone

from chi_helpers import parameters
from chi_helpers.variants import Variant

GAP = timedelta(minutes=10)  # a lease ends this long before the hour another may start on


class ReservationError(RuntimeError):
    """A lease cannot be made or used; the message says why and what to do."""


def _blazar():
    # The Blazar client python-chi's lease module uses (one place to patch in the tests, as python-chi's own do).
    import chi.lease

    return chi.lease.blazar()


def next_hour(moment: datetime) -> datetime:
    """The first full hour at or after `moment`."""
    floor = moment.replace(minute=0, second=0, microsecond=0)
    return floor if floor == moment else floor + timedelta(hours=1)


def block(start: datetime, hours: int = 3) -> tuple[datetime, datetime]:
    """(start, end) of a block of `hours` from `start` (an hour), ending ten minutes before the hour."""
    return start, start + timedelta(hours=hours) - GAP


def next_block(now: datetime | None = None, hours: int = 3) -> tuple[datetime, datetime]:
    """The block that starts at the next full hour."""
    now = now or datetime.now(timezone.utc)
    return block(next_hour(now + timedelta(minutes=1)), hours)


def _parse(value: str) -> datetime:
    """A Blazar time ('2026-11-24T15:00:00.000000', UTC without a zone) as an aware datetime."""
    moment = datetime.fromisoformat(value.replace("Z", "").replace(" ", "T"))
    return moment.replace(tzinfo=timezone.utc) if moment.tzinfo is None else moment


def free_window(allocations: list[tuple[datetime, datetime]], hours: int = 3,
                now: datetime | None = None, earliest: datetime | None = None) -> tuple[datetime, datetime]:
    """The first block, on the hour, that overlaps none of the host's `allocations` (start, end):
    from `earliest` (the block a notebook already chose) or else from the next full hour."""
    now = now or datetime.now(timezone.utc)
    start = earliest or next_hour(now + timedelta(minutes=1))
    for busy_start, busy_end in sorted(allocations):
        if busy_end <= start:
            continue
        if block(start, hours)[1] <= busy_start:
            break
        start = next_hour(busy_end)
    return block(start, hours)


def find_host(node_name: str, profile: Variant) -> dict:
    """The Blazar host named `node_name`; checks it is of the variant's node type."""
    hosts = _blazar().host.list()
    named = [h for h in hosts if node_name in (h.get("node_name"), h.get("hypervisor_hostname"))]
    if not named:
        same_type = sorted(h.get("node_name") or h.get("hypervisor_hostname") for h in hosts
                           if h.get("node_type") == profile.node_type)
        shown = ", ".join(same_type[:20]) or "none found"
        raise ReservationError(
            f"no host named {node_name!r} at {profile.site}. {profile.node_type} hosts there: {shown}. "
            "Set node_name to one of them."
        )
    host = named[0]
    if host.get("node_type") and host["node_type"] != profile.node_type:
        raise ReservationError(
            f"host {node_name!r} is a {host['node_type']}, not a {profile.node_type} as the {profile.name} "
            f"variant needs: set node_name to a {profile.node_type} host, or variant to the one for this host."
        )
    return host


def host_allocations(host: dict) -> list[tuple[datetime, datetime]]:
    allocation = _blazar().host.get_allocation(host["id"]) or {}
    return [(_parse(r["start_date"]), _parse(r["end_date"])) for r in allocation.get("reservations", [])]


def reserved_host(lease) -> str | None:
    """The node name a lease's host reservation asks for, if it names one."""
    for reservation in getattr(lease, "node_reservations", []):
        try:
            properties = json.loads(reservation.get("resource_properties") or "[]")
        except ValueError:
            continue
        found = _find_node_name(properties)
        if found:
            return found
    return None


def _find_node_name(expression) -> str | None:
    if isinstance(expression, list):
        if len(expression) == 3 and expression[:2] == ["==", "$node_name"]:
            return expression[2]
        for part in expression:
            found = _find_node_name(part)
            if found:
                return found
    return None


LIVE = ("PENDING", "STARTING", "ACTIVE", "UPDATING", "ERROR")  # ERROR stays until someone deletes it


def existing_lease(name: str):
    """The lease called `name` that is not over, or None.

    Blazar gets leases by id; python-chi's `get_lease(name)` lists and matches names, and fails when
    two leases share one (an expired lease and today's, say). So this lists the project's leases
    itself, keeps the live ones of that name, and gets that one by id.
    """
    import chi.lease

    live = [lease for lease in _blazar().lease.list() if lease.get("name") == name and lease.get("status") in LIVE]
    if not live:
        return None
    if len(live) > 1:
        shown = ", ".join(f"{lease['id']} ({lease['status']}, from {lease['start_date']})" for lease in live)
        raise ReservationError(
            f"{len(live)} leases named {name!r} are live: {shown}. Delete the ones you do not want "
            "(dashboard: Reservations > Leases), or use another lease_name."
        )
    return chi.lease.get_lease(live[0]["id"])


def check_same_host(lease, lease_name: str, node_name: str) -> None:
    """A lease of this name that reserves another host is someone else's plan, not this one: refuse it."""
    other = reserved_host(lease)
    if other not in (None, node_name):
        raise ReservationError(
            f"a lease named {lease_name!r} already exists and reserves {other!r}, not "
            f"{node_name!r}. Use another lease_name, or set node_name = {other!r}."
        )


def check_block_is_free(node_name: str, wanted: tuple[datetime, datetime], first_free: tuple[datetime, datetime]) -> None:
    """Refuse a block the host's calendar shows taken, naming its first free block instead."""
    if first_free[0] != wanted[0]:
        raise ReservationError(
            f"{node_name} is taken from {wanted[0]:%Y-%m-%d %H:%M} to {wanted[1]:%H:%M} UTC (someone else's lease, "
            f"or maintenance). Its first free block is {first_free[0]:%Y-%m-%d %H:%M} to {first_free[1]:%H:%M} UTC: "
            'set when = "free" to reserve that one, or node_name to another host.'
        )


def describe(lease, now: datetime | None = None) -> str:
    """Where a lease stands, in a sentence; raises for a lease in ERROR."""
    now = now or datetime.now(timezone.utc)
    start = lease.start_date if isinstance(lease.start_date, datetime) else _parse(lease.start_date)
    end = lease.end_date if isinstance(lease.end_date, datetime) else _parse(lease.end_date)
    start, end = (t.replace(tzinfo=timezone.utc) if t.tzinfo is None else t for t in (start, end))
    if lease.status == "ERROR":
        raise ReservationError(
            f"lease {lease.name} is in ERROR: Chameleon could not give it its host. Release it "
            f"(`python -m chi_helpers release --lease-name {lease.name} ...`) and reserve again, at "
            "another time or on another host."
        )
    if lease.status == "PENDING":
        wait = start - now
        hours, minutes = divmod(max(int(wait.total_seconds()) // 60, 0), 60)
        return (f"lease {lease.name} is PENDING: it starts at {start:%Y-%m-%d %H:%M} UTC "
                f"(in {hours} h {minutes} min). Come back then; nothing else to do now.")
    if lease.status == "ACTIVE":
        return f"lease {lease.name} is ACTIVE until {end:%Y-%m-%d %H:%M} UTC."
    return f"lease {lease.name} is {lease.status} ({start:%H:%M}-{end:%H:%M} UTC)."


def submit(profile: Variant, lease_name: str, node_name: str | None, start: datetime, end: datetime):
    """Make the lease, or find the one of that name; returns the python-chi Lease.

    Checks the inputs before any call; a lease of that name that reserves another host is
    reported, not reused.
    """
    import chi.lease

    parameters.check_name("lease_name", lease_name, "mlflow_abc123")
    if profile.reservation == "node":
        parameters.check_name("node_name", node_name, profile.default_node or f"a {profile.node_type} host")
    found = existing_lease(lease_name)
    if found is not None:
        if profile.reservation == "node":
            check_same_host(found, lease_name, node_name)
        print(f"found lease {lease_name!r}: " + describe(found))
        return found
    if profile.reservation == "node":
        find_host(node_name, profile)
    lease = chi.lease.Lease(lease_name, start_date=start, end_date=end)
    if profile.reservation == "node":
        lease.add_node_reservation(amount=1, node_name=node_name)
    else:
        lease.add_flavor_reservation(name=profile.node_type, amount=1)
    # Not idempotent=True: python-chi would look the name up with get_lease, which fails when an old
    # lease has the same name; existing_lease above has already looked, the way Blazar allows.
    from chi.exception import ResourceError

    try:
        lease.submit(idempotent=False, wait_for_active=False)
    except ResourceError:  # python-chi logs Blazar's reason and raises "Unable to make lease"
        what = f"{node_name} is not free" if profile.reservation == "node" else f"no {profile.node_type} is free"
        raise ReservationError(
            f"Blazar would not make lease {lease_name!r}: {what} from {start:%Y-%m-%d %H:%M} to {end:%H:%M} UTC "
            "(someone else has it then, or it is under maintenance). Reserve its first free block instead: "
            'start, end = reservation.choose_window(profile, node_name, when="free"), or another host.'
        ) from None
    print(f"made lease {lease_name!r}: " + describe(lease))
    return lease


def choose_window(profile: Variant, node_name: str | None, hours: int = 3, when: str = "next",
                  now: datetime | None = None) -> tuple[datetime, datetime]:
    """`when="next"`: the block from the next hour; `"free"`: the host's first free block."""
    if when == "next" or profile.reservation != "node":
        return next_block(now, hours)
    if when != "free":
        raise ValueError(f"when must be 'next' or 'free', not {when!r}")
    return free_window(host_allocations(find_host(node_name, profile)), hours, now)
