"""Reserving the named host: the time block, free windows, and the lease request at python-chi's Blazar client."""

from __future__ import annotations

import json
from datetime import datetime, timedelta, timezone
from unittest import mock

import pytest
from blazarclient.exception import BlazarClientException

from chi_helpers import parameters
from chi_helpers.chameleon import reservation
from chi_helpers.variants import VARIANTS

UTC = timezone.utc
NVIDIA, AMD, VM = VARIANTS["nvidia"], VARIANTS["amd"], VARIANTS["vm"]


def t(text: str) -> datetime:
    return datetime.fromisoformat(text).replace(tzinfo=UTC)


# --- the block -----------------------------------------------------------------------------------

@pytest.mark.parametrize("now,start,end", [
    ("2026-11-24 14:32", "2026-11-24 15:00", "2026-11-24 17:50"),
    ("2026-11-24 14:59:30", "2026-11-24 16:00", "2026-11-24 18:50"),  # never a start seconds away
    ("2026-11-24 23:10", "2026-11-25 00:00", "2026-11-25 02:50"),
])
def test_the_next_block_starts_on_the_hour_and_ends_ten_to(now, start, end):
    assert reservation.next_block(t(now)) == (t(start), t(end))


def test_free_window_on_an_idle_host_is_the_next_block():
    assert reservation.free_window([], 3, t("2026-11-24 14:32")) == (t("2026-11-24 15:00"), t("2026-11-24 17:50"))


def test_free_window_skips_a_busy_host_and_gaps_too_short():
    busy = [
        (t("2026-11-24 14:00"), t("2026-11-24 16:50")),  # busy now
        (t("2026-11-24 19:00"), t("2026-11-24 21:50")),  # 17:00-19:00 is a gap of 2 h: too short for 3
        (t("2026-11-25 01:00"), t("2026-11-25 03:50")),  # 22:00-01:00 fits a 3-hour block exactly
    ]
    assert reservation.free_window(busy, 3, t("2026-11-24 14:32")) == (t("2026-11-24 22:00"), t("2026-11-25 00:50"))
    assert reservation.free_window(busy, 2, t("2026-11-24 14:32")) == (t("2026-11-24 17:00"), t("2026-11-24 18:50"))


def test_free_window_after_the_last_allocation_and_in_any_order():
    busy = [(t("2026-11-24 18:00"), t("2026-11-24 20:50")), (t("2026-11-24 15:00"), t("2026-11-24 17:50"))]
    assert reservation.free_window(busy, 3, t("2026-11-24 14:32")) == (t("2026-11-24 21:00"), t("2026-11-24 23:50"))


# --- Blazar, faked at python-chi's client -------------------------------------------------------

HOSTS = [
    {"id": "h1", "node_name": "liqid01", "hypervisor_hostname": "uuid-1", "node_type": "compute_liqid"},
    {"id": "h2", "node_name": "liqid02", "hypervisor_hostname": "uuid-2", "node_type": "compute_liqid"},
    {"id": "h3", "node_name": "P3-GPU-001", "hypervisor_hostname": "uuid-3", "node_type": "gpu_mi100"},
]


def lease_json(name: str, status: str, node: str = "liqid01", start="2026-11-24T15:00:00.000000",
               end="2026-11-24T17:50:00.000000") -> dict:
    return {
        "id": f"id-{name}", "name": name, "status": status, "user_id": "u", "project_id": "p",
        "created_at": "2026-11-24 14:32:00", "start_date": start, "end_date": end,
        "reservations": [{"id": "r1", "resource_type": "physical:host", "min": 1, "max": 1,
                          "resource_properties": json.dumps(["==", "$node_name", node])}],
    }


@pytest.fixture
def blazar():
    """A fake Blazar client with no leases; `leases` holds those it knows."""
    client = mock.MagicMock()
    leases: dict[str, dict] = {}

    def get(ref):
        for lease in leases.values():
            if ref in (lease["id"], lease["name"]):
                return lease
        raise BlazarClientException("not found", code=404)

    def create(name, start, end, reservations, events):
        leases[name] = lease_json(name, "PENDING", json.loads(reservations[0]["resource_properties"])[2]
                                  if reservations[0]["resource_type"] == "physical:host" else "")
        return leases[name]

    client.lease.get.side_effect = get
    client.lease.list.side_effect = lambda: list(leases.values())
    client.lease.create.side_effect = create
    client.host.list.return_value = HOSTS
    client.leases = leases
    with mock.patch("chi.lease.blazar", return_value=client):
        yield client


