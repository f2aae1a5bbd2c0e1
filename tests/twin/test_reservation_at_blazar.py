"""Reserving the named host through python-chi, against the twin's Blazar: the request, finding the
lease again, the refusals, the free block, the VM's flavor."""

from __future__ import annotations

import json

from datetime import timedelta

import pytest

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


def test_a_taken_host_is_a_sentence(blazar):
    blazar.world.inject("host-taken")
    with pytest.raises(reservation.ReservationError) as error:
        reservation.submit(NVIDIA, "mlflow_abc123", "liqid01", *reservation.next_block())
    assert "liqid01 is not free" in str(error.value) and 'when="free"' in str(error.value)


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
