"""Reserving the variant's GPU host on Chameleon through python-chi: the time block, free windows, the lease.

A lease is a block of `hours` that starts on the hour and ends ten minutes before an hour, in
UTC. Either the next such block, or the first one the host is free for, found from its
allocations in Blazar. `submit` is idempotent by lease name, and refuses a lease of that name
that reserves another host.

When Blazar refuses a lease, python-chi 1.2.10 logs Blazar's words and raises only "Unable to make
lease" (chi/lease.py create_lease). `explain_refusals`, around python-chi's `Lease.submit`, reads
that log record and says what the refusal means and what to do.
"""

from __future__ import annotations

import json
import logging
import re
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone

from chi_helpers import parameters
from chi_helpers.variants import Variant

GAP = timedelta(minutes=10)  # a lease ends this long before the hour another may start on
UNRESTRICTED_HELP = ('make an application credential with "Unrestricted" ticked (the site\'s dashboard: '
                     "Identity > Application Credentials > Create Application Credential), download its RC file "
                     "and use that one")


class ReservationError(RuntimeError):
    """A lease cannot be made or used; the message says why and what to do."""


class NothingFree(ReservationError):
    """Blazar found no host (or no machine of the flavor) free for the block: a later one may have."""


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
    with explain_refusals(profile, lease_name, node_name, start, end):
        lease.submit(idempotent=False, wait_for_active=False)
    print(f"made lease {lease_name!r}: " + describe(lease))
    return lease


# --- Blazar's refusals ---------------------------------------------------------------------------

# What Chameleon's Blazar says, lower-cased as python-chi logs it, by what it means. Sources:
# blazar/manager/exceptions.py (too few resources: 500), blazar/api/v1/utils.py (any other failure,
# such as Keystone refusing the trust a lease needs to a restricted application credential: 500
# "Internal Server Error"), blazar/enforcement/filters/max_lease_duration_filter.py, and the
# portal's balance service behind ExternalServiceFilter (ChameleonCloud/portal
# balance_service/enforcement/: the project's and the user's SUs, the allocation's end).
REFUSALS = [
    ("taken", re.compile(r"not enough (hosts|resources) available|not enough unreserved")),
    ("credential", re.compile(r"internal server error")),
    ("too-long", re.compile(r"lease duration of (?P<duration>[\d.]+) seconds must be less than or equal to the "
                            r"maximum lease duration of (?P<limit>[\d.]+) seconds")),
    ("past", re.compile(r"start date must be later than current date")),
    ("user-budget", re.compile(r"reservation for user (?P<user>\S+) would spend (?P<need>[\d.]+) sus, "
                               r"only (?P<left>-?[\d.]+) left in user budget")),
    ("allocation", re.compile(r"reservation for project (?P<project>\S+) would spend (?P<need>[\d.]+) sus, "
                              r"only (?P<left>-?[\d.]+) left")),
    ("allocation-ends", re.compile(r"cannot create a lease beyond chameleon project expiration date")),
    ("allocation-check", re.compile(r"external service enforcement filter denied the request")),
]


@dataclass(frozen=True)
class Refusal:
    kind: str  # one of REFUSALS' kinds, "other" (words not known here) or "unknown" (no words)
    said: str | None = None  # Blazar's words as python-chi logged them
    details: dict = field(default_factory=dict)  # the numbers and names in them


def read_refusal(logged: str | None) -> Refusal:
    """What python-chi's logged message of a refused lease means."""
    if not logged:
        return Refusal("unknown")
    for kind, pattern in REFUSALS:
        found = pattern.search(logged.lower())
        if found:
            return Refusal(kind, logged, found.groupdict())
    return Refusal("other", logged)


class _BlazarWords(logging.Handler):
    """Keeps the last error python-chi's lease module logs."""

    def __init__(self):
        super().__init__(logging.ERROR)
        self.last: str | None = None

    def emit(self, record: logging.LogRecord) -> None:
        self.last = record.getMessage()


@contextmanager
def explain_refusals(profile: Variant, lease_name: str, node_name: str | None, start: datetime, end: datetime):
    """Around python-chi's `Lease.submit`: its "Unable to make lease" becomes a ReservationError that
    says why Blazar refused and what to do."""
    from chi.exception import ResourceError

    words = _BlazarWords()
    logger = logging.getLogger("chi.lease")
    logger.addHandler(words)
    try:
        yield
    except ResourceError:
        refusal = read_refusal(words.last)
        kind = NothingFree if refusal.kind == "taken" else ReservationError
        raise kind(explain(refusal, profile, lease_name, node_name, start, end)) from None
    finally:
        logger.removeHandler(words)


