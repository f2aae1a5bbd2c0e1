"""The exercises' check cells, on a git checkout of the shipped scripts as a student's node holds it."""

from __future__ import annotations

import difflib
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from chi_helpers import exercises
from chi_helpers.exercises import ExerciseNotDone, check
from conftest import WORKSPACE

STUDENT = ["-c", "user.name=student", "-c", "user.email=student@localhost"]


def git(repo: Path, *arguments: str) -> str:
    return subprocess.run(["git", "-C", str(repo), "-c", "commit.gpgsign=false", *arguments],
                          capture_output=True, text=True, check=True).stdout.strip()


@pytest.fixture(autouse=True)
def no_git_config_outside(tmp_path, monkeypatch):
    """git sees no global or system config: no identity unless a test sets one in the repository."""
    home = tmp_path / "home"
    home.mkdir()
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.setenv("XDG_CONFIG_HOME", str(home / ".config"))
    monkeypatch.setenv("GIT_CONFIG_NOSYSTEM", "1")


@pytest.fixture
def scripts(tmp_path, monkeypatch) -> Path:
    """A committed copy of the workspace (scripts and solutions); the cwd is a notebook folder in it."""
    repo = tmp_path / "mlflow-chi"
    folder = repo / "workspace_mlflow"
    shutil.copytree(WORKSPACE, folder, ignore=shutil.ignore_patterns("*.ipynb", "__pycache__", "executed"))
    (folder / "nvidia").mkdir(exist_ok=True)
    subprocess.run(["git", "init", "--quiet", str(repo)], check=True)
    git(repo, "add", ".")
    git(repo, *STUDENT, "commit", "--quiet", "-m", "the series")
    monkeypatch.chdir(folder / "nvidia")
    return folder


def edit(path: Path, old: str, new: str, count: int = 1) -> None:
    text = path.read_text()
    assert text.count(old) == count, old
    path.write_text(text.replace(old, new))


NUM_WORKERS_MISSING = [
    'CONFIG has no "num_workers" greater than 0',
    'the training DataLoader does not pass num_workers=config["num_workers"]',
    'the validation DataLoader does not pass num_workers=config["num_workers"]',
]


@pytest.mark.parametrize("name", list(exercises.EXERCISES))
def test_the_shipped_script_fails_each_exercise_naming_every_missing_piece(name, scripts):
    with pytest.raises(ExerciseNotDone) as raised:
        check(name)
    message = str(raised.value)
    assert message.startswith(f"{name}: not done yet in ../{exercises.EXERCISES[name].file}:")
    for piece in exercises.EXERCISES[name].pieces:
        assert f"  - {piece.missing}\n" in message
    assert "set apply_solution = True in the parameters cell" in message
    assert git(scripts, "log", "--format=%s") == "the series"  # nothing committed


def test_the_num_workers_messages_name_the_config_and_both_loaders(scripts):
    with pytest.raises(ExerciseNotDone) as raised:
        check("num_workers")
    listed = [line[4:] for line in str(raised.value).splitlines() if line.startswith("  - ")]
    assert listed == NUM_WORKERS_MISSING


@pytest.mark.parametrize("name", list(exercises.EXERCISES))
def test_apply_solution_copies_the_reference_and_commits_it(name, scripts, capsys):
    exercise = exercises.EXERCISES[name]
    report = check(name, apply_solution=True)
    solution = scripts / "solutions" / name / exercise.file
    assert (scripts / exercise.file).read_text() == solution.read_text()
    assert git(scripts, "log", "-n", "1", "--format=%s %an") == f"{exercise.solution_message} Course solution"
    assert git(scripts, "status", "--porcelain") == ""
    log = git(scripts, "log", "-n", "2", "--oneline")
    assert report.endswith(log) and report in capsys.readouterr().out
    assert "copied over" in report

    sha = git(scripts, "log", "-n", "1", "--format=%h")
    assert check(name) == f"{name}: done, committed in {sha} {exercise.solution_message}"
    assert subprocess.run(["git", "-C", str(scripts), "config", "user.email"],
                          capture_output=True).returncode == 1, "the fallback identity is never written"


