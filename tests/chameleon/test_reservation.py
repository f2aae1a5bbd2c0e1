"""Reserving the named host: the time block and free windows, worked out here. (What goes to Blazar is
tested against the twin: tests/twin/test_reservation_at_blazar.py.)"""

from __future__ import annotations

from datetime import datetime, timedelta, timezone
from unittest import mock

import pytest

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


# --- choosing the block (notebook 01's `when`) and showing the hosts --------------------------------

NOW = t("2026-12-06 12:32")


@pytest.mark.parametrize("when", ["2026-12-06 14:00", "2026-12-06T14:00", "2026-12-06T14:00Z", "2026-12-06 14:00 UTC",
                                  " 2026-12-06 14:00:00 utc ", "2026-12-06T14:00:00Z"])
def test_a_start_in_utc_is_taken_in_each_form(when):
    assert reservation.choose_start(when, 3, NOW) == (t("2026-12-06 14:00"), t("2026-12-06 16:50"))


def test_next_and_free_and_the_next_hour_written_out():
    assert reservation.choose_start("next", 2, NOW) == (t("2026-12-06 13:00"), t("2026-12-06 14:50"))
    assert reservation.choose_start("Next", 2, NOW) == reservation.next_block(NOW, 2)
    assert reservation.choose_start("free", 3, NOW) is None
    # The next hour, written out, is the same block as "next"; a minute before it, the hour after.
    assert reservation.choose_start("2026-12-06 13:00", 3, NOW) == reservation.choose_start("next", 3, NOW)
    assert reservation.choose_start("2026-12-06 13:00", 168, t("2026-12-06 12:58:59"))[1] == t("2026-12-13 12:50")


@pytest.mark.parametrize("when,said", [
    ("tomorrow", ["'tomorrow' is not a start", 'when = "next"', '"free"', '"2026-12-06 13:00"']),
    ("2026-12-06 14:00+02:00", ["is not a start", "in UTC"]),
    ("06/12/2026 14:00", ["is not a start", '"2026-12-06 13:00"']),
    (None, ["None is not a start"]),
    ("2026-02-30 14:00", ["names no such time", "day is out of range"]),
    ("2026-12-06 24:00", ["names no such time", "hour must be in 0..23"]),
    ("2026-12-06 14:30", ["starts at 14:30", "on the hour", 'when = "2026-12-06 14:00" or when = "2026-12-06 15:00"']),
    ("2026-12-06 12:45", ["starts at 12:45", 'write when = "2026-12-06 13:00".']),  # 12:00 is past: not offered
    ("2026-12-06 14:00:30", ["starts at 14:00:30", "on the hour"]),
    ("2026-12-06 12:00", ["is already past", "now 2026-12-06 12:32 UTC", '"2026-12-06 13:00"', 'when = "next"']),
    ("2025-12-06 14:00", ["is already past"]),
])
def test_a_start_that_cannot_be_used_says_why_and_what_to_write(when, said):
    with pytest.raises(parameters.ParameterError) as error:
        reservation.choose_start(when, 3, NOW)
    for words in said:
        assert words in str(error.value)


def test_a_start_under_a_minute_away_is_refused_as_blazar_would():
    with pytest.raises(parameters.ParameterError, match="less than a minute away.*\"2026-12-06 14:00\""):
        reservation.choose_start("2026-12-06 13:00", 3, t("2026-12-06 12:59:30"))


@pytest.mark.parametrize("hours", [0, -3, 169, 2.5, "3", True])
def test_hours_blazar_would_refuse_are_refused_first(hours):
    with pytest.raises(parameters.ParameterError) as error:
        reservation.choose_start("next", hours, NOW)
    assert f"hours = {hours!r} cannot be a lease" in str(error.value) and "from 1 to 168" in str(error.value)


def test_the_longest_block_fits_blazars_limit():
    start, end = reservation.choose_start("next", reservation.MAX_HOURS, NOW)
    assert (end - start).total_seconds() <= 7 * 24 * 3600  # MaxLeaseDurationFilter's 7 days


def test_show_hosts_marks_the_chosen_one_and_names_the_day_a_block_ends():
    rows = [("liqid03", (t("2026-12-06 13:00"), t("2026-12-06 15:50"))),
            ("liqid01", (t("2026-12-06 22:00"), t("2026-12-07 00:50")))]
    assert reservation.show_hosts(rows, chosen="liqid01").splitlines() == [
        "  host     first free block",
        "  liqid03  2026-12-06 13:00 to 15:50 UTC",
        "* liqid01  2026-12-06 22:00 to 2026-12-07 00:50 UTC",
    ]
    assert "*" not in reservation.show_hosts(rows)
    assert reservation.show_hosts(rows, "liqid09").endswith("(node_name 'liqid09' is not in this list)")
    assert reservation.show_hosts([]).startswith("no host to show")
