"""The twin's Blazar, through python-chi and chameleon-blazarclient as they are (and plain HTTP where
python-chi needs another twin, as for a flavor reservation, whose flavor python-chi looks up in Nova).

The twin's clock runs 600 times faster than real time: one real second is ten minutes of lease time,
so dates are taken from the twin's clock, never from this machine's.
"""

from __future__ import annotations

import json
import time
from datetime import timedelta

import pytest
import requests

from chi_helpers.twin import blazar as twin_blazar
from chi_helpers.twin import keystone

FORMAT = "%Y-%m-%d %H:%M"


def world_now(twin):
    return twin.world.now().replace(tzinfo=None)


def node_lease(name: str, node: str, start, end):
    import chi.lease

    lease = chi.lease.Lease(name, start_date=start, end_date=end)
    lease.add_node_reservation(amount=1, node_name=node)
    return lease


def wait_for(condition, seconds=8.0):
    deadline = time.time() + seconds
    while time.time() < deadline:
        if condition():
            return True
        time.sleep(0.2)
    return condition()


def token_for(twin, credential_id=None, secret=None) -> str:
    env = twin.environment()
    identity = {"methods": ["application_credential"], "application_credential": {
        "id": credential_id or env["OS_APPLICATION_CREDENTIAL_ID"],
        "secret": secret or env["OS_APPLICATION_CREDENTIAL_SECRET"]}}
    answer = requests.post(f"{twin.url}/v3/auth/tokens", json={"auth": {"identity": identity}}, timeout=5)
    assert answer.status_code == 201
    return answer.headers["X-Subject-Token"]


def blazar_url(twin, path: str) -> str:
    return f"{twin.url}/reservation/v1{path}"


def create_args(name, start, end, node="liqid01"):
    reservation = {"resource_type": "physical:host", "resource_properties": json.dumps(["==", "$node_name", node]),
                   "hypervisor_properties": "", "min": 1, "max": 1}
    return dict(name=name, start=start, end=end, reservations=[reservation], events=[])


def host_id(chi, node: str) -> str:
    import chi.lease

    return next(h["id"] for h in chi.lease.blazar().host.list() if h["node_name"] == node)


# --- leases through python-chi ---------------------------------------------------------------------


def test_a_node_lease_by_name_is_pending_then_active_and_found_again(chi, twin):
    import chi.lease

    now = world_now(twin)
    lease = node_lease("mlflow_abc123", "liqid01", now + timedelta(minutes=40), now + timedelta(hours=3))
    lease.submit(idempotent=True, wait_for_active=False)
    assert lease.id and lease.status == "PENDING"
    (node,) = lease.node_reservations
    assert json.loads(node["resource_properties"]) == ["==", "$node_name", "liqid01"]
    assert node["status"] == "pending" and node["min"] == node["max"] == 1
    assert not any(key.startswith("_") for key in node)  # private keys stay in the twin

    assert wait_for(lambda: lease.status == "ACTIVE", seconds=15)  # 40 lease minutes = 4 real seconds
    assert lease.node_reservations[0]["status"] == "active"

    again = node_lease("mlflow_abc123", "liqid01", now + timedelta(minutes=40), now + timedelta(hours=3))
    again.submit(idempotent=True, wait_for_active=True)  # already ACTIVE: returns at once
    assert again.id == lease.id
    assert [l.id for l in chi.lease.list_leases()] == [lease.id]
    assert chi.lease.get_lease("mlflow_abc123").id == lease.id
    assert chi.lease.get_lease(lease.id).name == "mlflow_abc123"


def test_get_lease_by_name_fails_when_two_leases_share_it_as_in_python_chi(chi, twin):
    import chi.lease
    from chi.exception import CHIValueError

    now = world_now(twin)
    first = node_lease("twins", "liqid01", now + timedelta(hours=2), now + timedelta(hours=4))
    first.submit(wait_for_active=False)
    second = node_lease("twins", "liqid02", now + timedelta(hours=2), now + timedelta(hours=4))
    second.submit(wait_for_active=False)  # Blazar allows two leases of one name
    assert first.id != second.id
    with pytest.raises(CHIValueError):
        chi.lease.get_lease("twins")
    assert chi.lease.get_lease(second.id).id == second.id


