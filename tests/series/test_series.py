"""The notebook series: built from one source per variant and for the local target, and executed
headless with papermill."""

from __future__ import annotations

import ast
import json
import re
import subprocess
import sys
from pathlib import Path

import nbformat
import papermill as pm
import pytest
import yaml

from chi_helpers.series import build
from chi_helpers.local import stack as local_stack
from chi_helpers.local import processes
from chi_helpers.local import run as local_run
from chi_helpers.series import LOCAL_BUILD, NOTEBOOKS, REPO_ROOT, notebooks_for, output_path
from chi_helpers.variants import VARIANTS
from tracking_history import SignedIn, champion_predicts, history

BUILT = [(entry, variant, "chameleon") for variant in VARIANTS for entry in notebooks_for("chameleon")]
BUILT += [(entry, LOCAL_BUILD, "local") for entry in notebooks_for("local")]
IDS = [f"{b}/{e.name}" for e, b, _ in BUILT]
CHAMELEON = [(e, b) for e, b, t in BUILT if t == "chameleon"]
WORD_LIMIT = 150  # a markdown cell a student reads in one go
# Words and calls that exist for CI, rehearsals or the other target: none in what a student opens on Chameleon.
NOT_FOR_STUDENTS = ["target ==", "target =", "headless", "rehearsal", "twin", "follow_site_list", "rc_file",
                    "local target", "papermill", "CI"]


def cells_of(entry, build_name):
    return nbformat.read(output_path(entry, build_name), as_version=4).cells


def words(markdown: str) -> int:
    """The words a student reads: not code blocks, nor a figure's alt text (shown only without the picture)."""
    return len(re.sub(r"```.*?```|!\[[^\]]*\]\([^)]*\)", "", markdown, flags=re.S).split())


# --- building -----------------------------------------------------------------------------------

def test_committed_notebooks_and_pages_match_their_source():
    assert build.build(check=True) == 0


@pytest.mark.parametrize("entry,build_name,target", BUILT, ids=IDS)
def test_each_notebook_opens_with_a_parameters_cell_and_has_no_outputs(entry, build_name, target):
    code = [c for c in cells_of(entry, build_name) if c.cell_type == "code"]
    assert code[0].metadata.get("tags") == ["parameters"]
    assert sum("parameters" in c.metadata.get("tags", []) for c in code) == 1
    assert not re.search(r"^target\s*=", code[0].source, re.M)  # each build is for one target: nothing to choose
    assert all(c.outputs == [] and c.execution_count is None for c in code)


@pytest.mark.parametrize("entry,build_name,target", BUILT, ids=IDS)
def test_the_setup_cell_comes_right_after_the_parameters(entry, build_name, target):
    code = [c for c in cells_of(entry, build_name) if c.cell_type == "code"]
    folder = ("notebooks/" if entry.side == "testbed" else "workspace_mlflow/") + build_name
    assert code[1].metadata.get("tags") == ["setup"]
    assert f'series_setup.prepare("{target}", side="{entry.side}", folder="{folder}")' in code[1].source
    assert len(code[1].source.splitlines()) <= 3  # what a student reads there; the rest is in the file it names
    assert (output_path(entry, build_name).parent / "series_setup.py").read_text().endswith(
        (REPO_ROOT / "series_setup.py").read_text())
    # Nothing before it imports the helpers: a kernel without the package must get this far.
    assert "chi_helpers" not in code[0].source


