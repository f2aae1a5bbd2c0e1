"""Reserving the named host through python-chi, against the twin's Blazar: the request, finding the
lease again, the refusals, the free block, the VM's flavor."""

from __future__ import annotations

import json

from datetime import timedelta

import pytest
import requests

from chi_helpers import parameters
from chi_helpers.chameleon import login, reservation
from chi_helpers.variants import VARIANTS

NVIDIA, VM = VARIANTS["nvidia"], VARIANTS["vm"]


@pytest.fixture
def blazar(twin, clean_environment, chi_at_twin):
    login.sign_in(str(twin.rc_file), "", "CHI@TACC", say=lambda _: None)
    return twin


def leases(twin) -> list[dict]:
    return list(twin.world.data["leases"].values())


def lease_posts(twin) -> int:
    return (twin.world.state_dir / "requests.log").read_text().count("POST /reservation/v1/leases ")


def test_submit_sends_the_exact_lease_request(blazar, capsys):
    start, end = reservation.next_block()
    lease = reservation.submit(NVIDIA, "mlflow_abc123", "liqid01", start, end)
    [made] = leases(blazar)
    assert made["name"] == "mlflow_abc123"
    assert made["start_date"].startswith(start.strftime("%Y-%m-%dT%H:%M")) and made["end_date"].startswith(end.strftime("%Y-%m-%dT%H:%M"))
    [host] = made["reservations"]
    assert host["resource_type"] == "physical:host" and (int(host["min"]), int(host["max"])) == (1, 1)
    assert json.loads(host["resource_properties"]) == ["==", "$node_name", "liqid01"]
    assert lease.status in ("PENDING", "ACTIVE")  # the twin shortens the wait
    assert "made lease 'mlflow_abc123'" in capsys.readouterr().out


def test_submitting_again_finds_the_lease_and_makes_no_second(blazar, capsys):
    start, end = reservation.next_block()
    reservation.submit(NVIDIA, "mlflow_abc123", "liqid01", start, end)
    again = reservation.submit(NVIDIA, "mlflow_abc123", "liqid01", start, end)
    assert lease_posts(blazar) == 1 and len(leases(blazar)) == 1
    assert again.name == "mlflow_abc123" and "found lease 'mlflow_abc123'" in capsys.readouterr().out


def test_a_lease_of_that_name_on_another_host_is_reported(blazar):
    reservation.submit(NVIDIA, "mlflow_abc123", "liqid02", *reservation.next_block())
    with pytest.raises(reservation.ReservationError) as error:
        reservation.submit(NVIDIA, "mlflow_abc123", "liqid01", *reservation.next_block())
    assert "reserves 'liqid02', not 'liqid01'" in str(error.value) and "another lease_name" in str(error.value)
    assert lease_posts(blazar) == 1


def test_a_lease_in_error_says_what_to_do(blazar):
    import time

    blazar.world.inject("lease-error")
    # An hour after the next block: the twin's shortened wait to its start is seconds, not a fraction
    # of one, so the lease is still PENDING when submit describes it, even a minute before the hour.
    block = reservation.block(reservation.next_block()[0] + timedelta(hours=1))
    lease = reservation.submit(NVIDIA, "mlflow_abc123", "liqid01", *block)
    for _ in range(300):
        if lease.status == "ERROR":
            break
        time.sleep(0.1)
    with pytest.raises(reservation.ReservationError, match="is in ERROR.*release"):
        reservation.submit(NVIDIA, "mlflow_abc123", "liqid01", *block)


def test_a_host_refused_though_its_calendar_is_empty_says_so(blazar):
    blazar.world.inject("host-taken")  # Blazar refuses, and the host's calendar shows no lease
    with pytest.raises(reservation.ReservationError) as error:
        reservation.submit(NVIDIA, "mlflow_abc123", "liqid01", *reservation.next_block())
    text = str(error.value)
    assert "Blazar has no free liqid01" in text and "maintenance" in text and "another compute_liqid host" in text
    assert "not enough resources available with query" in text  # Blazar's words, as python-chi logged them