def test_a_lease_for_a_taken_host_or_an_unknown_host_is_refused_as_blazar_does(chi, twin, caplog):
    import chi.lease
    from blazarclient.exception import BlazarClientException
    from chi.exception import ResourceError

    now = world_now(twin)
    start, end = now + timedelta(hours=2), now + timedelta(hours=5)
    node_lease("first", "liqid01", start, end).submit(wait_for_active=False)

    overlapping = node_lease("second", "liqid01", start + timedelta(hours=1), end + timedelta(hours=1))
    with pytest.raises(ResourceError):  # python-chi logs Blazar's message and raises its own
        overlapping.submit(wait_for_active=False)
    # python-chi lower-cases it; Chameleon's Blazar shows the query it tried (display_default_resource_properties)
    assert "error: not enough resources available with query {'resource_type': 'physical:host'" in caplog.text

    client = chi.lease.blazar().lease
    second_start = start + timedelta(hours=1)
    args = create_args("second", second_start.strftime(FORMAT), end.strftime(FORMAT))
    with pytest.raises(BlazarClientException) as refused:
        client.create(**args)
    assert refused.value.code == 500
    assert str(refused.value).startswith(
        "ERROR: Not enough resources available with query {'resource_type': 'physical:host', 'resource_properties': "
        f"'[\"==\", \"$node_name\", \"liqid01\"]', 'hypervisor_properties': '', 'min': 1, 'max': 1, "
        f"'start_date': {second_start.replace(second=0, microsecond=0)!r}")
    assert str(refused.value).endswith("'count_range': '1-1', 'before_end': 'default', 'on_start': 'default'}")

    with pytest.raises(BlazarClientException) as unknown:
        client.create(**create_args("third", start.strftime(FORMAT), end.strftime(FORMAT), node="nosuchnode"))
    assert "Not enough resources available with query" in str(unknown.value)

    after = client.create(**create_args("after", end.strftime(FORMAT), (end + timedelta(hours=3)).strftime(FORMAT)))
    assert after["status"] == "PENDING"  # touching the first lease's end is not an overlap
    other = client.create(**create_args("other", start.strftime(FORMAT), end.strftime(FORMAT), node="liqid02"))
    assert other["status"] == "PENDING"
    assert sorted(l["name"] for l in client.list()) == ["after", "first", "other"]


def test_bad_dates_and_parameters_are_refused_with_blazars_messages(chi, twin):
    import chi.lease
    from blazarclient.exception import BlazarClientException

    client = chi.lease.blazar().lease
    now = world_now(twin)
    cases = [
        ((now + timedelta(hours=2)).strftime("%Y-%m-%dT%H:%M"), (now + timedelta(hours=3)).strftime(FORMAT),
         400, "is an invalid date. Required format: %Y-%m-%d %H:%M"),
        ((now + timedelta(hours=3)).strftime(FORMAT), (now + timedelta(hours=2)).strftime(FORMAT),
         400, "End date must be later than start date."),
        ((now - timedelta(days=1)).strftime(FORMAT), (now + timedelta(hours=2)).strftime(FORMAT),
         400, "Start date must be later than current date"),
    ]
    for start, end, code, message in cases:
        with pytest.raises(BlazarClientException) as refused:
            client.create(**create_args("bad", start, end))
        assert refused.value.code == code and message in str(refused.value)

    args = create_args("bad", (now + timedelta(hours=2)).strftime(FORMAT), (now + timedelta(hours=3)).strftime(FORMAT))
    args["reservations"][0]["resource_properties"] = json.dumps(["==", "$no_such_property", "x"])
    with pytest.raises(BlazarClientException) as unknown_property:
        client.create(**args)
    assert unknown_property.value.code == 500 and "ComputeHostExtraCapability was not found" in str(unknown_property.value)
    assert client.list() == []


