"""Blazar, the reservation service (API v1), as python-chi 1.2.10 and chameleon-blazarclient 3.6.5 use it.

Written from Blazar's code and documentation (upstream and Chameleon's fork, `chameleoncloud/2023.1`),
not from what the series' helpers expect. What it does as Blazar does:

- Leases belong to the token's project; a project lists and gets only its own. A lease is got by
  id only: `GET /leases/<name>` is 404 ("Object with {'lease_id': ...} not found"), so python-chi
  lists leases and matches names. Names need not be unique (Blazar dropped that constraint).
- `POST /leases` takes `name`, `start_date`, `end_date` ("YYYY-MM-DD HH:MM" UTC, or "now"),
  `reservations` and `events`, answers 201 with the lease in PENDING; from then on its status
  follows the world's clock: ACTIVE from `start_date`, TERMINATED from `end_date` (reservations
  pending -> active -> deleted). Dates are answered as "YYYY-MM-DDTHH:MM:SS.ffffff",
  `created_at` as "YYYY-MM-DD HH:MM:SS".
- Errors are `{"error_code": <http status>, "error_message": ..., "error_name": <http status>}`
  (blazarclient shows "ERROR: <error_message>"). Too few free hosts is an HTTP 500, as every Blazar
  error without its own code is: "Not enough resources available with query {...}" when a lease is
  made (Chameleon's fork shows the query it tried: `display_default_resource_properties`, on by
  default), "Not enough hosts available" when one is updated; bad dates and parameters are 400.
- Making a lease, in the order Chameleon's Blazar checks (blazar/api/v1/leases/service.py,
  blazar/manager/service.py create_lease): a Keystone trust made with the user's token (refused
  for a restricted application credential: Blazar then answers 500 "Internal Server Error"); the
  dates; the resources; then the enforcement filters chi-in-a-box enables: MaxLeaseDurationFilter
  (more than 7 days: 403) and ExternalServiceFilter (the portal's allocation check: 400, faults
  "no-allocation" and "allocation-used-up", since the twin keeps no accounts). A flavor with none
  left to reserve is the fault "flavor-exhausted".
- `physical:host` reservations pick `min`..`max` reservable hosts matching `resource_properties`
  (a JSON list such as `["==", "$node_name", "liqid01"]`, or `["and", [...], [...]]`) that have no
  allocation overlapping the lease, preferring hosts with no allocation at all.
- `flavor:instance` reservations (Blazar's flavor plugin) copy the base flavor into a new private
  Nova flavor whose id is the reservation id, named `reservation:<id>`, with the extra specs
  `aggregate_instance_extra_specs:reservation` and `resources:CUSTOM_RESERVATION_<ID>`; the
  project gets access to it when the lease starts, and it is deleted when the lease ends.
- `DELETE /leases/<id>` answers 200 `{}` (Chameleon's fork; upstream answers 204) and frees the hosts.
- Chameleon's fork's allocation API: `GET /os-hosts/allocations` and `/os-hosts/<id>/allocation`,
  each reservation on a host as `{"id", "lease_id", "start_date", "end_date", "extras": {}}`, only
  those that have not ended.

It also serves the part of Chameleon's reference API (`<CHI_RESOURCE_API_URL>/sites/<site>/clusters/
chameleon/nodes.json`) that `chi.hardware.get_nodes` reads, made from the same hosts.

The Nova twin decides whether a server may start on a reservation with `reservation()` and
`lease_status()`; the state is `world.data["leases"][lease_id]`: the lease as Blazar answers it, plus
private keys (starting with "_") that are never sent.
"""

from __future__ import annotations

import json
import uuid
from datetime import datetime, timedelta, timezone

from . import keystone
from .web import Fault, Reply, Request, Service, reply

API_DATE = "%Y-%m-%d %H:%M"  # what clients send
LEASE_DATE = "%Y-%m-%dT%H:%M:%S.%f"  # how Blazar answers a lease's dates
STAMP = "%Y-%m-%d %H:%M:%S"  # created_at / updated_at
BEFORE_END = timedelta(minutes=60)  # Blazar's default minutes_before_end_lease
# chi-in-a-box kolla/defaults.yml blazar_default_max_lease_duration (MaxLeaseDurationFilter), 7 days
MAX_LEASE_SECONDS = 7 * 24 * 3600
DEFAULT_SU_FACTOR = 1.0  # the portal's balance_service/enforcement/usage_enforcement.py
HOST_TYPE, FLAVOR_TYPE = "physical:host", "flavor:instance"
SUPPORTED_TYPES = (HOST_TYPE, FLAVOR_TYPE)
RESERVATION_SPEC = "aggregate_instance_extra_specs:reservation"
HOST_COLUMNS = ("id", "vcpus", "cpu_info", "hypervisor_type", "hypervisor_version", "hypervisor_hostname",
                "service_name", "memory_mb", "local_gb", "status", "availability_zone", "trust_id",
                "reservable", "disabled", "created_at", "updated_at")