def test_a_configured_identity_commits_the_solution_as_the_student(scripts):
    git(scripts, "config", "user.name", "Ana Student")
    git(scripts, "config", "user.email", "ana@example.org")
    check("rank_check", apply_solution=True)
    assert git(scripts, "log", "-n", "1", "--format=%an <%ae>") == "Ana Student <ana@example.org>"


def test_a_done_exercise_is_not_touched_by_apply_solution(scripts):
    check("num_workers", apply_solution=True)
    head = git(scripts, "rev-parse", "HEAD")
    assert check("num_workers", apply_solution=True).startswith("num_workers: done, committed in")
    assert git(scripts, "rev-parse", "HEAD") == head


def test_log_params_builds_on_the_rank_check(scripts):
    check("rank_check", apply_solution=True)
    with pytest.raises(ExerciseNotDone) as raised:
        check("log_params")
    assert str(raised.value).count("\n  - ") == 1 and "no mlflow.log_params(...)" in str(raised.value)
    check("log_params", apply_solution=True)
    assert check("rank_check").endswith("Reference solution: log the data settings")


def test_done_but_not_committed_is_refused_with_the_command_that_commits_it(scripts):
    shutil.copy(scripts / "solutions" / "num_workers" / "food11_training.py", scripts / "food11_training.py")
    with pytest.raises(ExerciseNotDone) as raised:
        check("num_workers")
    command = 'git commit -m "Increase the number of data loader workers" ../food11_training.py'
    assert str(raised.value) == (
        "num_workers: the edit is in ../food11_training.py but not committed, so a run would not record it. "
        f"Commit it:\n    {command}"
    )
    # The student runs the hint from the notebook's folder, as `!git commit ...`.
    git(scripts, "config", "user.name", "student")
    git(scripts, "config", "user.email", "student@localhost")
    subprocess.run(command, shell=True, check=True, capture_output=True)
    assert check("num_workers").endswith("Increase the number of data loader workers")


def test_an_untracked_script_gets_a_hint_that_adds_it_first(scripts):
    git(scripts, "rm", "--quiet", "--cached", "food11_training.py")
    git(scripts, *STUDENT, "commit", "--quiet", "-m", "untrack")
    shutil.copy(scripts / "solutions" / "num_workers" / "food11_training.py", scripts)
    with pytest.raises(ExerciseNotDone) as raised:
        check("num_workers")
    assert str(raised.value).endswith(
        'git add ../food11_training.py && git commit -m "Increase the number of data loader workers" ../food11_training.py')


def test_a_staged_but_uncommitted_edit_is_not_done_either(scripts):
    shutil.copy(scripts / "solutions" / "rank_check" / "train_lightning_mlflow.py", scripts)
    git(scripts, "add", "train_lightning_mlflow.py")
    with pytest.raises(ExerciseNotDone, match="but not committed"):
        check("rank_check")


def test_an_edit_by_hand_counts_with_any_number_of_workers(scripts):
    script = scripts / "food11_training.py"
    edit(script, '    "image_size": 224,\n', '    "image_size": 224,\n    "num_workers": 8,  # my machine\n')
    edit(script, "        shuffle=True,\n", "        shuffle=True, num_workers=config['num_workers'],\n")
    with pytest.raises(ExerciseNotDone) as raised:  # the validation loader still lacks it
        check("num_workers")
    assert str(raised.value).count("\n  - ") == 1 and NUM_WORKERS_MISSING[2] in str(raised.value)
    edit(script, "    val_loader = DataLoader(\n        val_set,\n",
         '    val_loader = DataLoader(\n        val_set, num_workers = config["num_workers"],\n')
    git(scripts, *STUDENT, "commit", "--quiet", "-am", "More workers")
    sha = git(scripts, "log", "-n", "1", "--format=%h")
    assert check("num_workers") == f"num_workers: done, committed in {sha} More workers"