def test_the_hosts_allocations_show_a_lease_and_delete_frees_the_host(chi, twin, monkeypatch):
    import chi.hardware
    import chi.lease

    # chi.hardware copies the reference API's address from chi.context when first imported
    monkeypatch.setattr(chi.hardware, "RESOURCE_API_URL", twin.environment()["CHI_RESOURCE_API_URL"])

    client = chi.lease.blazar()
    hosts = client.host.list()
    assert {"liqid01", "liqid02", "P3-GPU-009", "P3-GPU-010", "P3-GPU-011", "c01-01"} <= {h["node_name"] for h in hosts}
    liqid01 = host_id(chi, "liqid01")
    assert client.host.get(liqid01)["node_type"] == "compute_liqid"
    assert client.host.get_allocation(liqid01) == {"resource_id": liqid01, "reservations": []}

    now = world_now(twin)
    lease = node_lease("held", "liqid01", now + timedelta(hours=2), now + timedelta(hours=5))
    lease.submit(wait_for_active=False)
    (allocation,) = client.host.get_allocation(liqid01)["reservations"]
    assert allocation["lease_id"] == lease.id and allocation["id"] == lease.node_reservations[0]["id"]
    assert allocation["start_date"] == lease.start_date.strftime("%Y-%m-%dT%H:%M:%S.%f")
    everything = {a["resource_id"]: a["reservations"] for a in client.host.list_allocations()}
    assert len(everything[liqid01]) == 1 and everything[host_id(chi, "liqid02")] == []

    # python-chi's own free-window search, from Chameleon's reference API and Blazar's allocations
    nodes = chi.hardware.get_nodes(node_type="compute_liqid")
    assert sorted(n.name for n in nodes) == ["liqid01", "liqid02"]
    node = next(n for n in nodes if n.name == "liqid01")
    # python-chi counts from this machine's clock, which is behind the twin's: 6 h before the lease is too short
    free_from, _ = node.next_free_timeslot(minimum_hours=6)
    assert free_from.replace(tzinfo=None) == lease.end_date

    lease.delete()
    assert client.lease.list() == []
    assert client.host.get_allocation(liqid01)["reservations"] == []
    again = node_lease("held-again", "liqid01", now + timedelta(hours=2), now + timedelta(hours=5))
    again.submit(wait_for_active=False)
    assert again.status == "PENDING"


def test_a_lease_ends_terminated_and_a_new_one_of_that_name_can_be_made(chi, twin):
    import chi.lease

    # no start_date: python-chi asks for "now"; the end from the twin's clock (it runs ahead of this machine's)
    lease = chi.lease.Lease("short", end_date=world_now(twin) + timedelta(minutes=30))
    lease.add_node_reservation(amount=1, node_name="P3-GPU-009")
    lease.submit(wait_for_active=True)  # a lease starting now is ACTIVE at its first read
    assert lease.status in ("ACTIVE", "TERMINATED")
    assert wait_for(lambda: lease.status == "TERMINATED")
    assert lease.node_reservations[0]["status"] == "deleted"
    assert chi.lease.blazar().host.get_allocation(host_id(chi, "P3-GPU-009"))["reservations"] == []

    now = world_now(twin)
    fresh = node_lease("short", "P3-GPU-009", now + timedelta(hours=1), now + timedelta(hours=2))
    fresh.submit(idempotent=True, wait_for_active=False)  # python-chi passes over TERMINATED leases
    assert fresh.id != lease.id and fresh.status == "PENDING"


def test_a_lease_can_be_extended_and_renamed_through_blazarclient(chi, twin):
    import chi.lease

    client = chi.lease.blazar().lease
    now = world_now(twin)
    lease = node_lease("grow", "liqid02", now + timedelta(hours=2), now + timedelta(hours=4))
    lease.submit(wait_for_active=False)
    new_end = (now + timedelta(hours=6)).strftime(FORMAT)
    updated = client.update(lease.id, end_date=new_end)
    assert updated["end_date"].startswith(new_end.replace(" ", "T"))
    assert client.update(lease.id, name="grown")["name"] == "grown"
    blocker = client.create(**create_args("blocker", (now + timedelta(hours=7)).strftime(FORMAT),
                                          (now + timedelta(hours=9)).strftime(FORMAT), node="liqid02"))
    from blazarclient.exception import BlazarClientException

    with pytest.raises(BlazarClientException) as refused:
        client.update(lease.id, end_date=(now + timedelta(hours=8)).strftime(FORMAT))
    assert "Not enough hosts available" in str(refused.value)
    assert blocker["status"] == "PENDING"