class BlazarFault(Fault):
    """A refusal as Blazar words it; `name` is what it sends as `error_name` (usually the code)."""

    def __init__(self, status: int, message: str, name=None):
        super().__init__(status, message)
        self.name = status if name is None else name


def _internal_error() -> BlazarFault:
    # What Blazar answers for any exception that is not one of its own (it hides the message).
    return BlazarFault(500, "Internal Server Error", "INTERNAL_SERVER_ERROR")


def _not_enough_hosts() -> BlazarFault:
    # What a host plugin raises itself (updating a lease); making one gets _not_enough_resources.
    return BlazarFault(500, "Not enough hosts available")


def _not_enough_resources(query: dict) -> BlazarFault:
    # blazar/manager/service.py _allocation_candidates: NotEnoughResourcesDefaultProperties(params=str(res))
    return BlazarFault(500, f"Not enough resources available with query {query}")


def _query(item: dict, start: datetime, end: datetime, project: str, count: tuple[int, int] | None = None) -> dict:
    """The reservation as Blazar's manager tried it: the request, its dates and project, and what
    the host plugin's _check_params adds (count_range, before_end, on_start)."""
    query = {**item, "start_date": start, "end_date": end, "project_id": project}
    if count is not None:
        query["count_range"] = f"{count[0]}-{count[1]}"
        query.setdefault("before_end", "default")
        query.setdefault("on_start", "default")
    return query


# --- time ---------------------------------------------------------------------------------------


def _now(world) -> datetime:
    """The world's time, as a naive UTC datetime (Blazar keeps naive UTC times)."""
    return world.now().astimezone(timezone.utc).replace(tzinfo=None)


def _stamp(world) -> str:
    return _now(world).strftime(STAMP)


def _date(value: str) -> datetime:
    return datetime.strptime(value, LEASE_DATE)


def _parse_request_date(value, now: datetime) -> datetime:
    if value == "now":
        return now
    try:
        return datetime.strptime(value, API_DATE)
    except (TypeError, ValueError):
        raise BlazarFault(400, f"{value} is an invalid date. Required format: {API_DATE}") from None


def _minute(world) -> datetime:
    """Now, to the minute, as Blazar compares requested dates."""
    return _now(world).replace(second=0, microsecond=0)


# --- what is sent ---------------------------------------------------------------------------------


def public(value):
    """`value` without its private ("_"-prefixed) keys, at any depth."""
    if isinstance(value, dict):
        return {k: public(v) for k, v in value.items() if not k.startswith("_")}
    if isinstance(value, list):
        return [public(v) for v in value]
    return value


# --- leases: status from the clock ---------------------------------------------------------------


def _set_event(lease: dict, kind: str, status: str, world) -> None:
    for event in lease["events"]:
        if event["event_type"] == kind and event["status"] == "UNDONE":
            event["status"] = status
            event["updated_at"] = _stamp(world)


def _release_flavors(world, lease: dict) -> None:
    for reservation in lease["reservations"]:
        if reservation["resource_type"] == FLAVOR_TYPE:
            if world.data["flavors"].pop(reservation["id"], None) is not None:
                world.record("blazar", f"deleted flavor reservation:{reservation['id']} (lease {lease['name']} ended)")


def lease_status(world, lease: dict) -> str:
    """Bring `lease` up to date with the world's clock (as Blazar's start/end events would) and
    return its status: PENDING, ACTIVE, TERMINATED or ERROR."""
    with world.lock:  # re-entrant: the services already hold it; Nova's twin may not
        return _advance(world, lease)


def _advance(world, lease: dict) -> str:
    start, end = _date(lease["start_date"]), _date(lease["end_date"])
    # Waits are shortened from the lease's creation (a record without one waits the full time).
    created = datetime.strptime(lease["created_at"], STAMP) if lease.get("created_at") else None
    status = lease["status"]
    if status == "PENDING" and world.reached(start, created):
        if lease.get("_fails_to_start"):
            lease["status"] = "ERROR"
            for reservation in lease["reservations"]:
                reservation["status"] = "error"
                reservation["updated_at"] = _stamp(world)
            _set_event(lease, "start_lease", "ERROR", world)
            world.record("blazar", f"lease {lease['name']} ({lease['id']}) could not start: ERROR")
        else:
            lease["status"] = "ACTIVE"
            for reservation in lease["reservations"]:
                reservation["status"] = "active"
                reservation["updated_at"] = _stamp(world)
                if reservation["resource_type"] == FLAVOR_TYPE:
                    flavor = world.data["flavors"].get(reservation["id"])
                    if flavor is not None and lease["project_id"] not in flavor["_access"]:
                        flavor["_access"].append(lease["project_id"])
            _set_event(lease, "start_lease", "DONE", world)
            world.record("blazar", f"lease {lease['name']} ({lease['id']}) started: ACTIVE")
        lease["updated_at"] = _stamp(world)
    if lease["status"] in ("ACTIVE", "ERROR") and world.reached(end - BEFORE_END, created, end=True):
        _set_event(lease, "before_end_lease", "DONE", world)
    if world.reached(end, created, end=True) and not lease.get("_ended"):
        lease["_ended"] = True
        if lease["status"] != "ERROR":  # a lease in ERROR stays so; its hosts are freed all the same
            lease["status"] = "TERMINATED"
        for reservation in lease["reservations"]:
            reservation["status"] = "deleted"
            reservation["updated_at"] = _stamp(world)
        _set_event(lease, "start_lease", "DONE", world)
        _set_event(lease, "before_end_lease", "DONE", world)
        _set_event(lease, "end_lease", "DONE", world)
        _release_flavors(world, lease)
        lease["updated_at"] = _stamp(world)
        world.record("blazar", f"lease {lease['name']} ({lease['id']}) ended: {lease['status']}")
    return lease["status"]


