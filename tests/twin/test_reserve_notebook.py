"""Notebook 01 on the chameleon target, against the twin: its checks before python-chi makes the lease.

The twin's clock runs in real time here, so a lease someone else holds in the next block stays in
the host's calendar for the whole test.
"""

from __future__ import annotations

import os
from datetime import timedelta
from pathlib import Path

import papermill as pm
import pytest

from chi_helpers.chameleon import openstack_rc, reservation
from chi_helpers.series import NOTEBOOKS, output_path
from chi_helpers import network_guard as guard

RESERVE = next(e for e in NOTEBOOKS if e.source.startswith("01_"))


@pytest.fixture
def headless(twin, monkeypatch):
    for key in list(os.environ):
        if key.startswith(("OS_", "CHI_RESOURCE")) or key == "JPY_SESSION_NAME":
            monkeypatch.delenv(key)
    for key, value in guard.environment({"PYTHONPATH": os.environ.get("PYTHONPATH", "")}).items():
        monkeypatch.setenv(key, value)


def reserve(twin, tmp_path: Path, variant: str = "nvidia", **parameters):
    """Notebook 01 in a kernel whose environment has the site's RC file loaded, as a run with --rc-file gives it."""
    source = output_path(RESERVE, variant)
    rc = openstack_rc.parse(Path(twin.kvm_rc_file if variant == "vm" else twin.rc_file).read_text())
    saved = {key: os.environ.get(key) for key in rc}
    os.environ.update(rc)
    try:
        return pm.execute_notebook(str(source), str(tmp_path / "out.ipynb"), cwd=str(source.parent),
                                   kernel_name="python3", progress_bar=False,
                                   kernel_manager_class="chi_helpers.series.quiet_kernel.QuietKernelManager",
                                   parameters={"user": "ci07", **parameters})
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


def someone_elses_lease(chi, twin, node: str = "liqid01"):
    import chi.lease

    start = reservation.next_hour(twin.world.now()).replace(tzinfo=None)
    taken = chi.lease.Lease("someone_else", start_date=start, end_date=start + timedelta(hours=4))
    taken.add_node_reservation(amount=1, node_name=node)
    taken.submit(idempotent=False, wait_for_active=False)
    return start


@pytest.mark.twin_speed(1)
def test_a_host_taken_in_the_next_block_is_refused_with_its_first_free_block_then_taken(chi, twin, headless, tmp_path):
    busy_from = someone_elses_lease(chi, twin)
    with pytest.raises(pm.PapermillExecutionError) as error:
        reserve(twin, tmp_path)
    assert error.value.ename == "ReservationError"
    free_from = reservation.next_hour(busy_from + timedelta(hours=4))  # the first full hour once the other lease ends
    assert "liqid01 is taken from " in error.value.evalue
    assert f"first free block is {free_from:%Y-%m-%d %H:%M}" in error.value.evalue and 'when = "free"' in error.value.evalue
    assert [lease["name"] for lease in twin.world.data["leases"].values()] == ["someone_else"]  # nothing made

    reserve(twin, tmp_path, when="free")
    mine = next(lease for lease in twin.world.data["leases"].values() if lease["name"] == "mlflow_ci07")
    assert reservation._parse(mine["start_date"]).replace(tzinfo=None) == free_from

    reserve(twin, tmp_path)  # a rerun: the same lease is found, none is made, the calendar is not asked again
    assert sorted(lease["name"] for lease in twin.world.data["leases"].values()) == ["mlflow_ci07", "someone_else"]


@pytest.mark.twin_speed(1)
def test_a_host_of_another_type_is_refused_before_any_lease(twin, headless, tmp_path):
    with pytest.raises(pm.PapermillExecutionError) as error:
        reserve(twin, tmp_path, node_name="P3-GPU-009")
    assert error.value.ename == "ReservationError" and "is a gpu_mi100, not a compute_liqid" in error.value.evalue
    assert twin.world.data["leases"] == {}


@pytest.mark.twin_speed(1)
def test_a_lease_of_that_name_on_another_host_is_refused(chi, twin, headless, tmp_path):
    reserve(twin, tmp_path, node_name="liqid02")
    with pytest.raises(pm.PapermillExecutionError) as error:
        reserve(twin, tmp_path, node_name="liqid01")
    assert "already exists and reserves 'liqid02'" in error.value.evalue
    assert len(twin.world.data["leases"]) == 1


@pytest.mark.twin_speed(1)
def test_no_h100_left_then_when_free_finds_a_later_block(twin, headless, tmp_path):
    """Blazar has no calendar for a flavor: "not enough resources" is answered for the block, and with
    when = "free" the notebook asks it for each later hour until one is taken."""
    twin.world.inject("flavor-exhausted")
    with pytest.raises(pm.PapermillExecutionError) as error:
        reserve(twin, tmp_path, variant="vm")
    assert error.value.ename == "NothingFree" and 'when = "free"' in error.value.evalue
    assert not twin.world.data["leases"]  # nothing made
    twin.world.inject("flavor-exhausted", count=2)
    before = twin.world.now()
    reserve(twin, tmp_path, variant="vm", when="free")
    after = twin.world.now()
    mine = next(lease for lease in twin.world.data["leases"].values() if lease["name"] == "mlflow_ci07")
    # The block the notebook asked for first is the next block of its own "now", somewhere between the two
    # (an hour may turn while it runs: at :59 it already asks for the hour after next).
    first_asked = {reservation.next_block(moment)[0] for moment in (before, after)}
    taken = reservation._parse(mine["start_date"])
    assert taken - timedelta(hours=2) in first_asked, (taken, first_asked)  # two hours refused, the third taken
