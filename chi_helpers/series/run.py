"""The runner core both targets drive: one notebook with papermill, a progress line per notebook
with the MLflow runs and model versions it made, and the report at the end.

`chi_helpers.local.run` drives it on this machine, `chi_helpers.chameleon.run` on a real node.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

from chi_helpers.progress import Clock
from chi_helpers.series import Entry, output_path
from chi_helpers.series.report import write_report


@dataclass
class NotebookResult:
    name: str
    side: str
    status: str = "not run"  # passed, failed, not run
    seconds: float = 0.0
    failing_cell: int | None = None  # execution count of the cell that raised
    error: str | None = None
    runs: list[dict] = field(default_factory=list)
    model_versions: list[dict] = field(default_factory=list)
    output: str | None = None


def _tracking_state(client) -> tuple[dict, dict]:
    """Every run and every registered model version the server has now, by id."""
    experiment_ids = [e.experiment_id for e in client.search_experiments()]
    runs = {r.info.run_id: r for r in client.search_runs(experiment_ids)} if experiment_ids else {}
    versions = {(v.name, v.version): v for v in client.search_model_versions()}
    return runs, versions


def _describe_run(run) -> dict:
    metrics = run.data.metrics
    return {
        "run_id": run.info.run_id,
        "name": run.info.run_name,
        "status": run.info.status,
        "params": len(run.data.params),
        **{k: metrics[k] for k in ("val_accuracy", "test_accuracy", "early_stopping_epoch") if k in metrics},
    }


def _failure(error: Exception) -> tuple[int | None, str]:
    """The failing cell's execution count and the error, from papermill's exception."""
    count = getattr(error, "exec_count", None)
    name, value = getattr(error, "ename", type(error).__name__), getattr(error, "evalue", str(error))
    return count, f"{name}: {value}"


def run_notebook(entry: Entry, build: str, out_dir: Path, parameters: dict, source: Path | None = None) -> NotebookResult:
    """Run `entry` of `build` (a variant's name, or `local`) in its own folder; `source` runs another copy of it."""
    import papermill as pm

    source = source or output_path(entry, build)
    target = out_dir / entry.name
    declared = pm.inspect_notebook(str(source))
    given = {k: v for k, v in parameters.items() if k in declared}
    result = NotebookResult(entry.name, entry.side, output=str(target))
    start = time.monotonic()
    try:
        pm.execute_notebook(
            str(source), str(target), parameters=given, cwd=str(source.parent),
            kernel_name="python3", progress_bar=False, request_save_on_cell_execute=False,
            kernel_manager_class="chi_helpers.series.quiet_kernel.QuietKernelManager",
        )
        result.status = "passed"
    except Exception as error:  # papermill's own errors, or a kernel that would not start
        result.status = "failed"
        result.failing_cell, result.error = _failure(error)
    result.seconds = time.monotonic() - start
    return result


def step(clock: Clock, number: int, total: int, entry: Entry, client, run) -> NotebookResult:
    """Run one notebook with a progress line, and note the MLflow runs and model versions it made."""
    clock.say(f"[{number}/{total}] {entry.name} ...")
    runs_before, versions_before = _tracking_state(client) if client else ({}, {})
    result = run()
    if client:
        runs_after, versions_after = _tracking_state(client)
        result.runs = [_describe_run(r) for i, r in runs_after.items() if i not in runs_before]
        result.model_versions = [
            {"name": v.name, "version": v.version, "run_id": v.run_id}
            for key, v in versions_after.items() if key not in versions_before
        ]
    detail = f", cell {result.failing_cell}: {result.error}" if result.status == "failed" else ""
    clock.say(f"[{number}/{total}] {entry.name} {result.status} in {result.seconds:.1f} s"
              f" ({len(result.runs)} run(s)){detail}")
    return result


def finish(clock: Clock, target: str, variant: str, mlflow_url: str | None, stack_kept: bool, out_dir: Path,
           results: list[NotebookResult], expected: int) -> dict:
    """The report of a series run (`expected` notebooks), written to `out_dir` and returned."""
    report = {
        "target": target,
        "variant": variant,
        "passed": len(results) == expected and all(r.status == "passed" for r in results),
        "seconds": clock.elapsed(),
        "mlflow_url": mlflow_url or "(never reached)",
        "stack_kept": stack_kept,
        "output_dir": str(out_dir),
        "notebooks": [asdict(r) for r in results],
    }
    paths = write_report(report, out_dir)
    clock.say(f"series {'PASSED' if report['passed'] else 'FAILED'} in {report['seconds']:.0f} s; "
              f"report: {paths['markdown']}")
    return report