def test_a_host_someone_took_meanwhile_names_its_first_free_block(blazar):
    # Someone else's project takes liqid01 for the block after our calendar check (a race the check cannot see).
    from chi_helpers.twin import keystone

    keystone.seed(blazar.world, "CHI-222222", "someone-else", "pw", "their-credential", "their-secret")
    identity = {"methods": ["application_credential"],
                "application_credential": {"id": "their-credential", "secret": "their-secret"}}
    token = requests.post(f"{blazar.url}/v3/auth/tokens", json={"auth": {"identity": identity}}, timeout=5)
    start, end = reservation.next_block()
    theirs = {"name": "theirs", "start_date": f"{start:%Y-%m-%d %H:%M}", "end_date": f"{end:%Y-%m-%d %H:%M}",
              "events": [], "reservations": [{"resource_type": "physical:host", "min": 1, "max": 1,
                                              "resource_properties": '["==", "$node_name", "liqid01"]',
                                              "hypervisor_properties": ""}]}
    assert requests.post(f"{blazar.url}/reservation/v1/leases", json=theirs, timeout=5,
                         headers={"X-Auth-Token": token.headers["X-Subject-Token"]}).status_code == 201
    with pytest.raises(reservation.ReservationError) as error:
        reservation.submit(NVIDIA, "mlflow_abc123", "liqid01", start, end)
    text = str(error.value)
    free = start + timedelta(hours=3)
    assert f"liqid01 is taken from {start:%Y-%m-%d %H:%M}" in text
    assert f"first free block is {free:%Y-%m-%d %H:%M}" in text and 'when = "free"' in text


def test_a_restricted_credential_is_named_as_the_reason(twin, clean_environment, chi_at_twin, tmp_path):
    from chi_helpers.twin import control

    env = twin.environment()
    identity = {"methods": ["application_credential"], "application_credential": {
        "id": env["OS_APPLICATION_CREDENTIAL_ID"], "secret": env["OS_APPLICATION_CREDENTIAL_SECRET"]}}
    token = requests.post(f"{twin.url}/v3/auth/tokens", json={"auth": {"identity": identity}}, timeout=5)
    made = requests.post(f"{twin.url}/v3/users/{token.json()['token']['user']['id']}/application_credentials",
                         json={"application_credential": {"name": "from-the-dashboard"}}, timeout=5,
                         headers={"X-Auth-Token": token.headers["X-Subject-Token"]}).json()["application_credential"]
    rc_file = tmp_path / "restricted-openrc.sh"
    control.write_rc(twin.world, rc_file, made["id"], made["secret"])
    login.sign_in(str(rc_file), "", "CHI@TACC", say=lambda _: None)
    with pytest.raises(reservation.ReservationError) as error:
        reservation.submit(NVIDIA, "mlflow_abc123", "liqid01", *reservation.next_block())
    text = str(error.value)
    assert "'from-the-dashboard' is restricted" in text and '"Unrestricted"' in text
    assert "not free" not in text and "taken" not in text
    assert leases(twin) == []


def test_a_lease_longer_than_chameleon_allows_says_the_limit(blazar):
    start, _ = reservation.next_block()
    with pytest.raises(reservation.ReservationError) as error:
        reservation.submit(NVIDIA, "mlflow_abc123", "liqid01", *reservation.block(start, hours=8 * 24))
    text = str(error.value)
    assert "191 h 50 min" in text and "at most 168 hours (7 days)" in text and "hours = 168" in text


def test_a_start_already_past_says_to_choose_the_block_again(blazar):
    start, end = reservation.next_block()
    with pytest.raises(reservation.ReservationError) as error:
        reservation.submit(NVIDIA, "mlflow_abc123", "liqid01", start - timedelta(hours=2), end - timedelta(hours=2))
    text = str(error.value)
    assert "already past" in text and "the hour turned" in text and "time block" in text


def test_no_allocation_says_who_can_renew_it(blazar):
    blazar.world.inject("no-allocation")
    with pytest.raises(reservation.ReservationError) as error:
        reservation.submit(NVIDIA, "mlflow_abc123", "liqid01", *reservation.next_block())
    text = str(error.value)
    assert "CHI-000000 has no Service Units (SUs) left" in text and "needs 2.83" in text and "PI" in text