def test_the_setup_module_beside_a_notebook_finds_its_series_and_else_the_installed_package(tmp_path):
    # A copy of the scripts outside the series (the local target's work folder): the installed package serves;
    # with no package either, the error says what to do.
    copy = tmp_path / "scripts" / "series_setup.py"
    copy.parent.mkdir()
    copy.write_text((REPO_ROOT / "workspace_mlflow" / "local" / "series_setup.py").read_text())
    probe = ("import sys; sys.path.insert(0, sys.argv[1]); import series_setup; "
             "print(series_setup.series_root()); import importlib.util; print(importlib.util.find_spec('chi_helpers') is not None)")
    found = subprocess.run([sys.executable, "-c", probe, str(copy.parent)], capture_output=True, text=True, check=True,
                           cwd=tmp_path)
    assert found.stdout.split() == ["None", "True"]
    inside = subprocess.run([sys.executable, "-c", probe, str(REPO_ROOT / "notebooks" / "amd")], capture_output=True,
                            text=True, check=True, cwd=tmp_path)
    assert inside.stdout.split()[0] == str(REPO_ROOT)
    bare = subprocess.run([sys.executable, "-I", "-S", "-c", "import sys; sys.path.insert(0, sys.argv[1]); import series_setup; "
                           "series_setup.prepare('local')", str(copy.parent)], capture_output=True, text=True, cwd=tmp_path)
    assert bare.returncode != 0 and "neither in a folder above this notebook nor installed" in bare.stderr


@pytest.mark.parametrize("entry,build_name,target", BUILT, ids=IDS)
def test_each_notebook_says_where_it_runs_what_it_teaches_and_what_comes_next(entry, build_name, target):
    cells = cells_of(entry, build_name)
    banner = " ".join(cells[0].source.split(" "))
    assert cells[0].cell_type == "markdown" and banner.startswith("# ")
    flat = " ".join(banner.split())
    for label in ("**Where it runs:**", "**Time:**", "**Before you start:**", "**You will be able to:**"):
        assert label in flat, (label, entry.name)
    objectives = banner.split("**You will be able to:**")[1]
    assert len(re.findall(r"^- ", objectives, re.M)) >= 2
    assert cells[-1].cell_type == "markdown" and "**Next:**" in cells[-1].source
    long = [(i, words(c.source)) for i, c in enumerate(cells) if c.cell_type == "markdown" and words(c.source) > WORD_LIMIT]
    assert not long, f"markdown cells over {WORD_LIMIT} words (cell, words): {long}"
    assert "**Check your understanding:**" in "\n".join(c.source for c in cells)


@pytest.mark.parametrize("entry,build_name", CHAMELEON, ids=[f"{b}/{e.name}" for e, b in CHAMELEON])
def test_what_a_student_opens_on_chameleon_has_nothing_for_ci_or_the_local_target(entry, build_name):
    for cell in cells_of(entry, build_name)[2:]:  # past the setup cell, which runs either build
        for phrase in NOT_FOR_STUDENTS:
            assert not re.search(rf"(?<![\w.]){re.escape(phrase)}(?!\w)", cell.source), (phrase, cell.source[:300])


def test_start_here_links_each_variants_first_notebook_and_the_local_edition():
    nb = nbformat.read(build.START_HERE, as_version=4)
    text = "\n".join(c.source for c in nb.cells)
    for variant in [*VARIANTS, LOCAL_BUILD]:
        link = f"notebooks/{variant}/00_introduction.ipynb"
        assert f"]({link})" in text and (REPO_ROOT / link).is_file()


def test_the_sign_in_is_one_short_cell_before_any_other_python_chi_call():
    for variant in VARIANTS:
        for entry in notebooks_for("chameleon"):
            if entry.side != "testbed":
                continue
            cells = [c.source for c in cells_of(entry, variant) if c.cell_type == "code"]
            first = next((c for c in cells if "from chi import" in c), None)
            if first is None:
                continue  # this notebook makes no python-chi call
            assert "login.use_project(project)" in first and "login.verify(" in first, (variant, entry.name)
            assert "context.use_site(site)" in first and len(first.splitlines()) <= 10, (variant, entry.name)


def text_of(build_name: str) -> str:
    target = "local" if build_name == LOCAL_BUILD else "chameleon"
    return "\n".join(cell.source for entry in notebooks_for(target) for cell in cells_of(entry, build_name))