def reservation(world, reservation_id: str):
    """(lease, reservation) for a reservation id, both brought up to date; None if there is none
    (never made, or its lease deleted)."""
    with world.lock:
        for lease in world.data["leases"].values():
            for item in lease["reservations"]:
                if item["id"] == reservation_id:
                    lease_status(world, lease)
                    return lease, item
    return None


# --- hosts: matching and allocations -------------------------------------------------------------


def _conditions(requirements) -> list[tuple[str, str, str]]:
    """Blazar's reading of resource_properties / hypervisor_properties: [(key, op, value), ...]."""
    if isinstance(requirements, str):
        text = requirements
        try:
            requirements = json.loads(requirements or "[]")
        except ValueError:
            raise BlazarFault(400, f"Malformed requirements {text}") from None
    if (isinstance(requirements, list) and len(requirements) == 3
            and all(isinstance(part, str) for part in requirements) and requirements[0] != "and"):
        op, key, value = requirements
        return [(key[1:] if key.startswith("$") else key, "==" if op == "=" else op, value)]
    if isinstance(requirements, list) and requirements and requirements[0] == "and":
        # As Blazar: each part of an "and" gives its first condition (no deeper nesting, no "or").
        return [_conditions(part)[0] for part in requirements[1:]]
    if isinstance(requirements, list) and not requirements:
        return []
    raise BlazarFault(400, f"Malformed requirements {requirements}")


COMPARE = {
    "==": lambda a, b: a == b, "!=": lambda a, b: a != b, "<": lambda a, b: a < b,
    ">": lambda a, b: a > b, "<=": lambda a, b: a <= b, ">=": lambda a, b: a >= b,
}


def _matches(host: dict, key: str, op: str, value: str) -> bool:
    if key in HOST_COLUMNS:  # a column: compared as the database would
        have = host.get(key)
        if op == "in":
            return str(have) in value.split(",")
        if op not in COMPARE:
            raise _internal_error()
        if isinstance(have, (int, float)) and not isinstance(have, bool):
            try:
                return COMPARE[op](have, float(value))
            except ValueError:
                return False
        return COMPARE[op](str(have), value)
    if key not in host:  # an extra capability this host lacks
        return False
    if op not in COMPARE:
        raise _internal_error()
    return COMPARE[op](str(host[key]), value)  # extra capabilities are strings, compared as strings


def _filter_hosts(world, conditions) -> list[dict]:
    hosts = [h for h in world.data["hosts"].values() if h.get("reservable") and not h.get("disabled")]
    for key, op, value in conditions:
        if key not in HOST_COLUMNS and not any(key in h for h in world.data["hosts"].values()):
            raise BlazarFault(500, f"{key} ComputeHostExtraCapability was not found")
        hosts = [h for h in hosts if _matches(h, key, op, value)]
    return hosts


def _host_allocations(world, host_id: str, skip_reservation: str | None = None):
    """[(lease, reservation)] holding `host_id` (reservations not deleted), every project's."""
    found = []
    for lease in world.data["leases"].values():
        lease_status(world, lease)
        for item in lease["reservations"]:
            if (item["id"] != skip_reservation and item["status"] != "deleted"
                    and host_id in item.get("_host_ids", [])):
                found.append((lease, item))
    return found


def _free(world, host_id: str, start: datetime, end: datetime, skip_reservation: str | None = None) -> bool:
    return all(not (_date(lease["start_date"]) < end and start < _date(lease["end_date"]))
               for lease, _ in _host_allocations(world, host_id, skip_reservation))


def _int_param(values: dict, name: str) -> int:
    value = values.get(name)
    if value is None:
        raise BlazarFault(400, f"Missing parameter {name}")
    try:
        return int(str(value).strip())
    except ValueError:
        raise BlazarFault(400, f"Malformed parameter {name}") from None


