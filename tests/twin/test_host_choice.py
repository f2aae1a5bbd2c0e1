"""Notebook 01's host list, against the twin's Blazar: every host of the variant's node type with its
first free block, read from each host's allocations through python-chi's Blazar client."""

from __future__ import annotations

import logging
from datetime import timedelta

import pytest

from chi_helpers.chameleon import login, reservation
from chi_helpers.twin import blazar as twin_blazar
from chi_helpers.variants import VARIANTS

NVIDIA, AMD, VM = VARIANTS["nvidia"], VARIANTS["amd"], VARIANTS["vm"]
HOUR = timedelta(hours=1)

# The clock at speed 1: a lease stays PENDING and on its host's calendar for the whole test.
pytestmark = pytest.mark.twin_speed(1)


@pytest.fixture
def blazar(twin, clean_environment, chi_at_twin):
    login.sign_in(str(twin.rc_file), "", "CHI@TACC", say=lambda _: None)
    return twin


def add_host(twin, name: str, node_type: str, **changes) -> dict:
    """A bare-metal host in the twin's Blazar, as its inventory makes them (`changes` on top)."""
    made = twin_blazar._host_record(name, node_type, 64, 512, 960, "A100", 2, "AMD EPYC 7352", "2025-01-01 00:00:00")
    host = {**made, **changes}
    with twin.world.lock:
        twin.world.data["hosts"][host["id"]] = host
    return host


@pytest.fixture
def busy_liqids(blazar):
    """compute_liqid hosts: liqid01 taken for the next block, liqid02 from an hour later, liqid03
    idle, liqid04 not reservable. The gpu_mi100 hosts (the twin's inventory) are idle too."""
    start = reservation.next_block()[0]
    add_host(blazar, "liqid03", "compute_liqid")
    add_host(blazar, "liqid04", "compute_liqid", reservable=False)
    reservation.submit(NVIDIA, "someone_on_01", "liqid01", *reservation.block(start, 3))
    reservation.submit(NVIDIA, "someone_on_02", "liqid02", *reservation.block(start + HOUR, 3))
    return start


def test_each_host_of_the_type_with_its_first_free_block_soonest_first(busy_liqids):
    start = busy_liqids
    rows = reservation.hosts_with_free_blocks(NVIDIA, 3, start)
    assert rows == [
        ("liqid03", reservation.block(start, 3)),  # idle
        ("liqid01", reservation.block(start + 3 * HOUR, 3)),  # its lease ends at :50, the next block starts on the hour
        ("liqid02", reservation.block(start + 4 * HOUR, 3)),  # 3 h from `start` would run into its lease
    ]
    assert all(end - begin == timedelta(hours=2, minutes=50) for _, (begin, end) in rows)


def test_a_shorter_block_fits_before_a_lease_and_equal_starts_go_by_name(busy_liqids):
    start = busy_liqids
    # One hour ends at :50, ten minutes before liqid02's lease starts.
    assert reservation.hosts_with_free_blocks(NVIDIA, 1, start) == [
        ("liqid02", reservation.block(start, 1)),
        ("liqid03", reservation.block(start, 1)),
        ("liqid01", reservation.block(start + 3 * HOUR, 1)),
    ]
    assert [name for name, _ in reservation.hosts_with_free_blocks(NVIDIA, 1, start, limit=2)] == ["liqid02", "liqid03"]


def test_a_later_earliest_start_and_one_off_the_hour(busy_liqids):
    start = busy_liqids
    later = reservation.hosts_with_free_blocks(NVIDIA, 3, start + 2 * HOUR)
    assert dict(later) == {"liqid03": reservation.block(start + 2 * HOUR, 3),
                           "liqid01": reservation.block(start + 3 * HOUR, 3),
                           "liqid02": reservation.block(start + 4 * HOUR, 3)}
    # A start between hours counts from the next hour: a lease cannot start there.
    assert reservation.hosts_with_free_blocks(NVIDIA, 3, start + timedelta(minutes=20)) == \
        reservation.hosts_with_free_blocks(NVIDIA, 3, start + HOUR)


def test_amd_lists_its_own_hosts_only(busy_liqids):
    start = busy_liqids
    rows = reservation.hosts_with_free_blocks(AMD, 3, start)
    assert rows == [(name, reservation.block(start, 3)) for name in ("P3-GPU-009", "P3-GPU-010", "P3-GPU-011")]


def test_a_host_whose_calendar_cannot_be_read_is_left_out(blazar, busy_liqids, caplog):
    start = busy_liqids
    # Listed by Blazar, but gone when its allocation is asked for (deleted meanwhile): a 404.
    gone = twin_blazar._host_record("liqid05", "compute_liqid", 64, 512, 960, "A100", 2, "AMD EPYC 7352",
                                    "2025-01-01 00:00:00")
    with blazar.world.lock:
        blazar.world.data["hosts"]["listed-only"] = {**gone, "id": "no-longer-there"}
    with caplog.at_level(logging.WARNING, logger="chi_helpers.chameleon.reservation"):
        rows = reservation.hosts_with_free_blocks(NVIDIA, 3, start)
    assert [name for name, _ in rows] == ["liqid03", "liqid01", "liqid02"]
    assert "left out liqid05: its calendar could not be read" in caplog.text and "not found" in caplog.text


def test_a_flavor_has_no_host_list_and_nothing_is_asked(blazar):
    before = (blazar.world.state_dir / "requests.log").read_text()
    with pytest.raises(ValueError, match="a flavor has no host list"):
        reservation.hosts_with_free_blocks(VM, 3, reservation.next_block()[0])
    assert (blazar.world.state_dir / "requests.log").read_text() == before


def test_the_table_the_notebook_prints(busy_liqids):
    start = busy_liqids
    table = reservation.show_hosts(reservation.hosts_with_free_blocks(NVIDIA, 3, start), chosen="liqid01")
    first, *lines = table.splitlines()
    assert first.split() == ["host", "first", "free", "block"]
    assert lines[0].startswith(f"  liqid03  {start:%Y-%m-%d %H:%M} to ")
    assert lines[1].startswith("* liqid01  ") and lines[2].startswith("  liqid02  ")
    assert len(lines) == 3 and "liqid04" not in table and "P3-GPU" not in table