def test_submit_sends_the_exact_lease_request(blazar, capsys):
    start, end = t("2026-11-24 15:00"), t("2026-11-24 17:50")
    lease = reservation.submit(NVIDIA, "mlflow_abc123", "liqid01", start, end)
    blazar.lease.create.assert_called_once()
    request = blazar.lease.create.call_args.kwargs
    assert request["name"] == "mlflow_abc123"
    assert (request["start"], request["end"]) == ("2026-11-24 15:00", "2026-11-24 17:50")
    [host] = request["reservations"]
    assert host["resource_type"] == "physical:host" and (host["min"], host["max"]) == (1, 1)
    assert json.loads(host["resource_properties"]) == ["==", "$node_name", "liqid01"]
    assert lease.status == "PENDING"
    assert "PENDING: it starts at 2026-11-24 15:00 UTC" in capsys.readouterr().out


def test_submitting_again_finds_the_lease_and_makes_no_second(blazar, capsys):
    start, end = reservation.next_block()
    reservation.submit(NVIDIA, "mlflow_abc123", "liqid01", start, end)
    again = reservation.submit(NVIDIA, "mlflow_abc123", "liqid01", start, end)
    assert blazar.lease.create.call_count == 1
    assert again.name == "mlflow_abc123" and "found lease 'mlflow_abc123'" in capsys.readouterr().out


def test_a_lease_of_that_name_on_another_host_is_reported(blazar):
    blazar.leases["mlflow_abc123"] = lease_json("mlflow_abc123", "ACTIVE", node="liqid02")
    with pytest.raises(reservation.ReservationError) as error:
        reservation.submit(NVIDIA, "mlflow_abc123", "liqid01", *reservation.next_block())
    assert "reserves 'liqid02', not 'liqid01'" in str(error.value) and "another lease_name" in str(error.value)
    blazar.lease.create.assert_not_called()


def test_a_lease_in_error_says_what_to_do(blazar):
    blazar.leases["mlflow_abc123"] = lease_json("mlflow_abc123", "ERROR")
    with pytest.raises(reservation.ReservationError, match="is in ERROR.*release"):
        reservation.submit(NVIDIA, "mlflow_abc123", "liqid01", *reservation.next_block())


def test_pending_says_when_it_starts():
    lease = mock.Mock(status="PENDING", start_date=datetime(2026, 11, 24, 17, 0), end_date=datetime(2026, 11, 24, 19, 50))
    lease.name = "mlflow_abc123"
    text = reservation.describe(lease, now=t("2026-11-24 14:32"))
    assert text == ("lease mlflow_abc123 is PENDING: it starts at 2026-11-24 17:00 UTC (in 2 h 28 min). "
                    "Come back then; nothing else to do now.")
    lease.status = "ACTIVE"
    assert "ACTIVE until 2026-11-24 19:50 UTC" in reservation.describe(lease)


def test_an_unknown_host_lists_the_hosts_of_that_type(blazar):
    with pytest.raises(reservation.ReservationError) as error:
        reservation.submit(NVIDIA, "mlflow_abc123", "liqid09", *reservation.next_block())
    assert "no host named 'liqid09'" in str(error.value) and "liqid01, liqid02" in str(error.value)
    blazar.lease.create.assert_not_called()


def test_a_host_of_another_type_is_refused(blazar):
    with pytest.raises(reservation.ReservationError, match="is a gpu_mi100, not a compute_liqid"):
        reservation.submit(NVIDIA, "mlflow_abc123", "P3-GPU-001", *reservation.next_block())
    blazar.lease.create.assert_not_called()


@pytest.mark.parametrize("lease_name,node_name,message", [
    ("", "liqid01", "lease_name is empty"),
    ("mlflow abc", "liqid01", "may hold only letters"),
    ("mlflow_abc123", "", "node_name is empty"),
    ("mlflow_abc123", "liqid01; rm -rf", "may hold only letters"),
])
def test_bad_names_are_refused_before_any_call(blazar, lease_name, node_name, message):
    with pytest.raises(parameters.ParameterError, match=message):
        reservation.submit(NVIDIA, lease_name, node_name, *reservation.next_block())
    assert blazar.mock_calls == []


def test_the_free_window_comes_from_the_hosts_allocations(blazar):
    blazar.host.get_allocation.return_value = {"resource_id": "h1", "reservations": [
        {"id": "x", "lease_id": "l", "start_date": "2026-11-24T14:00:00.000000", "end_date": "2026-11-24T18:50:00.000000"},
    ]}
    window = reservation.choose_window(NVIDIA, "liqid01", 3, "free", now=t("2026-11-24 14:32"))
    blazar.host.get_allocation.assert_called_once_with("h1")
    assert window == (t("2026-11-24 19:00"), t("2026-11-24 21:50"))


def test_the_vm_variant_reserves_a_flavor(blazar):
    flavor = mock.Mock(id="flavor-h100")
    with mock.patch("chi.server.get_flavor", return_value=flavor):
        reservation.submit(VM, "mlflow_abc123", None, *reservation.next_block())
    [request] = blazar.lease.create.call_args.kwargs["reservations"]
    assert request["resource_type"] == "flavor:instance" and request["flavor_id"] == "flavor-h100"
    assert request["amount"] == 1