def _pick_hosts(world, values: dict, start: datetime, end: datetime, taken: set[str],
                project: str) -> tuple[list[str], int, int]:
    low, high = _int_param(values, "min"), _int_param(values, "max")
    if low <= 0 or high <= 0:
        raise BlazarFault(400, "Malformed parameter min and max (must be greater than or equal to 1)")
    if high < low:
        raise BlazarFault(400, "Invalid values for min/max of hosts. Max must be equal to or larger than min.")
    for name in ("hypervisor_properties", "resource_properties"):
        if name not in values:
            raise BlazarFault(400, f"Missing parameter {name}")
    conditions = _conditions(values.get("hypervisor_properties") or "") + _conditions(values.get("resource_properties") or "")
    never_allocated, free = [], []
    for host in _filter_hosts(world, conditions):
        if host["id"] in taken:
            continue
        if not _host_allocations(world, host["id"]):
            never_allocated.append(host["id"])
        elif _free(world, host["id"], start, end):
            free.append(host["id"])
    if len(free) + len(never_allocated) < low or world.take_fault("host-taken"):
        raise _not_enough_resources(_query(values, start, end, project, (low, high)))
    if len(never_allocated) >= low:
        return never_allocated[:high], low, high
    return (free + never_allocated)[:high], low, high


# --- the service ---------------------------------------------------------------------------------