def explain(refusal: Refusal, profile: Variant, lease_name: str, node_name: str | None, start: datetime,
            end: datetime) -> str:
    """A refusal in a sentence or two: what it means and what to do. Asks Blazar for the host's calendar
    (a taken host) or Keystone for the credential (a 500) where that makes the answer exact."""
    head = f"Blazar would not make lease {lease_name!r}: "
    words = refusal.said or ""
    words = words if len(words) <= 160 else words[:157] + "..."  # a refused query is long; its start says enough
    said = f' (Blazar: "{words}")' if words else ""
    explainer = _EXPLAINERS.get(refusal.kind)
    if explainer is None:
        if refusal.kind == "unknown":
            return head + ("python-chi gave no reason (nothing was logged). Run the cell again; if it fails the same "
                           "way, look for the lease on the dashboard (Reservations > Leases).")
        return head + f"{refusal.said}. That refusal is not one this series knows; the message is Blazar's own."
    return head + explainer(refusal, profile, node_name, start, end) + said


def _span(start: datetime, end: datetime) -> str:
    return f"from {start:%Y-%m-%d %H:%M} to {end:%H:%M} UTC"


def _taken(refusal, profile, node_name, start, end) -> str:
    if profile.reservation != "node":
        # Blazar keeps no calendar of a flavor's machines: notebook 01 with when = "free" asks it for
        # later blocks, an hour at a time.
        return (f"Chameleon has no {profile.node_type} left to reserve {_span(start, end)}. Set when = \"free\" in "
                "the parameters cell and run the notebook again: it asks for each later hour until one is free "
                "(the dashboard's Reservations page shows what is taken).")
    hours = round((end - start + GAP) / timedelta(hours=1))
    first = free_window(host_allocations(find_host(node_name, profile)), hours, earliest=start)
    if first[0] == start:  # the calendar shows no lease then, yet Blazar has no host
        return (f"Blazar has no free {node_name} {_span(start, end)}, though its calendar shows no lease then: it "
                f"may be under maintenance or not reservable now. Set node_name to another {profile.node_type} "
                "host, or try a later block.")
    return (f"{node_name} is taken {_span(start, end)} (reserved after the calendar check, or under maintenance). "
            f"Its first free block is {first[0]:%Y-%m-%d %H:%M} to {first[1]:%H:%M} UTC: set when = \"free\" and "
            f"run the calendar check and this cell again to reserve that one, or set node_name to another "
            f"{profile.node_type} host.")


def _application_credential() -> dict | None:
    """The application credential python-chi signed in with (`id`, `name`, `restricted`), if any."""
    from chi import context
    from keystoneauth1 import exceptions

    try:
        session = context.session()
        session = getattr(session, "session", session)  # python-chi hands out a keystoneauth Adapter
        return session.auth.get_access(session).application_credential  # the token it holds
    except (KeyError, AttributeError, exceptions.ClientException):
        return None  # another sign-in (the hub's, a password), or none to ask about


def _credential(refusal, profile, node_name, start, end) -> str:
    credential = _application_credential()
    blazar_500 = ("Blazar answered 500 Internal Server Error. Blazar makes a Keystone trust with your sign-in to "
                  "make a lease, and Keystone refuses that trust to a restricted application credential")
    if credential and credential.get("restricted"):
        return (f"{blazar_500}: your application credential {credential.get('name')!r} is restricted. To fix it, "
                f"{UNRESTRICTED_HELP}.")
    if credential:
        return (f"{blazar_500}, but your application credential {credential.get('name')!r} is unrestricted. Keystone "
                "2025.1 and later (since CVE-2026-43000) refuse trusts to every application credential unless the "
                "site allows it: sign in with your Chameleon account instead (the hub's Jupyter does), and if that "
                "fails too, ask Chameleon's help desk with the time it happened.")
    return (f"{blazar_500}; you did not sign in with one, so Blazar failed for another reason. Run the cell again "
            "in a few minutes; if it fails the same way, ask Chameleon's help desk with the time it happened.")


