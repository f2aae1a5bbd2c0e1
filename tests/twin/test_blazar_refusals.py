"""What Chameleon's Blazar refuses when a lease is made, refused by the twin the same way, through
python-chi and chameleon-blazarclient as they are:

- a restricted application credential: Blazar cannot make the Keystone trust a lease needs and
  answers 500 (blazar/utils/trusts.py create_trust; keystone/api/trusts.py _check_unrestricted);
- a lease longer than 7 days: Chameleon's MaxLeaseDurationFilter, by the dates (403 once the
  manager re-raises it as NotAuthorized);
- the project's allocation (the portal's balance service through Blazar's ExternalServiceFilter,
  400) and a flavor with none left (500): faults, since the twin keeps no accounts.
"""

from __future__ import annotations

import json
from datetime import timedelta

import pytest
import requests

FORMAT = "%Y-%m-%d %H:%M"
WEEK = 7 * 24 * 3600


def world_now(twin):
    return twin.world.now().replace(tzinfo=None)


def host_args(name, start, end, node="liqid01"):
    reservation = {"resource_type": "physical:host", "resource_properties": json.dumps(["==", "$node_name", node]),
                   "hypervisor_properties": "", "min": 1, "max": 1}
    return dict(name=name, start=start.strftime(FORMAT), end=end.strftime(FORMAT), reservations=[reservation], events=[])


def flavor_args(name, start, end, flavor_id):
    reservation = {"resource_type": "flavor:instance", "flavor_id": flavor_id, "amount": 1, "affinity": None}
    return dict(name=name, start=start.strftime(FORMAT), end=end.strftime(FORMAT), reservations=[reservation], events=[])


def restricted_credential(twin) -> dict:
    """An application credential made as the dashboard makes one by default: restricted."""
    env = twin.environment()
    identity = {"methods": ["application_credential"], "application_credential": {
        "id": env["OS_APPLICATION_CREDENTIAL_ID"], "secret": env["OS_APPLICATION_CREDENTIAL_SECRET"]}}
    answer = requests.post(f"{twin.url}/v3/auth/tokens", json={"auth": {"identity": identity}}, timeout=5)
    user = answer.json()["token"]["user"]["id"]
    made = requests.post(f"{twin.url}/v3/users/{user}/application_credentials",
                         json={"application_credential": {"name": "from-the-dashboard"}},
                         headers={"X-Auth-Token": answer.headers["X-Subject-Token"]}, timeout=5)
    assert made.status_code == 201
    return made.json()["application_credential"]


def refusal(create, **args):
    from blazarclient.exception import BlazarClientException

    with pytest.raises(BlazarClientException) as refused:
        create(**args)
    return refused.value


def leases(twin) -> list[dict]:
    return list(twin.world.data["leases"].values())


# --- the credential -----------------------------------------------------------------------------


def test_a_restricted_application_credential_gets_blazars_500_through_python_chi(chi, twin, caplog):
    import chi.lease
    from chi.exception import ResourceError

    credential = restricted_credential(twin)
    chi.set("application_credential_id", credential["id"])
    chi.set("application_credential_secret", credential["secret"])
    now = world_now(twin)
    lease = chi.lease.Lease("restricted", start_date=now + timedelta(hours=2), end_date=now + timedelta(hours=4))
    lease.add_node_reservation(amount=1, node_name="liqid01")
    with pytest.raises(ResourceError, match="Unable to make lease"):
        lease.submit(idempotent=False, wait_for_active=False)
    assert "error: internal server error" in caplog.text  # python-chi logs Blazar's words, lower-cased

    # On the wire: Blazar hides Keystone's refusal behind its generic 500, before it reads the dates.
    error = refusal(chi.lease.blazar().lease.create, **host_args("restricted", now - timedelta(days=1), now))
    assert error.code == 500 and str(error) == "ERROR: Internal Server Error"
    assert leases(twin) == []


def test_the_unrestricted_credential_makes_the_lease_with_a_trust(chi, twin):
    import chi.lease

    now = world_now(twin)
    made = chi.lease.blazar().lease.create(**host_args("trusted", now + timedelta(hours=2), now + timedelta(hours=4)))
    assert made["status"] == "PENDING" and made["trust_id"] in twin.world.data["trusts"]
    assert twin.world.data["trusts"][made["trust_id"]]["trustee_user_id"] == "blazar"