def test_each_variant_gets_only_its_own_instructions():
    nvidia, amd, vm, local = text_of("nvidia"), text_of("amd"), text_of("vm"), text_of(LOCAL_BUILD)
    assert "watch -n 1 nvidia-smi" in nvidia and "watch -n 1 nvidia-smi" not in amd
    assert "rocm-smi" in amd and "rocm-smi" not in nvidia and "rocm-smi" not in vm
    assert "add_flavor_reservation" in vm and "add_flavor_reservation" not in nvidia + amd
    assert "We reserve the host **by name**" in nvidia and "by name" not in vm.split("# Bring up")[0]
    assert "add_node_reservation" in nvidia and "add_node_reservation" in amd and "add_node_reservation" not in vm
    assert "we open SSH (22)" in vm and "we open SSH (22)" not in nvidia + amd
    assert "compute_liqid" in nvidia and "gpu_mi100" not in nvidia
    assert 'node_name = "liqid01"' in nvidia and 'node_name = ""' in amd  # AMD has no default host
    assert "from chi " not in local and "Lease(" not in local and "stack up" in local
    assert "{{" not in nvidia + amd + vm + local  # every substitution was made


def test_the_release_asks_for_an_explicit_yes():
    cells = cells_of(next(e for e in NOTEBOOKS if e.source.startswith("08")), "nvidia")
    assert "delete_everything = False" in cells[next(i for i, c in enumerate(cells) if "parameters" in c.metadata.get("tags", []))].source
    release = next(c.source for c in cells if "release.release(" in c.source)
    assert release.index("if delete_everything:") < release.index("release.release(")
    assert "deletes every run, metric and model" in "\n".join(c.source for c in cells)


def test_pages_exist_for_every_build_and_the_index_links_them():
    index = (build.SITE_DIR / "index.html").read_text()
    for variant in VARIANTS:
        page = (build.SITE_DIR / f"{variant}.html").read_text()
        assert "Reserve the GPU host" in page and "The model registry, through the API" in page
        assert f'href="{variant}.html"' in index
    local = (build.SITE_DIR / f"{LOCAL_BUILD}.html").read_text()
    assert "Reserve the GPU host" not in local and "The model registry, through the API" in local
    assert f'href="{LOCAL_BUILD}.html"' in index


def test_pages_share_one_stylesheet():
    css = (build.SITE_DIR / build.SHARED_CSS).read_text()
    assert ".jp-Cell" in css and "<style" not in css
    for page in ["index", *VARIANTS, LOCAL_BUILD]:
        html = (build.SITE_DIR / f"{page}.html").read_text()
        assert '<link rel="stylesheet" href="nbconvert.css">' in html and "<style" not in html


