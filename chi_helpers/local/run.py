"""`python -m chi_helpers run --target local`: execute the whole series in order with papermill.

Prepares the small data set, brings the local stack up, runs every notebook of one variant
(each in its own kernel, in its own folder, as a student would), brings the stack down unless
asked to keep it, and writes the executed notebooks and a report to an output folder. The first
notebook that fails stops the series: the ones after it depend on what it should have made.
"""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

from chi_helpers.local import stack as local_stack
from chi_helpers.local.target import DEFAULT_WORKDIR, ensure_sample_data
from chi_helpers.progress import Clock
from chi_helpers.series import NOTEBOOKS
from chi_helpers.series.run import NotebookResult, finish, run_notebook, step
from chi_helpers.variants import DEFAULT_VARIANT


def run_series(
    target: str = "local",
    variant: str = DEFAULT_VARIANT,
    workdir: str | os.PathLike = DEFAULT_WORKDIR,
    output_dir: str | os.PathLike | None = None,
    port: int = local_stack.DEFAULT_PORT,
    keep_stack: bool = False,
    parameters: dict | None = None,
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

    # The kernels inherit this environment: the venv's python first on PATH (for `!python`), and the
    # two variables the node's Jupyter container sets.
    os.environ["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"
    os.environ.update(MLFLOW_TRACKING_URI=stack.url, FOOD11_DATA_DIR=str(data_dir))
    os.environ.setdefault("MLFLOW_SYSTEM_METRICS_SAMPLING_INTERVAL", "1")
    notebook_parameters = {
        "variant": variant, "target": target, "mlflow_port": port, "local_workdir": str(workdir),
        "data_dir": str(data_dir), "tracking_uri": stack.url, "keep_stack": True,  # the runner stops it
        **(parameters or {}),
    }
    client = MlflowClient(stack.url)
    results: list[NotebookResult] = []
    try:
        for number, entry in enumerate(NOTEBOOKS, 1):
            if results and results[-1].status != "passed":
                results.append(NotebookResult(entry.name, entry.side))
                continue
            results.append(step(clock, number, entry, client,
                                lambda: run_notebook(entry, variant, out_dir, notebook_parameters)))
    finally:
        if not keep_stack:
            local_stack.down(workdir / "stack", clock=clock)
    return finish(clock, target, variant, stack.url, keep_stack, out_dir, results)