# --- faults -----------------------------------------------------------------------------------------


def test_the_lease_error_fault_gives_a_lease_in_error(chi, twin):
    import chi.lease

    twin.world.inject("lease-error")
    lease = chi.lease.Lease("broken", end_date=world_now(twin) + timedelta(hours=3))
    lease.add_node_reservation(amount=1, node_name="liqid01")
    lease.submit(wait_for_active=True)  # python-chi stops waiting at ERROR without raising
    assert lease.status == "ERROR"
    assert lease.node_reservations[0]["status"] == "error"
    assert [l.status for l in chi.lease.list_leases()] == ["ERROR"]


def test_the_host_taken_fault_refuses_the_next_host_reservation_only(chi, twin):
    import chi.lease
    from blazarclient.exception import BlazarClientException

    twin.world.inject("host-taken")
    client = chi.lease.blazar().lease
    now = world_now(twin)
    args = create_args("taken", (now + timedelta(hours=2)).strftime(FORMAT), (now + timedelta(hours=3)).strftime(FORMAT))
    with pytest.raises(BlazarClientException) as refused:
        client.create(**args)
    assert "Not enough resources available with query" in str(refused.value)
    assert client.create(**args)["status"] == "PENDING"


# --- the wire -----------------------------------------------------------------------------------------


def test_leases_are_got_by_id_only_and_errors_look_like_blazars(chi, twin):
    token = token_for(twin)
    headers = {"X-Auth-Token": token}
    assert requests.get(blazar_url(twin, "/leases"), timeout=5).status_code == 401
    versions = requests.get(f"{twin.url}/reservation/", timeout=5)  # Blazar's root (no client asked for it)
    assert versions.status_code == 300 and versions.json()["versions"][0]["id"] == "v1.0"
    no_host = requests.get(blazar_url(twin, "/os-hosts/nosuchhost"), headers=headers, timeout=5)
    assert no_host.status_code == 404 and no_host.json()["error_message"] == "Object with {'host_id': 'nosuchhost'} not found"
    answer = requests.get(blazar_url(twin, "/leases/mlflow_abc123"), headers=headers, timeout=5)
    assert answer.status_code == 404
    assert answer.json() == {"error_code": 404, "error_message": "Object with {'lease_id': 'mlflow_abc123'} not found",
                             "error_name": 404}
    now = world_now(twin)
    body = {"name": "wire", "start_date": (now + timedelta(hours=1)).strftime(FORMAT),
            "end_date": (now + timedelta(hours=2)).strftime(FORMAT), "events": [], "before_end_date": None,
            "reservations": [{"resource_type": "physical:host", "resource_properties": "", "hypervisor_properties": "",
                              "min": "2", "max": "3"}]}
    made = requests.post(blazar_url(twin, "/leases"), json=body, headers=headers, timeout=5)
    assert made.status_code == 201
    lease = made.json()["lease"]
    assert lease["reservations"][0]["min"] == 2 and lease["reservations"][0]["max"] == 3
    assert sorted(e["event_type"] for e in lease["events"]) == ["before_end_lease", "end_lease", "start_lease"]
    assert time.strptime(lease["created_at"], "%Y-%m-%d %H:%M:%S")
    gone = requests.delete(blazar_url(twin, f"/leases/{lease['id']}"), headers=headers, timeout=5)
    assert gone.status_code == 200 and gone.json() == {}
    assert requests.get(blazar_url(twin, f"/leases/{lease['id']}"), headers=headers, timeout=5).status_code == 404