@pytest.mark.parametrize("source,message", [
    ("```python\nprint(1)\n", "not closed"),
    ("::: intel\ntext\n:::\n", "unknown variant(s) or target(s) ['intel']"),
    ("::: nvidia\n::: amd\n:::\n:::\n", "inside another"),
    (":::\n", "closes nothing"),
    ("Hello {{ nonsense }}\n", "{{ nonsense }} is not a field"),
    ("{{ compose_service redis }}\n", "docker/compose-tracking.yaml has no service 'redis'"),
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


def test_notebook_04_shows_every_service_of_the_compose_file_as_the_file_writes_it():
    compose = yaml.safe_load(build.COMPOSE_FILE.read_text())["services"]
    text = "\n".join(c.source for c in cells_of(next(e for e in NOTEBOOKS if e.source.startswith("04")), "nvidia"))
    shown = re.findall(r"^```yaml\n(.*?)^```$", text, re.S | re.M)
    assert sorted(next(iter(yaml.safe_load(block))) for block in shown) == sorted(compose)  # each, once
    for block in shown:
        name, service = next(iter(yaml.safe_load(block).items()))
        assert service == compose[name]
        assert "\n".join("  " + line if line else line for line in block.rstrip("\n").splitlines()) in \
            build.COMPOSE_FILE.read_text()  # its comments too: the file's own lines


@pytest.mark.parametrize("variant", list(VARIANTS))
def test_notebook_02_runs_every_setup_step_in_its_own_visible_call(variant):
    # Each my_server.execute(...) in the built notebook, its string as Python joins it (the f-string's
    # {repo} and {ref} as the notebook's values), in order: exactly node_setup's steps for the variant.
    from chi_helpers.chameleon import node_setup

    cells = [c.source for c in cells_of(next(e for e in NOTEBOOKS if e.source.startswith("02")), variant)
             if c.cell_type == "code"]
    assert not any("for step in" in c or "node_setup.run(" in c for c in cells)  # no loop the student cannot see
    called = []
    for cell in cells:
        for node in ast.walk(ast.parse(cell)):
            if isinstance(node, ast.Call) and ast.unparse(node.func) == "my_server.execute":
                called.append(eval(compile(ast.Expression(node.args[0]), "<cell>", "eval"),
                                   {"repo": "{repo}", "ref": "{ref}"}))
    profile = VARIANTS[variant]
    wanted = [*(s.command for s in node_setup.materials("{repo}", "{ref}")),
              *(s.command for s in node_setup.steps(profile, archive="x")),
              node_setup.image_build_check().command]
    assert called == wanted
    # Each call in its own cell or beside its kin, each cell at most three calls.
    assert all(cell.count("my_server.execute(") <= 3 for cell in cells)


@pytest.mark.parametrize("variant", list(VARIANTS))
def test_the_student_types_at_least_twenty_commands_each_with_what_to_expect(variant):
    # Typed in a terminal from a fenced ```bash block (the hub's, the node's or the container's), never hidden
    # in a sentence; each block says what to expect (a comment beside or under the commands).
    typed = []
    for entry in notebooks_for("chameleon"):
        for cell in cells_of(entry, variant):
            if cell.cell_type != "markdown":
                continue
            for block in re.findall(r"```bash\n(.*?)```", cell.source, re.S):
                assert "#" in block, f"{entry.name}: a block of commands that says nothing of what to expect:\n{block}"
                typed += [line for line in block.splitlines() if line.strip() and not line.lstrip().startswith("#")]
            assert not re.search(r"(?<!`)`git commit -m", cell.source), f"{entry.name}: a commit typed inside a sentence"
    assert len(typed) >= 20, typed


def test_a_long_command_is_shown_as_lines_python_joins_back():
    text = 'sudo sh -c \'echo "a"\' && ' + " && ".join(f"step{i} --flag 'x y'" for i in range(30)) + " {repo}"
    literal = build.python_lines(text, "    ")
    assert all(len(line) <= build.WIDTH + 12 for line in literal.splitlines())
    assert eval(f"({literal})", {"repo": "{repo}"}) == text
    with pytest.raises(build.SourceError, match="other braces"):
        build.python_string("{ a; } {repo}")


def test_blocks_select_by_variant_and_target_and_a_rule_splits_markdown():
    source = "a\n::: local\nL\n:::\n::: chameleon amd\nCA\n:::\n::: chameleon\nC\n:::\n+++\nb\n"
    chameleon_amd = [c.text for c in build.parse(source, VARIANTS["amd"], "x.md", "chameleon")]
    chameleon_nvidia = [c.text for c in build.parse(source, VARIANTS["nvidia"], "x.md", "chameleon")]
    local = [c.text for c in build.parse(source, VARIANTS["amd"], "x.md", "local")]
    assert chameleon_amd == ["a\nCA\nC", "b"]
    assert chameleon_nvidia == ["a\nC", "b"]
    assert local == ["a\nL", "b"]


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


def test_a_notebook_runs_with_the_papermill_cli_from_any_folder(tmp_path):
    # Started elsewhere (--cwd): the setup cell finds the installed package, as it finds a copy around the notebook.
    source = output_path(NOTEBOOKS[0], "nvidia")
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    done = subprocess.run(
        [sys.executable, "-m", "papermill", str(source), str(tmp_path / "out.ipynb"), "-p", "variant", "amd",
         "--cwd", str(elsewhere)],
        capture_output=True, text=True, timeout=300,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    shown = next(c for c in nbformat.read(tmp_path / "out.ipynb", 4).cells if "parameters.check(variant)" in c.source)
    outputs = json.dumps(shown.outputs)
    assert "gpu_mi100" in outputs and "MI100" in outputs


# --- the whole series, headless, on the local target ---------------------------------------------

LOCAL_SERIES = notebooks_for("local")


def by_name(report: dict) -> dict:
    return {nb["name"].removesuffix(".ipynb"): nb for nb in report["notebooks"]}


def said_in(path: Path) -> str:
    return "".join(o.get("text", "") for c in nbformat.read(path, 4).cells for o in c.get("outputs", []))


def git(workdir: Path, *args: str) -> str:
    return subprocess.run(["git", "-C", str(workdir / "workspace"), *args], capture_output=True, text=True,
                          check=True).stdout.strip()


def test_the_whole_series_passes_and_reports(series):
    report, _, workdir = series
    assert report["passed"], json.dumps(report, indent=1)[:4000]
    assert [nb["status"] for nb in report["notebooks"]] == ["passed"] * len(LOCAL_SERIES)
    out = workdir / "out"
    assert json.loads((out / "report.json").read_text())["passed"] is True
    assert "| 05_track_pytorch.ipynb | passed |" in (out / "report.md").read_text()
    assert "Series run: PASSED" in (out / "report.html").read_text()
    for entry in LOCAL_SERIES:
        executed = nbformat.read(out / entry.name, 4)
        assert any(c.get("outputs") for c in executed.cells if c.cell_type == "code")
    # The students' edits were made and committed in the run's own copy of the scripts.
    subjects = git(workdir, "log", "--format=%s").splitlines()
    assert len(subjects) == 4 and subjects[-1] == "The series' training scripts"
    assert subjects[-2] == "Reference solution: DataLoader workers"  # 05's check cell, then 06's two


def test_local_runs_learn(series):
    report, client, _ = series
    # The trainings the lesson compares: 05's two, and 06's two after the rank check (its two-process run
    # before the check only shows that two runs appear).
    lightning = sorted((client.get_run(r["run_id"]) for r in by_name(report)["06_lightning"]["runs"]),
                       key=lambda run: run.info.start_time)[-2:]
    compared = [client.get_run(r["run_id"]) for r in by_name(report)["05_track_pytorch"]["runs"]] + lightning
    assert [run.info.status for run in compared] == ["FINISHED"] * 4
    accuracies = {run.info.run_name: run.data.metrics["test_accuracy"] for run in compared}
    assert all(accuracy >= 0.6 for accuracy in accuracies.values()), accuracies  # chance is 1/11


def test_tracking_notebook_leaves_two_runs_on_two_commits(series):
    report, client, workdir = series
    slow, fast = sorted((client.get_run(r["run_id"]) for r in by_name(report)["05_track_pytorch"]["runs"]),
                        key=lambda r: r.info.start_time)
    # Before the edit the config has no num_workers (the DataLoader's default, 0); after it, the edit's value.
    assert "num_workers" not in slow.data.params and fast.data.params["num_workers"] == "2"
    for run in (slow, fast):
        assert {"epoch_time", "val_loss", "test_accuracy", "trainable_params"} <= set(run.data.metrics)
        assert run.data.tags["mlflow.source.git.commit"]
    # Each run names the commit it ran: the fix is a commit of its own.
    assert slow.data.tags["mlflow.source.git.commit"] != fast.data.tags["mlflow.source.git.commit"]
    assert git(workdir, "log", "-1", "--format=%s", fast.data.tags["mlflow.source.git.commit"]) != "The series' training scripts"
    # The fixed run names its data (three splits with their digests) and its model has a signature; the run
    # its timeout stopped has the data, and no model.
    assert sorted(i.dataset.name for i in fast.inputs.dataset_inputs) == [
        "food11-evaluation", "food11-training", "food11-validation"]
    assert {i.dataset.digest for i in fast.inputs.dataset_inputs} == {i.dataset.digest for i in slow.inputs.dataset_inputs}
    models = {run.info.run_id: client.search_logged_models(
        [run.info.experiment_id], filter_string=f"source_run_id='{run.info.run_id}'") for run in (slow, fast)}
    # (Here on the CPU the small first run may end before its timeout stops it.)
    assert [m.name for m in models[slow.info.run_id]] == ([] if slow.info.status == "KILLED" else ["food11"])
    assert [m.name for m in models[fast.info.run_id]] == ["food11"]
    said = said_in(workdir / "out" / "05_track_pytorch.ipynb")
    assert "Wall time:" in said  # every training cell says how long it took
    assert "num_workers: " in said  # the check cell reported on the edit


def test_lightning_notebook_shows_two_runs_for_two_ranks_then_one_per_training(series):
    report, client, workdir = series
    runs = sorted((client.get_run(r["run_id"]) for r in by_name(report)["06_lightning"]["runs"]),
                  key=lambda r: r.info.start_time)
    assert len(runs) == 4
    every_rank, checked = runs[:2], runs[2:]
    # Without the rank check one training (two processes on the CPU) made two runs; rank 0's has the training.
    training = sorted(len([k for k in r.data.metrics if not k.startswith("system/")]) for r in every_rank)
    assert training[0] == 0 and training[1] > 0
    rank0 = next(r for r in every_rank if any(not k.startswith("system/") for k in r.data.metrics))
    # That first tracked run calls no log_params: every parameter came from autolog, none is a config-only setting.
    assert "optimizer_name" in rank0.data.params
    assert not {"image_size", "random_rotation", "data_dir", "dropout_probability"} & set(rank0.data.params)
    # After the two edits: one run per training, with the data settings, and the two differ in lr alone.
    first, second = checked
    assert "image_size" in first.data.params
    assert float(second.data.params["lr"]) == pytest.approx(float(first.data.params["lr"]) / 3)
    differing = {k for k in first.data.params if first.data.params[k] != second.data.params.get(k)}
    assert differing == {"lr"}
    said = said_in(workdir / "out" / "06_lightning.ipynb")
    assert "one training, 2 run(s):" in said and "all from autologging:" in said
    assert "rank_check: " in said and "log_params: " in said
    # The tag the student set, on the two compared runs only, and the search the cell printed finds the first.
    tagged = client.search_runs([first.info.experiment_id], filter_string='tags.purpose = "learning rate"')
    assert sorted(r.info.run_id for r in tagged) == sorted(r.info.run_id for r in checked)
    search = re.search(r"^(metrics\.val_accuracy > 0\.5 and params\.lr = \"([^\"]+)\")$", said, re.M)
    assert search and search[2] == first.data.params["lr"]
    every = client.search_runs([first.info.experiment_id], max_results=1000)
    meant = {r.info.run_id for r in every if r.data.params.get("lr") == search[2]
             and r.data.metrics.get("val_accuracy", 0) > 0.5}
    assert {r.info.run_id for r in client.search_runs([first.info.experiment_id], filter_string=search[1])} == meant


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
        # base) leaves the amd node the least, about half an hour once the students' edits are counted.
        assert lease_timeline.LEASE_MINUTES - total >= 30, (profile.name, total)
        assert f"{lease_timeline.LEASE_MINUTES - total} min to spare" in lease_timeline.render(profile)


def test_registry_notebook_registers_the_best_run_and_downloads_it(series):
    report, client, workdir = series
    # The best run's version, then the runner-up's (the report lists them in the server's order).
    best_version, newer = sorted(by_name(report)["07_registry"]["model_versions"], key=lambda v: int(v["version"]))
    assert best_version["name"] == newer["name"] == "food11-staging"
    assert int(newer["version"]) == int(best_version["version"]) + 1
    finished = [r for nb in report["notebooks"] for r in nb["runs"] if r["status"] == "FINISHED" and "test_accuracy" in r]
    best = max(finished, key=lambda r: r["test_accuracy"])
    assert client.get_run(best_version["run_id"]).data.metrics["test_accuracy"] == best["test_accuracy"]
    # The alias names the best run's version, though the runner-up's is the latest.
    champion = client.get_model_version_by_alias("food11-staging", "champion")
    assert champion.version == best_version["version"]
    downloaded = workdir / "deployed"
    assert (downloaded / "MLmodel").exists() and (downloaded / "data" / "model.pth").stat().st_size > 1_000_000
    # The deployment job's last step: the champion loaded, one evaluation photo per class predicted, and a
    # model that learned gets most of them right.
    predicted = said_in(workdir / "out" / "07_registry.ipynb")
    right = re.search(r"(\d+) of 11 right", predicted)
    assert right and int(right[1]) >= 5, predicted[-1500:]


def test_the_archive_notebook_08_made_brings_the_whole_history_back_in_another_state_dir(series, tmp_path):
    import torch

    report, client, workdir = series
    archives = sorted((workdir / "archives").glob("mlflow-history-*.tar"))
    assert len(archives) == 1, archives
    assert "archive written:" in said_in(workdir / "out" / "08_release.ipynb")
    original = local_stack.read_state(workdir / "stack")
    target = tmp_path / "elsewhere"
    try:
        restored = subprocess.run([sys.executable, "-m", "chi_helpers", "stack", "up", "--state-dir", str(target),
                                   "--port", str(processes.free_port()), "--restore", str(archives[0])],
                                  capture_output=True, text=True, timeout=600)
        assert restored.returncode == 0, restored.stdout[-2000:] + restored.stderr[-2000:]
        copy = local_stack.read_state(target)
        with SignedIn(workdir / "stack") as before_client:
            before = history(before_client)
        with SignedIn(target) as after_client:
            after = history(after_client)
        assert after == before
        assert len(before["runs"]) >= 5 and before["aliases"]["food11-staging"] == {"champion": before["versions"][0][1]}
        # Same champion, same answers: photo-shaped inputs at the local size.
        photos = torch.rand(6, 3, 48, 48, generator=torch.Generator().manual_seed(0))
        assert (champion_predicts(copy.url, "food11-staging", photos)
                == champion_predicts(original.url, "food11-staging", photos))
    finally:
        local_stack.down(target)


def test_a_failing_notebook_stops_the_series_and_is_reported(tmp_path, capfd):
    not_a_folder = tmp_path / "photos.txt"
    not_a_folder.write_text("not photos")
    report = local_run.run_series(workdir=tmp_path, output_dir=tmp_path / "out", port=processes.free_port(),
                                   parameters={"data_dir": str(not_a_folder)})
    assert report["passed"] is False
    first, failed, *rest = report["notebooks"]
    assert first["status"] == "passed" and failed["name"] == "03_data.ipynb" and failed["status"] == "failed"
    assert "the photo set is not usable" in failed["error"] and failed["failing_cell"] is not None
    assert {nb["status"] for nb in rest} == {"not run"}
    assert local_stack.read_state(tmp_path / "stack") is None  # stopped afterwards
    assert "FAILED" in (tmp_path / "out" / "report.md").read_text()
    assert "without encryption" not in capfd.readouterr().err  # the kernels talk over local sockets