def _too_long(refusal, profile, node_name, start, end) -> str:
    limit = float(refusal.details["limit"]) / 3600
    span = end - start
    hours, minutes = divmod(int(span.total_seconds()) // 60, 60)
    return (f"it lasts {hours} h {minutes} min, and Chameleon allows at most {limit:.0f} hours ({limit / 24:.0f} "
            f"days) a lease. Set hours = {limit:.0f} or fewer in the parameters cell, and choose the block again.")


def _past(refusal, profile, node_name, start, end) -> str:
    return (f"its start, {start:%Y-%m-%d %H:%M} UTC, is already past: the hour turned between the cell that chose "
            "the block and this one. Run the cell under 'The time block' again (it takes the next full hour), then "
            "the checks and this cell.")


def _allocation(refusal, profile, node_name, start, end) -> str:
    need, left = float(refusal.details["need"]), float(refusal.details["left"])
    project = refusal.details["project"].upper()
    if left <= 0:
        return (f"your project {project} has no Service Units (SUs) left (the lease needs {need:.2f}): its allocation "
                "has ended, is used up, or was never made. Your project's PI renews or recharges it on "
                "chameleoncloud.org (the project's page); reserve again once it is active.")
    return (f"the lease needs {need:.2f} SUs and project {project} has only {left:.2f} left. Set fewer hours, or "
            "ask your project's PI to recharge the allocation on chameleoncloud.org.")


def _user_budget(refusal, profile, node_name, start, end) -> str:
    return (f"the lease needs {float(refusal.details['need']):.2f} SUs and your own budget in this project has "
            f"only {float(refusal.details['left']):.2f} left (your project's PI sets it). Set fewer hours, or ask "
            "the PI to raise your budget.")


def _allocation_ends(refusal, profile, node_name, start, end) -> str:
    return ("the lease would end after your project's allocation expires. End it earlier (fewer hours, or an "
            "earlier block), or ask your project's PI to renew the allocation on chameleoncloud.org.")


def _allocation_check(refusal, profile, node_name, start, end) -> str:
    return ("Chameleon's allocation check refused the lease without saying why. Check your project's allocation "
            "on chameleoncloud.org (is it active, with SUs left?), then reserve again.")


_EXPLAINERS = {
    "taken": _taken, "credential": _credential, "too-long": _too_long, "past": _past, "allocation": _allocation,
    "user-budget": _user_budget, "allocation-ends": _allocation_ends, "allocation-check": _allocation_check,
}


def choose_window(profile: Variant, node_name: str | None, hours: int = 3, when: str = "next",
                  now: datetime | None = None) -> tuple[datetime, datetime]:
    """`when="next"`: the block from the next hour; `"free"`: the host's first free block."""
    if when == "next" or profile.reservation != "node":
        return next_block(now, hours)
    if when != "free":
        raise ValueError(f"when must be 'next' or 'free', not {when!r}")
    return free_window(host_allocations(find_host(node_name, profile)), hours, now)


# --- choosing the block and the host (notebook 01) -----------------------------------------------

# chi-in-a-box's MaxLeaseDurationFilter allows 7 days; a block of 168 hours lasts 167 h 50 min, under it.
MAX_HOURS = 168
LEAD = timedelta(minutes=1)  # a start closer than this is past by the time Blazar reads it (as next_block)
_START = re.compile(r"(\d{4})-(\d{2})-(\d{2})[T ](\d{1,2}):(\d{2})(?::(\d{2}))?(?:\s*(?:Z|UTC))?", re.IGNORECASE)


def check_hours(hours) -> int:
    """`hours` as Blazar takes it: a whole number from 1 to MAX_HOURS."""
    if isinstance(hours, bool) or not isinstance(hours, int) or not 1 <= hours <= MAX_HOURS:
        raise parameters.ParameterError(
            f"hours = {hours!r} cannot be a lease: write a whole number of hours from 1 to {MAX_HOURS} "
            f"(Chameleon allows a lease {MAX_HOURS // 24} days at most), such as hours = 3."
        )
    return hours


def choose_start(when: str, hours: int, now: datetime | None = None) -> tuple[datetime, datetime] | None:
    """The block notebook 01's `when` asks for: "next" (from the next full hour), "free" (None: the
    caller takes the host's first free block) or a start in UTC ("2026-12-06 14:00", "2026-12-06T14:00",
    with or without "Z" or " UTC"). Refuses, saying what to write instead, a start it cannot read,
    one not on the hour, one past or under a minute away, and hours Blazar would refuse."""
    hours = check_hours(hours)
    now = now or datetime.now(timezone.utc)
    soonest = next_block(now, hours)[0]
    keyword = when.strip().lower() if isinstance(when, str) else None
    if keyword == "next":
        return next_block(now, hours)
    if keyword == "free":
        return None
    start = _read_start(when, soonest)
    if start < now + LEAD:
        state = "is already past" if start <= now else "is less than a minute away"
        raise parameters.ParameterError(
            f"when = {when!r} {state} (now {now:%Y-%m-%d %H:%M} UTC): write a later hour, such as "
            f'when = "{soonest:%Y-%m-%d %H:%M}", or when = "next" for the block from the next full hour.'
        )
    if (start.minute, start.second) != (0, 0):
        earlier = start.replace(minute=0, second=0)
        nearest = [t for t in (earlier, earlier + timedelta(hours=1)) if t >= now + LEAD]
        shown = " or ".join(f'when = "{t:%Y-%m-%d %H:%M}"' for t in nearest)
        at = f"{start:%H:%M}" if start.second == 0 else f"{start:%H:%M:%S}"
        raise parameters.ParameterError(
            f"when = {when!r} starts at {at}, and a lease starts on the hour (XX:00 UTC): write {shown}."
        )
    return block(start, hours)


def _read_start(when, example: datetime) -> datetime:
    """`when` as a UTC datetime, or a ParameterError that shows the forms it takes."""
    forms = (f'write when = "next" (the block from the next full hour), "free" (the host\'s first free '
             f'block) or a start in UTC such as "{example:%Y-%m-%d %H:%M}"')
    found = _START.fullmatch(when.strip()) if isinstance(when, str) else None
    if found is None:
        raise parameters.ParameterError(f"when = {when!r} is not a start this notebook can read: {forms}.")
    year, month, day, hour, minute, second = (int(part or 0) for part in found.groups())
    try:
        return datetime(year, month, day, hour, minute, second, tzinfo=timezone.utc)
    except ValueError as error:  # a 30 February, a 24:00
        raise parameters.ParameterError(f"when = {when!r} names no such time ({error}): {forms}.") from None


def _host_name(host: dict) -> str:
    return host.get("node_name") or host.get("hypervisor_hostname")


def hosts_with_free_blocks(profile: Variant, hours: int, earliest: datetime,
                           limit: int | None = None) -> list[tuple[str, tuple[datetime, datetime]]]:
    """Each reservable host of the variant's node type at the site, with its first free block of
    `hours` from `earliest` (an hour; a later minute counts from the next one), soonest first, then by
    name; the first `limit` of them. A host whose calendar cannot be read is left out (and logged)."""
    from blazarclient.exception import BlazarClientException
    from keystoneauth1.exceptions import ClientException

    if profile.reservation != "node":
        raise ValueError(
            f"the {profile.name} variant reserves the VM flavor {profile.node_type}, and a flavor has no host "
            "list: Blazar takes any free machine of it. Use choose_start and submit without a host."
        )
    hours = check_hours(hours)
    earliest = next_hour(earliest if earliest.tzinfo else earliest.replace(tzinfo=timezone.utc))
    # Blazar only places leases on reservable, enabled hosts: the others have no block to offer.
    hosts = [h for h in _blazar().host.list()
             if h.get("node_type") == profile.node_type and h.get("reservable", True) and not h.get("disabled")]
    rows = []
    for host in hosts:
        try:
            busy = host_allocations(host)
        except (BlazarClientException, ClientException) as error:
            logging.getLogger(__name__).warning("left out %s: its calendar could not be read (%s)",
                                                _host_name(host), error)
            continue
        rows.append((_host_name(host), free_window(busy, hours, earliest=earliest)))
    rows.sort(key=lambda row: (row[1][0], row[0]))
    return rows if limit is None else rows[:limit]


def _show_block(start: datetime, end: datetime) -> str:
    # A block that runs past midnight (or for days) names the day it ends on.
    until = f"{end:%H:%M}" if end.date() == start.date() else f"{end:%Y-%m-%d %H:%M}"
    return f"{start:%Y-%m-%d %H:%M} to {until} UTC"


def show_hosts(rows: list[tuple[str, tuple[datetime, datetime]]], chosen: str | None = None) -> str:
    """hosts_with_free_blocks' rows as a table for the notebook to print; `*` marks `chosen` (node_name)."""
    if not rows:
        return "no host to show: none of this node type could be read at this site."
    width = max(len("host"), *(len(name) for name, _ in rows))
    lines = [f"  {'host':<{width}}  first free block"]
    for name, (start, end) in rows:
        lines.append(f"{'*' if name == chosen else ' '} {name:<{width}}  {_show_block(start, end)}")
    if chosen and chosen not in (name for name, _ in rows):
        lines.append(f"(node_name {chosen!r} is not in this list)")
    return "\n".join(lines)