def test_a_project_sees_only_its_own_leases(chi, twin):
    import chi.lease

    now = world_now(twin)
    mine = node_lease("mine", "liqid01", now + timedelta(hours=2), now + timedelta(hours=4))
    mine.submit(wait_for_active=False)

    keystone.seed(twin.world, "CHI-111111", "someone-else", "pw", "other-credential", "other-secret")
    headers = {"X-Auth-Token": token_for(twin, "other-credential", "other-secret")}
    assert requests.get(blazar_url(twin, "/leases"), headers=headers, timeout=5).json() == {"leases": []}
    for method in ("GET", "DELETE"):
        answer = requests.request(method, blazar_url(twin, f"/leases/{mine.id}"), headers=headers, timeout=5)
        assert answer.status_code == 404
    # ...but Blazar's allocations are everyone's: the other project sees liqid01 is taken
    allocation = requests.get(blazar_url(twin, f"/os-hosts/{host_id(chi, 'liqid01')}/allocation"),
                              headers=headers, timeout=5).json()["allocation"]
    assert [r["lease_id"] for r in allocation["reservations"]] == [mine.id]
    assert [l.id for l in chi.lease.list_leases()] == [mine.id]


def test_a_flavor_reservation_makes_a_private_reserved_flavor(twin):
    base = {"id": "g1.h100.pci.1", "name": "g1.h100.pci.1", "vcpus": 16, "ram": 65536, "disk": 100,
            "OS-FLV-EXT-DATA:ephemeral": 0, "swap": "", "rxtx_factor": 1.0, "os-flavor-access:is_public": True,
            "OS-FLV-DISABLED:disabled": False, "description": "one H100",
            "extra_specs": {"trait:CUSTOM_GPU": "required", "pci_passthrough:alias": "h100:1"}}
    twin.world.data["flavors"]["g1.h100.pci.1"] = base
    headers = {"X-Auth-Token": token_for(twin)}
    body = {"name": "vm", "start_date": "now", "end_date": (world_now(twin) + timedelta(hours=3)).strftime(FORMAT),
            "events": [], "before_end_date": None,
            "reservations": [{"resource_type": "flavor:instance", "flavor_id": "g1.h100.pci.1", "amount": 1,
                              "affinity": None}]}
    made = requests.post(blazar_url(twin, "/leases"), json=body, headers=headers, timeout=5)
    assert made.status_code == 201
    lease = made.json()["lease"]
    (reservation,) = lease["reservations"]
    rid = reservation["id"]
    assert reservation["flavor_id"] == rid and reservation["amount"] == 1 and reservation["vcpus"] == 16
    assert json.loads(reservation["resource_properties"])["id"] == "g1.h100.pci.1"

    flavor = twin.world.data["flavors"][rid]
    assert flavor["name"] == f"reservation:{rid}" and flavor["os-flavor-access:is_public"] is False
    assert flavor["extra_specs"]["aggregate_instance_extra_specs:reservation"] == rid
    assert flavor["extra_specs"]["resources:CUSTOM_RESERVATION_" + rid.upper().replace("-", "_")] == "1"
    assert flavor["extra_specs"]["trait:CUSTOM_GPU"] == "required"

    # what the Nova twin asks: is the reservation usable, and by whom
    found_lease, found = twin_blazar.reservation(twin.world, rid)
    assert found_lease["id"] == lease["id"] and twin_blazar.lease_status(twin.world, found_lease) == "ACTIVE"
    assert found["status"] == "active" and flavor["_access"] == [lease["project_id"]]
    assert twin_blazar.reservation(twin.world, "no-such-reservation") is None

    body["reservations"][0]["flavor_id"] = "no.such.flavor"
    unknown = requests.post(blazar_url(twin, "/leases"), json=body, headers=headers, timeout=5)
    assert unknown.status_code == 500 and unknown.json()["error_name"] == "INTERNAL_SERVER_ERROR"

    assert requests.delete(blazar_url(twin, f"/leases/{lease['id']}"), headers=headers, timeout=5).status_code == 200
    assert rid not in twin.world.data["flavors"] and "g1.h100.pci.1" in twin.world.data["flavors"]