class Blazar(Service):
    prefix = "/reservation/v1"
    name = "blazar"
    routes = [
        ("GET", "/leases", "list_leases"),
        ("POST", "/leases", "create_lease"),
        ("GET", "/leases/(?P<lease>[^/]+)", "get_lease"),
        ("PUT", "/leases/(?P<lease>[^/]+)", "update_lease"),
        ("DELETE", "/leases/(?P<lease>[^/]+)", "delete_lease"),
        ("GET", "/leases/(?P<lease>[^/]+)/hosts", "lease_hosts"),
        ("GET", "/leases/(?P<lease>[^/]+)/(?P<kind>networks|devices)", "lease_nothing"),
        ("GET", "/os-hosts", "list_hosts"),
        ("POST", "/os-hosts", "admin_only"),
        ("GET", "/os-hosts/allocations", "list_allocations"),
        ("GET", "/os-hosts/properties", "list_properties"),
        ("GET", "/os-hosts/(?P<host>[^/]+)", "get_host"),
        ("PUT", "/os-hosts/(?P<host>[^/]+)", "admin_only"),
        ("DELETE", "/os-hosts/(?P<host>[^/]+)", "admin_only"),
        ("GET", "/os-hosts/(?P<host>[^/]+)/allocation", "get_allocation"),
    ]

    def error_body(self, status, message):
        if status == 401:  # keystonemiddleware answers before Blazar sees the request
            return {"error": {"code": 401, "title": "Unauthorized", "message": message}}
        return {"error_code": status, "error_message": message, "error_name": status}

    def handle(self, request: Request) -> Reply:
        try:
            answer = super().handle(request)
        except BlazarFault as fault:
            answer = Reply(fault.status, {"error_code": fault.status, "error_message": fault.message,
                                          "error_name": fault.name})
        answer.headers.setdefault("OpenStack-API-Version", "reservation 1.0")
        answer.headers.setdefault("Vary", "OpenStack-API-Version")
        return answer

    # --- helpers --------------------------------------------------------------------------------

    def _project(self, request: Request, action: str) -> tuple[str, str]:
        token = request.token()
        project = (token.get("project") or {}).get("id")
        if not project:
            raise BlazarFault(403, f"Policy doesn't allow blazar:leases:{action} to be performed.")
        return project, token["user"]["id"]

    def _own_lease(self, request: Request, action: str) -> dict:
        project, _ = self._project(request, action)
        lease_id = request.param("lease")
        lease = self.world.data["leases"].get(lease_id)
        if lease is None or lease["project_id"] != project:
            raise BlazarFault(404, f"Object with {{'lease_id': '{lease_id}'}} not found")
        lease_status(self.world, lease)
        return lease

    # --- leases ---------------------------------------------------------------------------------

    def list_leases(self, request: Request):
        project, _ = self._project(request, "get")
        leases = [lease for lease in self.world.data["leases"].values() if lease["project_id"] == project]
        for lease in leases:
            lease_status(self.world, lease)
        return reply(200, {"leases": public(leases)})

    def get_lease(self, request: Request):
        return reply(200, {"lease": public(self._own_lease(request, "get"))})

    def lease_hosts(self, request: Request):
        lease = self._own_lease(request, "get")
        ids = [h for r in lease["reservations"] if r["status"] != "deleted" for h in r.get("_host_ids", [])]
        hosts = [{k: v for k, v in self.world.data["hosts"][h].items() if k in HOST_COLUMNS} for h in ids]
        return reply(200, {"hosts": hosts})

    def lease_nothing(self, request: Request):
        self._own_lease(request, "get")
        return reply(200, {request.param("kind"): []})

    def create_lease(self, request: Request):
        project, user = self._project(request, "post")
        values = request.json()
        if not isinstance(values, dict):
            raise BlazarFault(400, "Malformed parameter lease")
        trust = self._trust(request, project)  # before anything else is read: blazar/utils/trusts.py use_trust_auth
        missing = sorted({"name", "start_date", "end_date"} - set(values))
        if missing:
            raise BlazarFault(400, f"Missing parameter {', '.join(missing)}")
        wanted = values.get("reservations") or []
        for item in wanted:
            if "resource_type" not in item:
                raise BlazarFault(400, "Missing parameter resource_type")
        now = _minute(self.world)
        start = _parse_request_date(values["start_date"], now)
        end = _parse_request_date(values["end_date"], now)
        if start < now:
            raise BlazarFault(400, "Start date must be later than current date")
        if end <= start:
            raise BlazarFault(400, "End date must be later than start date.")
        for item in wanted:
            if item["resource_type"] not in SUPPORTED_TYPES:
                raise BlazarFault(500, f"The {item['resource_type']} resource type is not supported")

        lease_id, stamp = self.world.new_id(), _stamp(self.world)
        reservations, new_flavors, taken = [], [], set()
        for item in wanted:
            reservation_id = self.world.new_id()
            base = {"id": reservation_id, "lease_id": lease_id, "resource_id": self.world.new_id(),
                    "resource_type": item["resource_type"], "status": "pending", "missing_resources": False,
                    "resources_changed": False, "created_at": stamp, "updated_at": stamp}
            if item["resource_type"] == HOST_TYPE:
                host_ids, low, high = _pick_hosts(self.world, item, start, end, taken, project)
                taken.update(host_ids)
                base.update({"hypervisor_properties": item.get("hypervisor_properties"),
                             "resource_properties": item.get("resource_properties"),
                             "before_end": item.get("before_end", "default"),
                             "on_start": item.get("on_start", "default"), "min": low, "max": high,
                             "_host_ids": host_ids})
            else:
                flavor = self._reserved_flavor(item, reservation_id, project)
                if self.world.take_fault("flavor-exhausted"):  # the twin counts no KVM capacity
                    raise _not_enough_resources(_query(item, start, end, project))
                new_flavors.append(flavor)
                source = json.loads(flavor["_source"])
                base.update({"vcpus": source["vcpus"], "memory_mb": source["ram"], "disk_gb": source["disk"],
                             "amount": flavor["_amount"], "affinity": None, "resource_properties": flavor["_source"],
                             "flavor_id": reservation_id, "aggregate_id": len(self.world.data["leases"]) + 100,
                             "server_group_id": None})
            reservations.append(base)
        self._enforce(project, start, end, reservations)

        events = [self._event(lease_id, "start_lease", start, stamp), self._event(lease_id, "end_lease", end, stamp)]
        before_end = values.get("before_end_date")
        if before_end:
            moment = _parse_request_date(before_end, now)
            if not start <= moment <= end:
                raise BlazarFault(403, "Datetime is out of lease limits")
        else:
            moment = max(end - BEFORE_END, start)
        events.append(self._event(lease_id, "before_end_lease", moment, stamp))

        lease = {
            "created_at": stamp, "updated_at": stamp, "id": lease_id, "name": values["name"], "user_id": user,
            "project_id": project, "start_date": start.strftime(LEASE_DATE), "end_date": end.strftime(LEASE_DATE),
            "trust_id": trust["id"], "status": "PENDING", "degraded": False,
            "reservations": reservations, "events": events,
        }
        if self.world.take_fault("lease-error"):
            lease["_fails_to_start"] = True
        for flavor in new_flavors:
            self.world.data["flavors"][flavor["id"]] = flavor
        self.world.data["leases"][lease_id] = lease
        hosts = [self.world.data["hosts"][h]["node_name"] for r in reservations for h in r.get("_host_ids", [])]
        self.world.record("blazar", f"lease {lease['name']} ({lease_id}) made for {start:%Y-%m-%d %H:%M}-"
                                    f"{end:%Y-%m-%d %H:%M}" + (f" on {', '.join(hosts)}" if hosts else "")
                                    + (" (it will go to ERROR: fault)" if lease.get("_fails_to_start") else ""))
        # Blazar answers with the lease as just stored: PENDING even when it starts now.
        answer = public(lease)
        lease_status(self.world, lease)
        return reply(201, {"lease": answer})

    def _trust(self, request: Request, project: str) -> dict:
        """The trust Blazar makes with the user's token (blazar/utils/trusts.py create_trust). Keystone's
        refusal is no Blazar exception, so Blazar answers its generic 500 (blazar/api/v1/utils.py)."""
        token = request.token()
        try:
            return keystone.create_trust(self.world, token, keystone.BLAZAR_USER, project,
                                         [role["name"] for role in token.get("roles", [])])
        except Fault as refused:
            self.world.record("blazar", f"lease refused: Keystone refused the trust ({refused.message})")
            raise _internal_error() from None

    def _enforce(self, project: str, start: datetime, end: datetime, reservations: list[dict]) -> None:
        """The enforcement filters chi-in-a-box enables, in order (kolla/node_custom_config/blazar.conf)."""
        duration = int((end - start).total_seconds())
        if duration > MAX_LEASE_SECONDS:
            # blazar/enforcement/filters/max_lease_duration_filter.py; create_lease re-raises its
            # MaxLeaseDurationException as NotAuthorized, whose code is 403.
            raise BlazarFault(403, f"Lease duration of {duration} seconds must be less than or equal to the "
                                   f"maximum lease duration of {MAX_LEASE_SECONDS} seconds.")
        short = "no-allocation" if self.world.take_fault("no-allocation") else (
            "allocation-used-up" if self.world.take_fault("allocation-used-up") else None)
        if short:
            # ExternalServiceFilter passes on the portal's 403 message as a 400: ChameleonCloud/portal
            # balance_service/enforcement/usage_enforcement.py check_usage_against_allocation (with no
            # active allocation the balance is 0).
            need = duration / 3600 * self._su_factor(reservations)
            left = 0.0 if short == "no-allocation" else need / 3
            name = self.world.data["projects"][project]["name"]  # the portal's charge code
            raise BlazarFault(400, f"Reservation for project {name} would spend {need:.2f} SUs, only {left:.2f} left")

    def _su_factor(self, reservations: list[dict]) -> float:
        """SUs an hour: each host's su_factor, or the default per reserved flavor instance."""
        total = 0.0
        for item in reservations:
            if item["resource_type"] == HOST_TYPE:
                total += sum(float(self.world.data["hosts"][h].get("su_factor") or DEFAULT_SU_FACTOR)
                             for h in item["_host_ids"])
            else:
                total += DEFAULT_SU_FACTOR * item["amount"]
        return total

    @staticmethod
    def _event(lease_id: str, kind: str, moment: datetime, stamp: str) -> dict:
        return {"id": str(uuid.uuid4()), "lease_id": lease_id, "event_type": kind,
                "time": moment.strftime(LEASE_DATE), "status": "UNDONE", "created_at": stamp, "updated_at": None}

    def _reserved_flavor(self, item: dict, reservation_id: str, project: str) -> dict:
        """The Nova flavor Blazar's flavor plugin makes for a flavor:instance reservation."""
        missing = sorted({"amount", "flavor_id", "affinity"} - set(item))
        if missing:
            raise BlazarFault(400, f"Missing parameter {','.join(missing)}")
        try:
            amount = int(str(item["amount"]))
            if amount < 1:
                raise ValueError
        except ValueError:
            raise BlazarFault(400, f"Invalid amount: {item['amount']}") from None
        source = self.world.data["flavors"].get(str(item["flavor_id"]))
        if source is not None and not source.get("os-flavor-access:is_public", True) \
                and project not in source.get("_access", []):
            source = None  # Blazar looks the flavor up with the user's token
        if source is None:
            raise _internal_error()  # novaclient's NotFound is not a Blazar exception
        if item.get("affinity") not in (None, "None", "none", ""):
            raise BlazarFault(409, "Affinity not supported yet")
        shown = {k: v for k, v in source.items() if not k.startswith("_") and k != "links"}
        shown["extra_specs"] = dict(source.get("extra_specs") or {})
        extra_specs = dict(shown["extra_specs"])
        extra_specs[RESERVATION_SPEC] = reservation_id
        extra_specs["resources:CUSTOM_RESERVATION_" + reservation_id.upper().replace("-", "_")] = "1"
        return {
            "id": reservation_id, "name": f"reservation:{reservation_id}", "vcpus": source["vcpus"],
            "ram": source["ram"], "disk": source["disk"],
            "OS-FLV-EXT-DATA:ephemeral": source.get("OS-FLV-EXT-DATA:ephemeral", 0),
            "swap": source.get("swap", ""), "rxtx_factor": source.get("rxtx_factor", 1.0),
            "os-flavor-access:is_public": False, "OS-FLV-DISABLED:disabled": False,
            "description": source.get("description"), "extra_specs": extra_specs,
            # private: who may use it (the project, once the lease starts), and what it came from
            "_access": [], "_project_id": project, "_reservation_id": reservation_id,
            "_base_flavor_id": source["id"], "_amount": amount, "_source": json.dumps(shown),
        }

    def update_lease(self, request: Request):
        lease = self._own_lease(request, "put")
        values = request.json()
        if not isinstance(values, dict):
            raise BlazarFault(400, "Malformed parameter lease")
        if not values:
            return reply(200, {"lease": public(lease)})
        if set(values) == {"name"}:
            lease["name"] = values["name"]
            lease["updated_at"] = _stamp(self.world)
            self.world.record("blazar", f"lease {lease['id']} renamed {values['name']}")
            return reply(200, {"lease": public(lease)})
        if any(r["resource_type"] == FLAVOR_TYPE for r in lease["reservations"]):
            raise BlazarFault(409, "Updating leases for 'flavor:instance' type reservations is not yet supported.")
        now = _minute(self.world)
        old_start, old_end = _date(lease["start_date"]), _date(lease["end_date"])
        start = _parse_request_date(values["start_date"], now) if "start_date" in values else old_start
        end = _parse_request_date(values["end_date"], now) if "end_date" in values else old_end
        if old_start < now and start != old_start:
            raise BlazarFault(400, "Cannot modify the start date of already started leases")
        if old_start > now and start < now:
            raise BlazarFault(400, "Start date must be later than current date")
        if old_end < now or lease.get("_ended"):
            raise BlazarFault(400, "Terminated leases can only be renamed")
        if end < now or end < start:
            raise BlazarFault(400, "End date must be later than current and start date")
        known = {r["id"] for r in lease["reservations"]}
        for item in values.get("reservations") or []:
            if "id" not in item:
                raise BlazarFault(400, "Missing parameter reservation ID")
            if item["id"] not in known:
                raise BlazarFault(400, f"Please enter valid reservation IDs. Invalid reservation IDs are: {item['id']}")
            if set(item) - {"id", "resource_type"}:
                # A limit of the twin, said plainly rather than ignored.
                raise BlazarFault(409, "the twin does not change a reservation's parameters, only the lease's name and dates")
        for item in lease["reservations"]:
            for host_id in item.get("_host_ids", []):
                if not _free(self.world, host_id, start, end, skip_reservation=item["id"]):
                    raise _not_enough_hosts()
        lease["start_date"], lease["end_date"] = start.strftime(LEASE_DATE), end.strftime(LEASE_DATE)
        for event in lease["events"]:
            if event["status"] != "UNDONE":
                continue
            if event["event_type"] == "start_lease":
                event["time"] = lease["start_date"]
            elif event["event_type"] == "end_lease":
                event["time"] = lease["end_date"]
            elif event["event_type"] == "before_end_lease":
                event["time"] = max(end - BEFORE_END, start).strftime(LEASE_DATE)
        if "name" in values:
            lease["name"] = values["name"]
        lease["updated_at"] = _stamp(self.world)
        self.world.record("blazar", f"lease {lease['name']} ({lease['id']}) now {start:%Y-%m-%d %H:%M}-{end:%Y-%m-%d %H:%M}")
        lease_status(self.world, lease)
        return reply(200, {"lease": public(lease)})

    def delete_lease(self, request: Request):
        lease = self._own_lease(request, "delete")
        for item in lease["reservations"]:
            item["status"] = "deleted"
        _release_flavors(self.world, lease)
        self.world.data.get("trusts", {}).pop(lease["trust_id"], None)  # blazar/utils/trusts.py delete_trust
        del self.world.data["leases"][lease["id"]]
        self.world.record("blazar", f"lease {lease['name']} ({lease['id']}) deleted")
        return reply(200, {})  # Chameleon's fork: render(status=200); upstream Blazar answers 204

    # --- hosts ----------------------------------------------------------------------------------

    def admin_only(self, request: Request):
        request.token()
        action = {"POST": "post", "PUT": "put", "DELETE": "delete"}[request.method]
        raise BlazarFault(403, f"Policy doesn't allow blazar:oshosts:{action} to be performed.")

    def list_hosts(self, request: Request):
        request.token()
        return reply(200, {"hosts": public(list(self.world.data["hosts"].values()))})

    def _host(self, request: Request) -> dict:
        request.token()
        host = self.world.data["hosts"].get(request.param("host"))
        if host is None:
            raise BlazarFault(404, f"Object with {{'host_id': '{request.param('host')}'}} not found")
        return host

    def get_host(self, request: Request):
        return reply(200, {"host": public(self._host(request))})

    def _allocation(self, host_id: str, request: Request) -> dict:
        now = _now(self.world)
        lease_id, reservation_id = request.arg("lease_id"), request.arg("reservation_id")
        shown = []
        for lease, item in _host_allocations(self.world, host_id):
            if _date(lease["end_date"]) <= now:
                continue
            if lease_id not in (None, lease["id"]) or reservation_id not in (None, item["id"]):
                continue
            shown.append({"id": item["id"], "lease_id": lease["id"], "start_date": lease["start_date"],
                          "end_date": lease["end_date"], "extras": {}})
        return {"resource_id": host_id, "reservations": shown}

    def get_allocation(self, request: Request):
        host = self._host(request)
        return reply(200, {"allocation": self._allocation(host["id"], request)})

    def list_allocations(self, request: Request):
        request.token()
        return reply(200, {"allocations": [self._allocation(h, request) for h in self.world.data["hosts"]]})

    def list_properties(self, request: Request):
        request.token()
        names = sorted({k for h in self.world.data["hosts"].values() for k in h
                        if k not in HOST_COLUMNS and not k.startswith("_")})
        if request.arg("detail") in ("True", "true", "1"):
            values = {n: sorted({str(h[n]) for h in self.world.data["hosts"].values() if n in h}) for n in names}
            shown = [{"property": n, "private": False, "values": values[n]} for n in names]
        else:
            shown = [{"property": n} for n in names]
        return reply(200, {"resource_properties": shown})