def test_zero_workers_is_not_the_fix(scripts):
    edit(scripts / "food11_training.py", '    "image_size": 224,\n', '    "image_size": 224,\n    "num_workers": 0,\n')
    with pytest.raises(ExerciseNotDone, match='CONFIG has no "num_workers" greater than 0'):
        check("num_workers")


def test_a_rank_check_that_leaves_a_call_outside_names_that_call(scripts):
    script = scripts / "train_lightning_mlflow.py"
    # Only the start is wrapped; autolog above it and the end_run below stay outside.
    edit(script, "    mlflow.start_run(log_system_metrics=True)\n    mlflow.log_text(gpu_info(), \"gpu-info.txt\")\n",
         "    if trainer.is_global_zero:\n        mlflow.start_run(log_system_metrics=True)\n"
         "        mlflow.log_text(gpu_info(), \"gpu-info.txt\")\n")
    with pytest.raises(ExerciseNotDone) as raised:
        check("rank_check")
    listed = [line[4:] for line in str(raised.value).splitlines() if line.startswith("  - ")]
    assert [text.split(" is not")[0] for text in listed] == [
        "mlflow.pytorch.autolog()", "the mlflow.end_run() after trainer.test(...)"]


def differences(before: str, after: str) -> tuple[list[str], list[str]]:
    """The lines removed from `before` and the lines added in `after`."""
    removed, added = [], []
    matcher = difflib.SequenceMatcher(a=before.splitlines(), b=after.splitlines(), autojunk=False)
    for op, a0, a1, b0, b1 in matcher.get_opcodes():
        if op != "equal":
            removed += matcher.a[a0:a1]
            added += matcher.b[b0:b1]
    return removed, added


def test_the_num_workers_solution_is_the_shipped_file_plus_the_workers():
    removed, added = differences((WORKSPACE / "food11_training.py").read_text(),
                                 (WORKSPACE / "solutions/num_workers/food11_training.py").read_text())
    assert removed == []
    assert added == ['    "num_workers": 16,'] + ['        num_workers=config["num_workers"],'] * 3


def test_the_rank_check_solution_only_wraps_the_tracking_calls_in_the_rank_check():
    removed, added = differences((WORKSPACE / "train_lightning_mlflow.py").read_text(),
                                 (WORKSPACE / "solutions/rank_check/train_lightning_mlflow.py").read_text())
    assert added.count("    if trainer.global_rank == 0:") == 2
    moved = [line for line in added if line != "    if trainer.global_rank == 0:"]
    assert moved == ["    " + line for line in removed]  # the same calls, one level deeper
    assert [line.strip().split("(")[0] for line in removed] == [
        "mlflow.set_experiment", "mlflow.pytorch.autolog", "mlflow.start_run", "mlflow.log_text", "mlflow.end_run"]


def test_the_log_params_solution_is_the_rank_check_plus_one_log_params_call():
    removed, added = differences((WORKSPACE / "solutions/rank_check/train_lightning_mlflow.py").read_text(),
                                 (WORKSPACE / "solutions/log_params/train_lightning_mlflow.py").read_text())
    assert removed == []
    assert added[0].startswith("        # ") and added[1].startswith("        mlflow.log_params(")
    assert all(line.startswith("        ") for line in added)
    logged = re.findall(r'"(\w+)"', "\n".join(added[1:]))
    config_keys = re.findall(r'^    "(\w+)":', (WORKSPACE / "food11_training.py").read_text(), re.MULTILINE)
    assert set(logged) <= set(config_keys)  # each one a key the config has
    assert set(logged) == {"image_size", "batch_size", "dropout_probability", "random_horizontal_flip",
                           "random_rotation", "color_jitter_brightness", "color_jitter_contrast",
                           "color_jitter_saturation", "color_jitter_hue"}


