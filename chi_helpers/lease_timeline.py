"""The series on one lease: each step's minutes, in order, per variant, and what is left to spare.

The training figures are the variant profile's (the course's measurements on the two bare-metal
variants, an estimate for the VM); the runs the lesson stops early take the budget their notebook
gives them (its parameters cell: the same numbers, a test checks). The rest are the course's
figures for booting, setting up and the one-shot data job, rounded up.
"""

from __future__ import annotations

from chi_helpers.variants import Variant

LEASE_MINUTES = 3 * 60 - 10  # XX:00 to YY:50
# The runs that are stopped after a budget (the course stops them with Ctrl+C); notebooks 05 and 06
# declare the same values as parameters.
BASELINE_MINUTES = 3  # 05: the untracked PyTorch baseline
SLOW_RUN_MINUTES = 5  # 05: the tracked run with num_workers 0, long enough to see the GPU wait
UNTRACKED_LIGHTNING_MINUTES = 3  # 06: the untracked Lightning run
EVERY_RANK_MINUTES = 3  # 06: the run without the rank check
DATA_MINUTES = 2  # 03: the one-shot data job
STACK_MINUTES = 4  # 04: the tracking stack's images built or pulled, and its services healthy
EDIT_MINUTES = 5  # a student's edit of a training script in a terminal, and its commit (an estimate)


def steps(profile: Variant) -> list[tuple[str, str, int]]:
    """(notebook, what happens, minutes) in the order the series does them, once the lease is ACTIVE."""
    boots = "the VM boots" if profile.reservation == "flavor" else "the bare-metal server boots"
    return [
        ("02", boots, 10),
        ("02", "node setup: Docker, the GPU runtime; the Jupyter image starts building", 5),
        ("03", "the data job fills the food11 volume", DATA_MINUTES),
        ("04", "the tracking stack starts", STACK_MINUTES),
        # The build runs beside 03 and the stack's start: what is left of it is waited for in 04.
        ("04", "the Jupyter image build finishes (an estimate)",
         max(0, profile.image_build_minutes - DATA_MINUTES - STACK_MINUTES)),
        ("04", "the Jupyter container starts", 1),
        ("05", "untracked baseline (stopped)", BASELINE_MINUTES),
        ("05", "tracked run, num_workers 0 (stopped)", SLOW_RUN_MINUTES),
        ("05", "your edit: DataLoader workers, and its commit", EDIT_MINUTES),
        ("05", f"tracked run, num_workers {profile.fast_num_workers}", profile.tracked_run_minutes),
        ("05", "the runs in the MLflow UI", 10),
        ("06", "untracked Lightning run (stopped)", UNTRACKED_LIGHTNING_MINUTES),
        ("06", "tracked, two processes, two runs (stopped)", EVERY_RANK_MINUTES),
        ("06", "your edits: the rank check and the data settings, and their commits", EDIT_MINUTES),
        ("06", "tracked with the rank check", profile.lightning_run_minutes),
        ("06", "again with another learning rate", profile.lightning_run_minutes),
        ("06", "compare the two in the UI, find runs by search and tag", 5),
        ("07", "register, alias, load and predict (serving it: optional, with time to spare)", 2),
        ("08", "save an archive of the history, then release the lease", 10),
    ]


def render(profile: Variant) -> str:
    """The timeline as a table, from the lease's start, and the minutes to spare."""
    lines = [f"{'from':>5} {'to':>5}  notebook  step"]
    at = 0
    for notebook, what, minutes in steps(profile):
        lines.append(f"{at:4}' {at + minutes:4}'  {notebook:8}  {what} ({minutes} min)")
        at += minutes
    lines.append(f"done after about {at} min of the lease's {LEASE_MINUTES}: {LEASE_MINUTES - at} min to spare "
                 "(for a rerun, a look around, or a late start)")
    return "\n".join(lines)