class BlazarRoot(Service):
    """Blazar's version list, at the root of its endpoint (300 Multiple Choices, as Blazar answers)."""

    prefix = "/reservation"
    name = "blazar"
    routes = [("GET", "/", "versions"), ("GET", "/versions", "versions")]

    def error_body(self, status, message):
        return {"error_code": status, "error_message": message, "error_name": status}

    def versions(self, request: Request):
        return reply(300, {"versions": [{"id": "v1.0", "status": "CURRENT", "min_version": "1.0", "max_version": "1.0",
                                         "links": [{"href": self.world.url("/reservation/v1"), "rel": "self"}]}]})


class ReferenceNodes(Service):
    """The nodes of Chameleon's reference API (what `chi.hardware.get_nodes` reads), from the hosts above.

    Only GET `<CHI_RESOURCE_API_URL>/sites/<site>/clusters/chameleon/nodes.json`; no token needed.
    """

    prefix = "/api/sites"
    name = "reference-api"
    routes = [("GET", "/(?P<site>[^/]+)/clusters/chameleon/nodes.json", "nodes")]

    def nodes(self, request: Request):
        site = request.param("site")
        items = [host["_reference"] for host in self.world.data["hosts"].values()
                 if host.get("_reference") and host["_site"].split("@")[1].lower() == site]
        return reply(200, {"items": items, "total": len(items), "offset": 0})