def test_an_unknown_exercise_lists_the_known_ones(scripts):
    listed = "unknown exercise 'workers': the exercises are num_workers, rank_check, log_params"
    with pytest.raises(ValueError, match=listed):
        check("workers")


def test_scripts_outside_a_git_work_tree_are_refused(tmp_path, monkeypatch):
    folder = tmp_path / "download"
    folder.mkdir()
    shutil.copy(WORKSPACE / "food11_training.py", folder)
    monkeypatch.setenv("GIT_CEILING_DIRECTORIES", str(tmp_path))  # no repository above tmp_path counts
    with pytest.raises(RuntimeError, match="is not in a git work tree") as raised:
        check("num_workers", scripts=folder)
    assert not isinstance(raised.value, ExerciseNotDone)


def test_a_wrong_scripts_folder_says_what_it_must_name(scripts):
    with pytest.raises(FileNotFoundError, match="scripts= must name the folder that holds food11_training.py"):
        check("num_workers", scripts=".")


# --- any valid form of the edit counts, and nothing less ---------------------------------------------
# Each case is a list of (old, new) replacements on a file of the workspace; the checks read the
# script's syntax tree, so spacing, quotes, a missing trailing comma or a variable make no difference.

SHIPPED_WORKERS = WORKSPACE / "food11_training.py"
SOLVED_WORKERS = WORKSPACE / "solutions" / "num_workers" / "food11_training.py"
SHIPPED_LIGHTNING = WORKSPACE / "train_lightning_mlflow.py"
SOLVED_RANK = WORKSPACE / "solutions" / "rank_check" / "train_lightning_mlflow.py"
SOLVED_PARAMS = WORKSPACE / "solutions" / "log_params" / "train_lightning_mlflow.py"

LAST_ENTRY = ('    "seed": 42,\n}', '    "seed": 42,\n    "num_workers": 8\n}')  # no trailing comma
BOTH_LOADERS = [("        shuffle=True,\n", "        shuffle=True, num_workers=config['num_workers']\n"),
                ("    val_loader = DataLoader(\n        val_set,\n",
                 "    val_loader = DataLoader(\n        val_set,  num_workers = config.get('num_workers', 2),\n")]
RANK_BLOCK = ("    mlflow.set_experiment(\"food11-classifier\")\n    mlflow.pytorch.autolog()\n"
              "    mlflow.start_run(log_system_metrics=True)\n    mlflow.log_text(gpu_info(), \"gpu-info.txt\")\n")


def wrapped(condition: str, block: str = RANK_BLOCK) -> str:
    return f"    {condition}\n" + "".join(f"    {line}\n" for line in block.splitlines())


