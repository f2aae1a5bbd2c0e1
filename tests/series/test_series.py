"""The notebook series: built from one source per variant, and executed headless with papermill."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import nbformat
import papermill as pm
import pytest
from mlflow import MlflowClient

from chi_helpers.series import build
from chi_helpers.local import stack as local_stack
from chi_helpers.local import processes
from chi_helpers.local import run as local_run
from chi_helpers.series import NOTEBOOKS, REPO_ROOT, output_path
from chi_helpers.variants import VARIANTS

BUILT = [(entry, variant) for variant in VARIANTS for entry in NOTEBOOKS]
# Small enough for a few seconds a training on two cores.
TEST_TRAINING = {"image_size": 32, "initial_epochs": 1, "total_epochs": 2, "pretrained": False,
                 "lr": 3e-3, "fine_tune_lr": 1e-3}


# --- building -----------------------------------------------------------------------------------

def test_committed_notebooks_and_pages_match_their_source():
    assert build.build(check=True) == 0


@pytest.mark.parametrize("entry,variant", BUILT, ids=[f"{v}/{e.name}" for e, v in BUILT])
def test_each_notebook_opens_with_a_parameters_cell_and_has_no_outputs(entry, variant):
    nb = nbformat.read(output_path(entry, variant), as_version=4)
    code = [c for c in nb.cells if c.cell_type == "code"]
    assert code[0].metadata.get("tags") == ["parameters"]
    assert sum("parameters" in c.metadata.get("tags", []) for c in nb.cells) == 1
    # What a student opens on the JupyterHub or on the node does the real thing.
    assert f'variant = "{variant}"' in code[0].source and 'target = "chameleon"' in code[0].source
    assert all(c.outputs == [] and c.execution_count is None for c in code)


@pytest.mark.parametrize("entry,variant", BUILT, ids=[f"{v}/{e.name}" for e, v in BUILT])
def test_the_setup_cell_comes_right_after_the_parameters(entry, variant):
    code = [c for c in nbformat.read(output_path(entry, variant), as_version=4).cells if c.cell_type == "code"]
    assert code[1].metadata.get("tags") == ["setup"]
    assert f'kernel_setup.prepare(target, side="{entry.side}")' in code[1].source
    # Nothing before it imports the helpers: a kernel without the package must get this far.
    assert "chi_helpers" not in code[0].source


def test_start_here_links_each_variants_first_notebook():
    nb = nbformat.read(build.START_HERE, as_version=4)
    text = "\n".join(c.source for c in nb.cells)
    for variant in VARIANTS:
        link = f"notebooks/{variant}/00_introduction.ipynb"
        assert f"]({link})" in text and (REPO_ROOT / link).is_file()


def test_the_chameleon_cells_check_the_login_before_python_chi():
    for variant in VARIANTS:
        for entry in NOTEBOOKS:
            if entry.side != "testbed":
                continue
            cells = [c.source for c in nbformat.read(output_path(entry, variant), 4).cells if c.cell_type == "code"]
            first = next((c for c in cells if "from chi import" in c), None)
            if first is None:
                continue  # this notebook makes no python-chi call
            # The first cell that imports python-chi checks the login before it.
            assert "login.check(" in first, (variant, entry.name)
            assert first.index("login.check(") < first.index("from chi import")


def text_of(variant: str) -> str:
    return "\n".join(
        cell.source for entry in NOTEBOOKS for cell in nbformat.read(output_path(entry, variant), 4).cells
    )


def test_each_variant_gets_only_its_own_instructions():
    nvidia, amd, vm = text_of("nvidia"), text_of("amd"), text_of("vm")
    assert "watch -n 1 nvidia-smi" in nvidia and "watch -n 1 nvidia-smi" not in amd
    assert "rocm-smi" in amd and "rocm-smi" not in nvidia and "rocm-smi" not in vm
    assert "add_flavor_reservation" in vm and "add_flavor_reservation" not in nvidia + amd
    assert "We reserve the host\n**by name**" in nvidia and "by name" not in vm.split("# Bring up")[0]
    assert "add_node_reservation" in nvidia and "add_node_reservation" in amd and "add_node_reservation" not in vm
    assert "we open SSH (22), Jupyter (8888)" in vm and "we open SSH (22)" not in nvidia + amd
    assert "compute_liqid" in nvidia and "gpu_mi100" not in nvidia
    assert "{{" not in nvidia + amd + vm  # every substitution was made


def test_pages_exist_for_every_variant_and_the_index_links_them():
    index = (build.SITE_DIR / "index.html").read_text()
    for variant in VARIANTS:
        page = (build.SITE_DIR / f"{variant}.html").read_text()
        assert "Reserve the GPU host" in page and "The model registry, through the API" in page
        assert f'href="{variant}.html"' in index


def test_pages_share_one_stylesheet():
    css = (build.SITE_DIR / build.SHARED_CSS).read_text()
    assert ".jp-Cell" in css and "<style" not in css
    for page in ["index", *VARIANTS]:
        html = (build.SITE_DIR / f"{page}.html").read_text()
        assert '<link rel="stylesheet" href="nbconvert.css">' in html and "<style" not in html


@pytest.mark.parametrize("source,message", [
    ("```python\nprint(1)\n", "not closed"),
    ("::: intel\ntext\n:::\n", "unknown variant(s) ['intel']"),
    ("::: nvidia\n::: amd\n:::\n:::\n", "inside another"),
    (":::\n", "closes nothing"),
    ("Hello {{ nonsense }}\n", "{{ nonsense }} is not a field"),
])
def test_source_mistakes_are_named(source, message):
    with pytest.raises(build.SourceError) as error:
        build.parse(source, VARIANTS["nvidia"], "x.md")
    assert message in str(error.value) and "x.md" in str(error.value)


def test_parse_keeps_display_fences_as_markdown_and_tags_parameters():
    cells = build.parse("# T\n```bash\nls\n```\n```python parameters\na = 1\n```\nafter {{ site }}\n",
                        VARIANTS["amd"])
    assert [c.kind for c in cells] == ["markdown", "code", "markdown"]
    assert "```bash" in cells[0].text and cells[1].tags == ("parameters",)
    assert cells[2].text == "after CHI@TACC"


def test_check_fails_on_a_drifted_or_stray_file():
    target = output_path(NOTEBOOKS[0], "amd")
    original = target.read_text()
    stray = build.SITE_DIR / "old.html"
    try:
        target.write_text(original.replace("Experiment tracking", "Experiment trackin"))
        stray.write_text("left over")
        assert build.build(check=True, stream=open("/dev/null", "w")) == 1
        assert build.stale_outputs(build.expected_files()) == [stray]
    finally:
        target.write_text(original)
        stray.unlink(missing_ok=True)
    assert build.build(check=True, stream=open("/dev/null", "w")) == 0


# --- bad parameters fail in the first cells ------------------------------------------------------

@pytest.mark.parametrize("notebook,parameters,message", [
    ("00_introduction", {"variant": "intel"}, "unknown variant 'intel': set variant to one of"),
    ("00_introduction", {"target": "cloud"}, "unknown target 'cloud': set target to 'local'"),
    ("01_reserve", {"lease_name": ""}, "lease_name is empty: set it in the parameters cell"),
    ("01_reserve", {"lease_name": "my lease!"}, "may hold only letters"),
    ("08_release", {"user": "a/b"}, "user 'a/b' may hold only"),
])
def test_a_bad_parameter_stops_the_notebook_at_its_check(notebook, parameters, message, tmp_path):
    entry = next(e for e in NOTEBOOKS if e.source.startswith(notebook))
    source = output_path(entry, "nvidia")
    with pytest.raises(pm.PapermillExecutionError) as error:
        pm.execute_notebook(str(source), str(tmp_path / "out.ipynb"), parameters=parameters,
                            cwd=str(source.parent), progress_bar=False, kernel_name="python3")
    assert error.value.ename == "ParameterError" and message in error.value.evalue
    executed = nbformat.read(tmp_path / "out.ipynb", 4)
    failed = next(c for c in executed.cells if c.cell_type == "code" and any(o.get("output_type") == "error" for o in c.outputs))
    assert "parameters.check" in failed.source  # the first cell after the parameters, not later


def test_a_notebook_runs_alone_with_the_papermill_cli(tmp_path):
    source = output_path(NOTEBOOKS[0], "nvidia")
    done = subprocess.run(
        [sys.executable, "-m", "papermill", str(source), str(tmp_path / "out.ipynb"), "-p", "variant", "amd",
         "-p", "target", "local", "--cwd", str(source.parent)],
        capture_output=True, text=True, timeout=300,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    shown = next(c for c in nbformat.read(tmp_path / "out.ipynb", 4).cells if "profile.as_dict()" in c.source)
    outputs = json.dumps(shown.outputs)
    assert "gpu_mi100" in outputs and "rocm-smi" in outputs


# --- the whole series, headless, on the local target ---------------------------------------------

@pytest.fixture(scope="module")
def series(tmp_path_factory):
    """One run of the whole series; the stack is kept for the checks, then stopped."""
    workdir = tmp_path_factory.mktemp("series")
    port = processes.free_port()
    report = local_run.run_series(
        workdir=workdir, output_dir=workdir / "out", port=port, keep_stack=True,
        parameters={"training_overrides": TEST_TRAINING, "download_dir": str(workdir / "deployed")},
    )
    stack = local_stack.read_state(workdir / "stack")
    yield report, MlflowClient(stack.url), workdir
    local_stack.down(workdir / "stack")


def by_name(report: dict) -> dict:
    return {nb["name"].removesuffix(".ipynb"): nb for nb in report["notebooks"]}


def test_the_whole_series_passes_and_reports(series):
    report, _, workdir = series
    assert report["passed"], json.dumps(report, indent=1)[:4000]
    assert [nb["status"] for nb in report["notebooks"]] == ["passed"] * len(NOTEBOOKS)
    out = workdir / "out"
    assert json.loads((out / "report.json").read_text())["passed"] is True
    assert "| 05_track_pytorch.ipynb | passed |" in (out / "report.md").read_text()
    assert "Series run: PASSED" in (out / "report.html").read_text()
    for entry in NOTEBOOKS:
        executed = nbformat.read(out / entry.name, 4)
        assert any(c.get("outputs") for c in executed.cells if c.cell_type == "code")


def test_tracking_notebook_leaves_a_baseline_and_two_tracked_runs(series):
    report, client, workdir = series
    runs = [client.get_run(r["run_id"]) for r in by_name(report)["05_track_pytorch"]["runs"]]
    assert sorted(r.data.params["num_workers"] for r in runs) == ["0", "2"]  # the utilization lesson
    head = subprocess.run(["git", "-C", str(REPO_ROOT), "rev-parse", "HEAD"], capture_output=True, text=True).stdout.strip()
    for run in runs:
        assert run.info.status == "FINISHED"
        assert run.data.params["image_size"] == "32" and run.data.params["total_epochs"] == "2"
        assert {"epoch_time", "val_loss", "test_accuracy", "trainable_params"} <= set(run.data.metrics)
        assert [m.step for m in client.get_metric_history(run.info.run_id, "val_loss")] == [0, 1]
        if head:  # run from a git checkout (as CI's clone is): each run names its commit
            assert run.data.tags["mlflow.source.git.commit"] == head
    executed = nbformat.read(workdir / "out" / "05_track_pytorch.ipynb", 4)
    said = "".join(o.get("text", "") for c in executed.cells for o in c.get("outputs", []))
    assert "Wall time:" in said  # every training cell says how long it took
    assert ("= this checkout's HEAD" in said) == bool(head)


def test_lightning_notebook_shows_the_rank_check_then_two_runs_differing_in_lr_only(series):
    report, client, workdir = series
    runs = [client.get_run(r["run_id"]) for r in by_name(report)["06_lightning"]["runs"]]
    every_rank = [r for r in runs if r.data.params.get("log_every_rank") == "True"]
    checked = [r for r in runs if r.data.params.get("log_every_rank") == "False"]
    # Without the rank check one training (two processes on the CPU) made two runs, one of them with
    # system metrics only; with it, one run per training.
    assert len(every_rank) == 2 and len(checked) == 2 and len(runs) == 4
    training_metrics = sorted(len([k for k in r.data.metrics if not k.startswith("system/")]) for r in every_rank)
    assert training_metrics[0] == 0 and training_metrics[1] > 0
    first, second = sorted(checked, key=lambda r: r.info.start_time)
    assert float(second.data.params["lr"]) == pytest.approx(float(first.data.params["lr"]) / 3)
    differing = {k for k in first.data.params if first.data.params[k] != second.data.params.get(k)}
    assert differing == {"lr"}
    for run in checked:
        assert {"train_loss", "val_loss", "test_accuracy"} <= set(run.data.metrics)
    executed = nbformat.read(workdir / "out" / "06_lightning.ipynb", 4)
    said = "".join(o.get("text", "") for c in executed.cells for o in c.get("outputs", []))
    assert "one training, 2 run(s):" in said and "system metrics only" in said
    assert "from autologging alone:" in said and "optimizer_name=Adam" in said


def test_the_lease_timeline_fits_and_uses_the_budgets_the_notebooks_declare():
    from chi_helpers import lease_timeline

    declared = {}
    for name in ("05_track_pytorch.ipynb", "06_lightning.ipynb"):
        declared.update(pm.inspect_notebook(str(REPO_ROOT / "workspace_mlflow" / "nvidia" / name)))
    assert declared["baseline_minutes"]["default"] == str(lease_timeline.BASELINE_MINUTES)
    assert declared["slow_run_minutes"]["default"] == str(lease_timeline.SLOW_RUN_MINUTES)
    assert declared["untracked_minutes"]["default"] == str(lease_timeline.UNTRACKED_LIGHTNING_MINUTES)
    assert declared["every_rank_minutes"]["default"] == str(lease_timeline.EVERY_RANK_MINUTES)
    for profile in VARIANTS.values():
        total = sum(minutes for _, _, minutes in lease_timeline.steps(profile))
        # Room to spare for a late start or a rerun: the ROCm image's build (about 40 min, mostly its 10 GB
        # base) leaves the amd node the least.
        assert lease_timeline.LEASE_MINUTES - total >= 40, (profile.name, total)
        assert f"{lease_timeline.LEASE_MINUTES - total} min to spare" in lease_timeline.render(profile)


def test_registry_notebook_registers_the_best_run_and_downloads_it(series):
    report, client, workdir = series
    # The best run's version, then the runner-up's (the report lists them in the server's order).
    best_version, newer = sorted(by_name(report)["07_registry"]["model_versions"], key=lambda v: int(v["version"]))
    assert best_version["name"] == newer["name"] == "food11-staging"
    assert int(newer["version"]) == int(best_version["version"]) + 1
    # (06's second-rank run, made without the rank check, has system metrics only: no test score.)
    finished = [r for nb in report["notebooks"] for r in nb["runs"] if r["status"] == "FINISHED" and "test_accuracy" in r]
    best = max(finished, key=lambda r: r["test_accuracy"])
    assert client.get_run(best_version["run_id"]).data.metrics["test_accuracy"] == best["test_accuracy"]
    # The alias names the best run's version, though the runner-up's is the latest.
    champion = client.get_model_version_by_alias("food11-staging", "champion")
    assert champion.version == best_version["version"]
    downloaded = workdir / "deployed"
    assert (downloaded / "MLmodel").exists() and (downloaded / "data" / "model.pth").stat().st_size > 1_000_000
    # The deployment job's last step: the champion loaded and a few evaluation photos predicted.
    executed = nbformat.read(workdir / "out" / "07_registry.ipynb", 4)
    predicted = "".join(o.get("text", "") for c in executed.cells if "argmax" in c.source for o in c.outputs)
    assert " of 6 right" in predicted
    assert sum(line.split()[0].startswith("class_") for line in predicted.splitlines() if line) == 6


def test_a_failing_notebook_stops_the_series_and_is_reported(tmp_path, capfd):
    report = local_run.run_series(workdir=tmp_path, output_dir=tmp_path / "out", port=processes.free_port(),
                                   parameters={"target": "cloud"})
    assert report["passed"] is False
    first, *rest = report["notebooks"]
    assert first["status"] == "failed" and "unknown target 'cloud'" in first["error"]
    assert first["failing_cell"] is not None
    assert {nb["status"] for nb in rest} == {"not run"}
    assert local_stack.read_state(tmp_path / "stack") is None  # stopped afterwards
    assert "FAILED" in (tmp_path / "out" / "report.md").read_text()
    assert "without encryption" not in capfd.readouterr().err  # the kernels talk over local sockets
