"""Reserving the named host: the time block and free windows, worked out here. (What goes to Blazar is
tested against the twin: tests/twin/test_reservation_at_blazar.py.)"""

from __future__ import annotations

from datetime import datetime, timedelta, timezone
from unittest import mock

import pytest

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

def test_free_window_from_the_block_a_notebook_chose_a_minute_before_the_hour():
    # Notebook 01 picks its block first (02:00 at 01:59:30); the calendar check must start from that
    # block, not from "the next full hour a minute from now" (03:00), or an idle host looks taken.
    now = datetime(2026, 11, 30, 1, 59, 30, tzinfo=timezone.utc)
    chosen = datetime(2026, 11, 30, 2, 0, tzinfo=timezone.utc)
    assert reservation.free_window([], 3, now=now)[0] == chosen + timedelta(hours=1)
    assert reservation.free_window([], 3, now=now, earliest=chosen) == reservation.block(chosen)
    busy = [(chosen, chosen + timedelta(hours=2))]
    assert reservation.free_window(busy, 3, now=now, earliest=chosen)[0] == chosen + timedelta(hours=2)


def test_pending_says_when_it_starts():
    lease = mock.Mock(status="PENDING", start_date=datetime(2026, 11, 24, 17, 0), end_date=datetime(2026, 11, 24, 19, 50))
    lease.name = "mlflow_abc123"
    text = reservation.describe(lease, now=t("2026-11-24 14:32"))
    assert text == ("lease mlflow_abc123 is PENDING: it starts at 2026-11-24 17:00 UTC (in 2 h 28 min). "
                    "Come back then; nothing else to do now.")
    lease.status = "ACTIVE"
    assert "ACTIVE until 2026-11-24 19:50 UTC" in reservation.describe(lease)


# --- Blazar's refusals, as python-chi logs them (lower-cased), read and explained ------------------

START, END = t("2026-11-24 15:00"), t("2026-11-24 17:50")


def explained(logged: str, profile=NVIDIA) -> str:
    return reservation.explain(reservation.read_refusal(logged), profile, "mlflow_abc123", "liqid01", START, END)


@pytest.mark.parametrize("logged,kind", [
    ("error: not enough hosts available", "taken"),
    ("error: not enough resources available with query {'resource_type': 'physical:host'}", "taken"),
    ("there were not enough unreserved hosts to satisfy your request.", "taken"),  # python-chi's own words
    ("error: internal server error", "credential"),
    ("error: lease duration of 1209600 seconds must be less than or equal to the maximum lease duration of "
     "604800 seconds.", "too-long"),
    ("error: start date must be later than current date", "past"),
    ("error: reservation for project chi-000000 would spend 2.83 sus, only 0.00 left", "allocation"),
    ("error: reservation for user ada would spend 2.83 sus, only 1.00 left in user budget", "user-budget"),
    ("error: cannot create a lease beyond chameleon project expiration date. please ask your pi to request an "
     "allocation renewal. https://chameleoncloud.readthedocs.io/en/latest/user/project.html", "allocation-ends"),
    ("error: external service enforcement filter denied the request.", "allocation-check"),
    ("error: something new", "other"),
    (None, "unknown"),
])
def test_each_refusal_is_read_as_its_kind(logged, kind):
    assert reservation.read_refusal(logged).kind == kind


def test_the_allocation_refusals_say_what_the_numbers_mean():
    nothing = explained("error: reservation for project chi-000000 would spend 2.83 sus, only 0.00 left")
    assert "CHI-000000 has no Service Units (SUs) left" in nothing and "needs 2.83" in nothing and "PI" in nothing
    some = explained("error: reservation for project chi-000000 would spend 2.83 sus, only 1.20 left")
    assert "needs 2.83 SUs" in some and "only 1.20 left" in some and "fewer hours" in some
    budget = explained("error: reservation for user ada would spend 2.83 sus, only 1.00 left in user budget")
    assert "your own budget" in budget and "only 1.00 left" in budget and "PI" in budget
    ends = explained("error: cannot create a lease beyond chameleon project expiration date. please ask your pi")
    assert "after your project's allocation expires" in ends and "renew" in ends


def test_too_long_and_past_and_unknown_are_explained():
    long = explained("error: lease duration of 1209600 seconds must be less than or equal to the maximum lease "
                     "duration of 604800 seconds.")
    assert "at most 168 hours (7 days)" in long and "hours = 168" in long
    past = explained("error: start date must be later than current date")
    assert "2026-11-24 15:00 UTC, is already past" in past and "time block" in past
    other = explained("error: something new")
    assert "Blazar would not make lease 'mlflow_abc123'" in other and "something new" in other
    unknown = explained(None)
    assert "gave no reason" in unknown