RIGHT = {
    "num_workers": [
        (SOLVED_WORKERS, []),
        (SHIPPED_WORKERS, [LAST_ENTRY, *BOTH_LOADERS]),
        (SHIPPED_WORKERS, [('    "seed": 42,\n', "    'seed': 42,\n    'num_workers' :4 ,\n"), *BOTH_LOADERS]),
        (SOLVED_WORKERS, [('    "num_workers": 16,\n', '    "num_workers": WORKERS,\n'),
                          ("SPLITS = [", "WORKERS = 6\nSPLITS = [")]),  # a constant of the module
        (SOLVED_WORKERS, [('    "num_workers": 16,\n', '    "num_workers": os.cpu_count() or 1,\n')]),
        (SOLVED_WORKERS, [("    train_loader = DataLoader(\n", "    workers = config[\"num_workers\"]\n"
                           "    train_loader = DataLoader(\n"),
                          ('        shuffle=True,\n        num_workers=config["num_workers"],',
                           "        shuffle=True,\n        num_workers=workers,")]),
    ],
    "rank_check": [
        (SOLVED_RANK, []),
        (SOLVED_RANK, [("if trainer.global_rank == 0:", "if trainer.is_global_zero:", 2)]),
        (SOLVED_RANK, [("if trainer.global_rank == 0:", "if 0 == trainer.global_rank:", 2)]),
        (SOLVED_RANK, [("    trainer = make_trainer(config)\n",
                        "    trainer = make_trainer(config)\n    rank = trainer.global_rank\n"),
                       ("if trainer.global_rank == 0:", "if rank==0:", 2)]),
        (SOLVED_RANK, [("if trainer.global_rank == 0:", "if trainer.global_rank == 0 and config[\"seed\"] is not None:", 2)]),
        (SHIPPED_LIGHTNING, [(RANK_BLOCK, wrapped("if trainer.is_global_zero:")),
                             ("    mlflow.end_run()\n", "    if trainer.is_global_zero: mlflow.end_run()\n")]),
    ],
    "log_params": [
        (SOLVED_PARAMS, []),
        (SOLVED_PARAMS, [("if trainer.global_rank == 0:", "if trainer.is_global_zero:", 2)]),
        (SOLVED_RANK, [("    if trainer.global_rank == 0:\n        mlflow.end_run()\n",
                        "    if trainer.global_rank == 0:\n        mlflow.log_params({'image_size': config['image_size']})\n"
                        "        mlflow.end_run()\n")]),  # logged at the end: still the same run
        (SOLVED_RANK, [("        mlflow.log_text(gpu_info(), \"gpu-info.txt\")\n",
                        "        mlflow.log_text(gpu_info(), \"gpu-info.txt\")\n        settings = dict(image_size=config['image_size'])\n"
                        "        mlflow.log_params(settings)\n")]),
        (SOLVED_RANK, [("        mlflow.log_text(gpu_info(), \"gpu-info.txt\")\n",
                        "        mlflow.log_text(gpu_info(), \"gpu-info.txt\")\n"
                        "        mlflow.log_params(\n            {k: config[k] for k in ('image_size',)}\n        )\n")]),
    ],
}

