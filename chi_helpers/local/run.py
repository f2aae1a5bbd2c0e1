"""`python -m chi_helpers run --target local`: execute the whole series in order with papermill.

Prepares the small data set, brings the local stack up, runs every notebook of the local build
(each in its own kernel, in its own folder, as a student would), brings the stack down unless
asked to keep it, and writes the executed notebooks and a report to an output folder. The first
notebook that fails stops the series: the ones after it depend on what it should have made.

The node-side notebooks edit the training scripts and commit the edit (their check cells apply the
reference solution: `apply_solution`). So they run in a copy of `workspace_mlflow`, a git repository
of its own made afresh under the work folder, and never touch this checkout.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

from chi_helpers.local import stack as local_stack
from chi_helpers.local.target import DEFAULT_WORKDIR, WORKSPACE, ensure_sample_data
from chi_helpers.progress import Clock
from chi_helpers.series import LOCAL_BUILD, notebooks_for
from chi_helpers.series.run import NotebookResult, finish, run_notebook, step
from chi_helpers.variants import DEFAULT_VARIANT

# Who commits the copy's first version (the students' edits commit as the git user, or the course's solution).
SNAPSHOT_IDENTITY = ["-c", "user.name=Local target", "-c", "user.email=local-target@localhost"]


def fresh_workspace(workdir: Path) -> Path:
    """A copy of the training scripts, their reference solutions and the local build's node-side
    notebooks, as a git repository with one commit; returns the folder of the notebooks."""
    copy = workdir / "workspace"
    if copy.exists():
        shutil.rmtree(copy)
    copy.mkdir(parents=True)
    for script in WORKSPACE.glob("*.py"):
        shutil.copy2(script, copy / script.name)
    if (WORKSPACE / "solutions").is_dir():
        shutil.copytree(WORKSPACE / "solutions", copy / "solutions")
    shutil.copytree(WORKSPACE / LOCAL_BUILD, copy / LOCAL_BUILD, ignore=shutil.ignore_patterns("executed", "deployed_model"))
    git = ["git", "-C", str(copy)]
    subprocess.run([*git, "init", "--quiet"], check=True)
    subprocess.run([*git, "add", "."], check=True)
    subprocess.run([*git, *SNAPSHOT_IDENTITY, "commit", "--quiet", "-m", "The series' training scripts"], check=True)
    return copy / LOCAL_BUILD


def run_series(
    target: str = "local",
    variant: str = DEFAULT_VARIANT,
    workdir: str | os.PathLike = DEFAULT_WORKDIR,
    output_dir: str | os.PathLike | None = None,
    port: int = local_stack.DEFAULT_PORT,
    keep_stack: bool = False,
    parameters: dict | None = None,
    restore_from: str | os.PathLike | None = None,
) -> dict:
    """Run the series; return the report (also written to the output folder)."""
    if target != "local":
        raise ValueError(f"target {target!r} cannot run from here yet: use --target local")
    from mlflow import MlflowClient

    clock = Clock()
    workdir = Path(workdir).resolve()
    out_dir = Path(output_dir or workdir / "output" / time.strftime("%Y%m%d-%H%M%S")).resolve()
    out_dir.mkdir(parents=True, exist_ok=True)
    data_dir = workdir / "Food-11"
    ensure_sample_data(data_dir, clock)
    stack = local_stack.up(workdir / "stack", port=port, clock=clock)
    node_side = fresh_workspace(workdir)

    # The kernels inherit this environment: the venv's python first on PATH (for `!python`), and the
    # two variables the node's Jupyter container sets.
    os.environ["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"
    os.environ.update(MLFLOW_TRACKING_URI=stack.url, FOOD11_DATA_DIR=str(data_dir))
    os.environ.setdefault("MLFLOW_SYSTEM_METRICS_SAMPLING_INTERVAL", "1")
    notebook_parameters = {
        "mlflow_port": port, "local_workdir": str(workdir), "data_dir": str(data_dir),
        "keep_stack": True,  # the runner stops it
        "apply_solution": True,  # nobody is at the keyboard to make the students' edits
        **({"restore_from": str(Path(restore_from).resolve())} if restore_from else {}),
        **(parameters or {}),
    }
    client = MlflowClient(stack.url)
    entries = notebooks_for("local")
    results: list[NotebookResult] = []
    try:
        for number, entry in enumerate(entries, 1):
            if results and results[-1].status != "passed":
                results.append(NotebookResult(entry.name, entry.side))
                continue
            copy = node_side / entry.name if entry.side == "node" else None
            results.append(step(clock, number, len(entries), entry, client,
                                lambda: run_notebook(entry, LOCAL_BUILD, out_dir, notebook_parameters, copy)))
    finally:
        if not keep_stack:
            local_stack.down(workdir / "stack", clock=clock)
    return finish(clock, target, LOCAL_BUILD, stack.url, keep_stack, out_dir, results, len(entries))