# --- inventory -----------------------------------------------------------------------------------

# name, node_type, cpu threads, memory (GiB), disk (GB), gpu model, gpu count, cpu model
INVENTORY = [
    ("liqid01", "compute_liqid", 64, 512, 960, "A100", 2, "AMD EPYC 7352"),
    ("liqid02", "compute_liqid", 64, 512, 960, "A100", 2, "AMD EPYC 7352"),
    ("P3-GPU-009", "gpu_mi100", 64, 256, 480, "MI100", 2, "AMD EPYC 7302"),
    ("P3-GPU-010", "gpu_mi100", 64, 256, 480, "MI100", 2, "AMD EPYC 7302"),
    ("P3-GPU-011", "gpu_mi100", 64, 256, 480, "MI100", 2, "AMD EPYC 7302"),
    ("c01-01", "compute_cascadelake_r", 96, 192, 240, None, 0, "Intel Xeon Gold 6240R"),
]


def _host_record(name, node_type, threads, memory_gib, disk_gb, gpu_model, gpus, cpu_model, stamp) -> dict:
    host_id = str(uuid.uuid5(uuid.NAMESPACE_URL, f"chi-twin/blazar-host/{name}"))
    uid = str(uuid.uuid5(uuid.NAMESPACE_URL, f"chi-twin/ironic-node/{name}"))
    capabilities = {  # Blazar's extra capabilities: strings, as it stores them
        "node_name": name, "node_type": node_type, "uid": uid, "su_factor": "1.0",
        "architecture.platform_type": "x86_64", "architecture.smt_size": str(threads),
        "processor.model": cpu_model, "main_memory.ram_size": str(memory_gib * 1024 ** 3),
        "gpu.gpu": str(bool(gpus)), "placement.rack": name.split("-")[0] if "-" in name else "liqid",
    }
    if gpus:
        capabilities.update({"gpu.gpu_count": str(gpus), "gpu.gpu_model": gpu_model})
    reference = {
        "uid": uid, "node_name": name, "node_type": node_type, "type": "node", "version": "twin",
        "architecture": {"platform_type": "x86_64", "smt_size": threads},
        "processor": {"model": cpu_model, "clock_speed": 2_400_000_000, "vendor": cpu_model.split()[0]},
        "gpu": {"gpu": bool(gpus), **({"gpu_count": gpus, "gpu_model": gpu_model} if gpus else {})},
        "main_memory": {"ram_size": memory_gib * 1024 ** 3, "humanized_ram_size": f"{memory_gib} GiB"},
        "network_adapters": [{"enabled": True, "management": False, "rate": 10_000_000_000}],
        "placement": {"node": name, "rack": capabilities["placement.rack"]},
        "storage_devices": [{"humanized_size": f"{disk_gb} GB", "size": disk_gb * 10 ** 9, "interface": "SATA"}],
    }
    return {
        "id": host_id, "vcpus": threads, "cpu_info": "baremetal cpu", "hypervisor_type": "ironic",
        "hypervisor_version": 1, "hypervisor_hostname": uid, "service_name": uid,
        "memory_mb": memory_gib * 1024, "local_gb": disk_gb, "status": None, "availability_zone": "nova",
        "trust_id": uuid.uuid5(uuid.NAMESPACE_URL, f"chi-twin/trust/{name}").hex, "reservable": True,
        "disabled": False, "created_at": stamp, "updated_at": None, **capabilities,
        "_site": "CHI@TACC", "_reference": reference,
    }


def seed_inventory(world) -> None:
    """The bare-metal hosts Blazar offers at CHI@TACC (kept if the world already has them)."""
    stamp = (_now(world) - timedelta(days=400)).strftime(STAMP)
    with world.lock:
        for row in INVENTORY:
            host = _host_record(*row, stamp=stamp)
            world.data["hosts"].setdefault(host["id"], host)


def services(world) -> list[Service]:
    return [Blazar(world), BlazarRoot(world), ReferenceNodes(world)]
