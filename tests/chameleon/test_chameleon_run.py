"""The chameleon runner's wait for the lease: a line per poll, a timeout that says what to do. (The
whole run, node-side notebooks over SSH and the report, runs against the twin:
tests/twin/test_chameleon_series.py.)"""

from __future__ import annotations

from unittest import mock

import pytest

from chi_helpers.chameleon import run as chameleon_run
from chi_helpers.chameleon import reservation


def fake_lease(status: str):
    lease = mock.Mock(status=status, start_date="2026-11-24 15:00", end_date="2026-11-24 17:50")
    lease.name = "mlflow_abc123"
    return lease


def test_waits_with_a_line_per_poll_until_active(capsys):
    statuses = iter(["PENDING", "PENDING", "ACTIVE"])
    sleeps = []
    with mock.patch.object(reservation, "existing_lease", side_effect=lambda name: fake_lease(next(statuses))):
        lease = chameleon_run.wait_for_active("mlflow_abc123", timeout=3600, poll=60, sleep=sleeps.append)
    assert lease.status == "ACTIVE" and sleeps == [60, 60]
    out = capsys.readouterr().out
    assert out.count("is PENDING: it starts at 2026-11-24 15:00 UTC") == 2 and "ACTIVE until" in out


def test_gives_up_after_the_timeout_saying_what_to_do():
    with mock.patch.object(reservation, "existing_lease", return_value=fake_lease("PENDING")):
        with pytest.raises(reservation.ReservationError, match="still PENDING after 0 min.*safe to repeat"):
            chameleon_run.wait_for_active("mlflow_abc123", timeout=0, sleep=lambda s: None)


@pytest.mark.parametrize("found,message", [(None, "no lease named"), ("ERROR", "is in ERROR")])
def test_missing_or_failed_leases_stop_the_wait(found, message):
    with mock.patch.object(reservation, "existing_lease", return_value=found and fake_lease(found)):
        with pytest.raises(reservation.ReservationError, match=message):
            chameleon_run.wait_for_active("mlflow_abc123", timeout=3600, sleep=lambda s: None)