def test_an_allocation_nearly_used_up_says_what_is_left(blazar):
    blazar.world.inject("allocation-used-up")
    with pytest.raises(reservation.ReservationError) as error:
        reservation.submit(NVIDIA, "mlflow_abc123", "liqid01", *reservation.next_block())
    text = str(error.value)
    assert "needs 2.83 SUs" in text and "only 0.94 left" in text and "fewer hours" in text


def test_no_flavor_left_asks_for_a_later_block(blazar):
    blazar.world.inject("flavor-exhausted")
    start, end = reservation.next_block()
    with pytest.raises(reservation.ReservationError) as error:
        reservation.submit(VM, "mlflow_abc123", None, start, end)
    text = str(error.value)
    assert "no g1.h100.pci.1 left to reserve" in text and 'when = "free"' in text and "each later hour" in text


def test_the_notebooks_own_submit_gets_the_same_explanation(blazar):
    # Notebook 01 calls python-chi itself; the helper around that call explains a refusal the same way.
    import chi.lease

    blazar.world.inject("no-allocation")
    start, end = reservation.next_block()
    with pytest.raises(reservation.ReservationError, match="no Service Units"):
        with reservation.explain_refusals(NVIDIA, "mlflow_abc123", "liqid01", start, end):
            lease = chi.lease.Lease("mlflow_abc123", start_date=start, end_date=end)
            lease.add_node_reservation(amount=1, node_name="liqid01")
            lease.submit(idempotent=False, wait_for_active=False)


def test_an_unknown_host_lists_the_hosts_of_that_type(blazar):
    with pytest.raises(reservation.ReservationError) as error:
        reservation.submit(NVIDIA, "mlflow_abc123", "liqid09", *reservation.next_block())
    assert "no host named 'liqid09'" in str(error.value) and "liqid01, liqid02" in str(error.value)
    assert lease_posts(blazar) == 0


def test_a_host_of_another_type_is_refused(blazar):
    with pytest.raises(reservation.ReservationError, match="is a gpu_mi100, not a compute_liqid"):
        reservation.submit(NVIDIA, "mlflow_abc123", "P3-GPU-009", *reservation.next_block())
    assert lease_posts(blazar) == 0


@pytest.mark.parametrize("lease_name,node_name,message", [
    ("", "liqid01", "lease_name is empty"),
    ("mlflow abc", "liqid01", "may hold only letters"),
    ("mlflow_abc123", "", "node_name is empty"),
    ("mlflow_abc123", "liqid01; rm -rf", "may hold only letters"),
])
def test_bad_names_are_refused_before_any_call(blazar, lease_name, node_name, message):
    before = (blazar.world.state_dir / "requests.log").read_text()
    with pytest.raises(parameters.ParameterError, match=message):
        reservation.submit(NVIDIA, lease_name, node_name, *reservation.next_block())
    assert (blazar.world.state_dir / "requests.log").read_text() == before


def test_the_free_window_comes_from_the_hosts_allocations(blazar):
    taken = reservation.submit(NVIDIA, "someone_else", "liqid01", *reservation.next_block())
    start, end = reservation.choose_window(NVIDIA, "liqid01", 3, "free")
    assert start >= reservation._parse(taken.end_date if isinstance(taken.end_date, str) else taken.end_date.isoformat())
    assert start.minute == 0 and (end - start).total_seconds() == 3 * 3600 - 600


def test_the_vm_variant_reserves_a_flavor(blazar):
    reservation.submit(VM, "mlflow_abc123", None, *reservation.next_block())
    [made] = leases(blazar)
    [request] = made["reservations"]
    base = next(f for f in blazar.world.data["flavors"].values() if f["name"] == "g1.h100.pci.1")
    assert request["resource_type"] == "flavor:instance" and int(request.get("amount", 1)) == 1
    assert json.loads(request["resource_properties"])["id"] == base["id"]  # the flavor asked for
    reserved = blazar.world.data["flavors"][request["flavor_id"]]  # the one Blazar made for the lease
    assert reserved["extra_specs"]["aggregate_instance_extra_specs:reservation"] == request["id"]