# --- the dates: Chameleon's MaxLeaseDurationFilter -----------------------------------------------------


def test_a_lease_longer_than_seven_days_is_refused_by_its_dates(chi, twin):
    import chi.lease

    create = chi.lease.blazar().lease.create
    start = (world_now(twin) + timedelta(hours=2)).replace(second=0, microsecond=0)
    error = refusal(create, **host_args("long", start, start + timedelta(days=7, minutes=1)))
    assert error.code == 403
    assert str(error) == ("ERROR: Lease duration of 604860 seconds must be less than or equal to the maximum "
                          "lease duration of 604800 seconds.")
    assert leases(twin) == []
    assert create(**host_args("week", start, start + timedelta(days=7)))["status"] == "PENDING"  # exactly 7 days is allowed


def test_a_host_taken_then_is_refused_before_the_length(chi, twin):
    import chi.lease

    create = chi.lease.blazar().lease.create
    start = world_now(twin) + timedelta(hours=2)
    create(**host_args("first", start, start + timedelta(hours=3)))
    error = refusal(create, **host_args("second", start, start + timedelta(days=8)))
    # As Chameleon's Blazar words it (display_default_resource_properties is on by default): the query it tried.
    assert error.code == 500 and str(error).startswith("ERROR: Not enough resources available with query {")
    assert "'resource_type': 'physical:host'" in str(error) and "liqid01" in str(error)


# --- the allocation: the portal's balance service, through ExternalServiceFilter (faults) ----------------


def test_no_allocation_is_refused_with_the_balance_services_words(chi, twin):
    import chi.lease

    create = chi.lease.blazar().lease.create
    start = (world_now(twin) + timedelta(hours=2)).replace(second=0, microsecond=0)
    twin.world.inject("no-allocation")
    error = refusal(create, **host_args("broke", start, start + timedelta(hours=3) - timedelta(minutes=10)))
    assert error.code == 400
    assert str(error) == "ERROR: Reservation for project CHI-000000 would spend 2.83 SUs, only 0.00 left"
    assert leases(twin) == []
    assert create(**host_args("later", start, start + timedelta(hours=1)))["status"] == "PENDING"  # one refusal only


def test_an_allocation_used_up_says_how_much_is_left(chi, twin):
    import chi.lease

    start = (world_now(twin) + timedelta(hours=2)).replace(second=0, microsecond=0)
    twin.world.inject("allocation-used-up")
    error = refusal(chi.lease.blazar().lease.create, **host_args("short", start, start + timedelta(hours=4)))
    assert error.code == 400
    assert str(error) == "ERROR: Reservation for project CHI-000000 would spend 4.00 SUs, only 1.33 left"


def test_the_allocation_is_checked_after_the_length(chi, twin):
    import chi.lease

    start = (world_now(twin) + timedelta(hours=2)).replace(second=0, microsecond=0)
    twin.world.inject("no-allocation")
    error = refusal(chi.lease.blazar().lease.create, **host_args("long", start, start + timedelta(days=9)))
    assert error.code == 403 and "maximum lease duration" in str(error)
    assert twin.world.faults["no-allocation"] == 1  # not reached, so not used up


# --- a flavor with none left (KVM@TACC's H100s) -------------------------------------------------------


def test_a_flavor_with_none_left_is_refused_and_only_a_flavor_reservation(chi, twin):
    import chi.lease

    flavor = next(f for f in twin.world.data["flavors"].values() if f["name"] == "g1.h100.pci.1")
    create = chi.lease.blazar().lease.create
    start = world_now(twin) + timedelta(hours=2)
    twin.world.inject("flavor-exhausted")
    assert create(**host_args("a-host", start, start + timedelta(hours=3)))["status"] == "PENDING"
    error = refusal(create, **flavor_args("vm", start, start + timedelta(hours=3), flavor["id"]))
    assert error.code == 500 and str(error).startswith("ERROR: Not enough resources available with query {")
    assert "'resource_type': 'flavor:instance'" in str(error)
    assert create(**flavor_args("vm", start, start + timedelta(hours=3), flavor["id"]))["status"] == "PENDING"