WRONG = {
    "num_workers": [
        (SHIPPED_WORKERS, [], NUM_WORKERS_MISSING),
        (SHIPPED_WORKERS, [('    "seed": 42,\n', '    "seed": 42,\n    "num_workers": 0,\n'), *BOTH_LOADERS],
         NUM_WORKERS_MISSING[:1]),
        (SHIPPED_WORKERS, [('    "seed": 42,\n', '    "seed": 42,\n    "num_workers": -1,\n'), *BOTH_LOADERS],
         NUM_WORKERS_MISSING[:1]),
        (SOLVED_WORKERS, [('        shuffle=True,\n        num_workers=config["num_workers"],',
                           "        shuffle=True,\n        num_workers=4,")],  # fixed, so --num_workers does nothing
         NUM_WORKERS_MISSING[1:2]),
        (SOLVED_WORKERS, [('    "num_workers": 16,\n', '    # "num_workers": 16,\n')], NUM_WORKERS_MISSING[:1]),
        (SOLVED_WORKERS, [('    "num_workers": 16,\n', '    "num_workers": 16\n')],  # a comma short, mid-dict
         ["food11_training.py does not compile: line"]),
    ],
    "rank_check": [
        (SHIPPED_LIGHTNING, [], ["mlflow.pytorch.autolog()", "mlflow.start_run(...)", "mlflow.log_text(...)",
                                 "the mlflow.end_run() after trainer.test(...)"]),
        (SOLVED_RANK, [("if trainer.global_rank == 0:", "if trainer.global_rank == 1:", 2),
                       ("    if trainer.global_rank == 1:\n        mlflow.end_run()", "    if trainer.global_rank == 0:\n        mlflow.end_run()")],
         ["mlflow.pytorch.autolog()", "mlflow.start_run(...)", "mlflow.log_text(...)"]),
        (SOLVED_RANK, [("    if trainer.global_rank == 0:\n        mlflow.end_run()\n", "    mlflow.end_run()\n")],
         ["the mlflow.end_run() after trainer.test(...)"]),
        (SOLVED_RANK, [("    if trainer.global_rank == 0:\n        mlflow.end_run()\n",
                        "    if trainer.global_rank == 0:\n        pass\n    else:\n        mlflow.end_run()\n")],
         ["the mlflow.end_run() after trainer.test(...)"]),
        (SOLVED_RANK, [("        mlflow.log_text(gpu_info(), \"gpu-info.txt\")\n",
                        "        mlflow.log_text(gpu_info(), \"gpu-info.txt\")\n    mlflow.start_run(nested=True)\n")],
         ["mlflow.start_run(...)"]),  # a second start outside the check
        (SOLVED_RANK, [("        mlflow.end_run()\n", "    mlflow.end_run()\n")],  # the block left empty
         ["train_lightning_mlflow.py does not compile: line"]),
    ],
    "log_params": [
        (SOLVED_RANK, [], ["there is no mlflow.log_params(...)"]),
        (SOLVED_PARAMS, [("        mlflow.log_params({key", "    mlflow.log_params({key")],
         ["there is no mlflow.log_params(...)"]),
        (SOLVED_RANK, [("    trainer.fit(", "    if trainer.global_rank != 0:\n        mlflow.log_params({'a': 1})\n    trainer.fit(")],
         ["there is no mlflow.log_params(...)"]),
        (SHIPPED_LIGHTNING, [("    mlflow.log_text(gpu_info(), \"gpu-info.txt\")\n",
                              "    mlflow.log_text(gpu_info(), \"gpu-info.txt\")\n    mlflow.log_params({'a': 1})\n")],
         ["mlflow.pytorch.autolog()", "mlflow.start_run(...)", "mlflow.log_text(...)",
          "the mlflow.end_run() after trainer.test(...)", "there is no mlflow.log_params(...)"]),
        (SOLVED_PARAMS, [("        ]})\n", "        ]}\n")], ["train_lightning_mlflow.py does not compile: line"]),
    ],
}


def edited(path: Path, replacements) -> str:
    text = path.read_text()
    for old, new, *count in replacements:
        assert text.count(old) == (count[0] if count else 1), old
        text = text.replace(old, new)
    return text


@pytest.mark.parametrize("name,path,replacements", [(n, p, r) for n, cases in RIGHT.items() for p, r in cases],
                         ids=[f"{n}-{i}" for n, cases in RIGHT.items() for i in range(len(cases))])
def test_any_valid_form_of_the_edit_counts(name, path, replacements):
    assert exercises.missing_pieces(name, edited(path, replacements)) == []


@pytest.mark.parametrize("name,path,replacements,expected",
                         [(n, p, r, e) for n, cases in WRONG.items() for p, r, e in cases],
                         ids=[f"{n}-{i}" for n, cases in WRONG.items() for i in range(len(cases))])
def test_a_wrong_or_broken_edit_names_each_missing_piece(name, path, replacements, expected):
    missing = exercises.missing_pieces(name, edited(path, replacements))
    assert len(missing) == len(expected) and all(m.startswith(e) for m, e in zip(missing, expected)), missing


def test_a_script_that_does_not_compile_is_refused_with_its_line(scripts):
    script = scripts / "food11_training.py"
    edit(script, '    "seed": 42,\n', '    "seed": 42\n    "num_workers": 4,\n')
    git(scripts, *STUDENT, "commit", "--quiet", "-am", "More workers")
    with pytest.raises(ExerciseNotDone) as raised:
        check("num_workers")
    line = next(i for i, text in enumerate(script.read_text().splitlines(), 1) if '"seed": 42' in text)
    assert f"food11_training.py does not compile: line {line}: invalid syntax. Perhaps you forgot a comma?" in str(raised.value)
