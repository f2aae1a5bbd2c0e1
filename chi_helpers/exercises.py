"""The exercises' check cells: is the student's edit in the training script, and is it committed?

Each exercise names one file, what makes it done (checks on the file's syntax tree, in
exercise_checks.py) and what to say for each piece that is missing. `check()` answers in one line
when the edit is there and committed; otherwise it raises ExerciseNotDone saying what to do. With
`apply_solution=True` a missing edit is replaced by the reference solution
(`solutions/<exercise>/<file>` next to the scripts), committed, so a headless run of the series goes
on as if the student had made it.
"""

from __future__ import annotations

import os
import shlex
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

from chi_helpers import exercise_checks as checks


class ExerciseNotDone(RuntimeError):
    """The edit is missing or not committed; the message says what to do."""


@dataclass(frozen=True)
class Piece:
    found: checks.Check  # True when this piece of the edit is in the parsed script
    missing: str  # what to tell the student when it is not


@dataclass(frozen=True)
class Exercise:
    file: str
    pieces: tuple[Piece, ...]
    commit_message: str  # what the hint suggests for the student's own commit
    solution_message: str  # the commit of the reference solution


RANK_CHECK = "`if trainer.global_rank == 0:`"
RANK_PIECES = (
    Piece(checks.only_rank_zero_calls("mlflow.pytorch.autolog"),
          f"mlflow.pytorch.autolog() is not inside {RANK_CHECK}: in the other processes autologging starts "
          "runs of its own"),
    Piece(checks.only_rank_zero_calls("mlflow.start_run"),
          f"mlflow.start_run(...) is not inside {RANK_CHECK}: every process starts a run"),
    Piece(checks.only_rank_zero_calls("mlflow.log_text"),
          f"mlflow.log_text(...) is not inside {RANK_CHECK}: with no run open it starts one"),
    Piece(checks.only_rank_zero_calls("mlflow.end_run", after="trainer.test"),
          f"the mlflow.end_run() after trainer.test(...) is not inside {RANK_CHECK}: the process that "
          "started the run ends it"),
)

EXERCISES = {
    "num_workers": Exercise(
        file="food11_training.py",
        pieces=(
            Piece(checks.config_has_workers, 'CONFIG has no "num_workers" greater than 0'),
            Piece(checks.loader_passes_workers("train_loader"),
                  'the training DataLoader does not pass num_workers=config["num_workers"]'),
            Piece(checks.loader_passes_workers("val_loader"),
                  'the validation DataLoader does not pass num_workers=config["num_workers"]'),
        ),
        commit_message="Increase the number of data loader workers",
        solution_message="Reference solution: DataLoader workers",
    ),
    "rank_check": Exercise(
        file="train_lightning_mlflow.py",
        pieces=RANK_PIECES,
        commit_message="Track from the process of rank 0 only",
        solution_message="Reference solution: only rank 0 tracks",
    ),
    "log_params": Exercise(
        file="train_lightning_mlflow.py",
        pieces=(
            *RANK_PIECES,
            Piece(checks.only_rank_zero_calls("mlflow.log_params"),
                  f"there is no mlflow.log_params(...) inside {RANK_CHECK}: the run holds only what autolog "
                  "sees (the optimizer, the epochs), not the photo and augmentation settings"),
        ),
        commit_message="Log the settings autolog cannot see",
        solution_message="Reference solution: log the data settings",
    ),
}

# Who commits a reference solution where git has no identity (a fresh container, a headless run).
FALLBACK_IDENTITY = ["-c", "user.name=Course solution", "-c", "user.email=solution@localhost"]


def missing_pieces(name: str, text: str) -> list[str]:
    """What the exercise `name` still lacks in `text`, one sentence per piece (empty: done); a script
    that does not compile gets one sentence naming the line."""
    exercise = _exercise(name)
    try:
        tree = checks.parse(text, exercise.file)
    except checks.DoesNotCompile as error:
        return [str(error)]
    return [p.missing for p in exercise.pieces if not p.found(tree)]


def check(name: str, apply_solution: bool = False, scripts: str | Path = "..") -> str:
    """Say the exercise is done and committed, or raise ExerciseNotDone saying what to do.

    `scripts` is the folder with the training scripts (the notebooks run one folder below it).
    With `apply_solution`, a missing edit is replaced by the reference solution and committed.
    """
    exercise = _exercise(name)
    folder = Path(scripts)
    path = folder / exercise.file
    if not path.is_file():
        raise FileNotFoundError(f"{path} does not exist: scripts= must name the folder that holds "
                                f"{exercise.file} (the notebooks run one folder below it: '..').")
    _work_tree(folder)
    missing = missing_pieces(name, path.read_text())
    if missing and apply_solution:
        return _apply_solution(name, exercise, folder)
    if missing:
        raise ExerciseNotDone(
            f"{name}: not done yet in {path}:\n  - " + "\n  - ".join(missing) + "\n"
            f"Make the edit and commit it, then run this cell again. To use the reference solution instead "
            f"(solutions/{name}/{exercise.file}), set apply_solution = True in the parameters cell and rerun."
        )
    if _git(folder, "status", "--porcelain", "--", exercise.file):
        raise ExerciseNotDone(
            f"{name}: the edit is in {path} but not committed, so a run would not record it. Commit it:\n"
            f"    {_commit_hint(folder, path, exercise.commit_message)}"
        )
    line = f"{name}: done, committed in {_git(folder, 'log', '-n', '1', '--format=%h %s', '--', exercise.file)}"
    print(line)
    return line


def _exercise(name: str) -> Exercise:
    if name not in EXERCISES:
        raise ValueError(f"unknown exercise {name!r}: the exercises are {', '.join(EXERCISES)}")
    return EXERCISES[name]


def _git(folder: Path, *arguments: str) -> str:
    try:
        done = subprocess.run(["git", "-C", str(folder), *arguments], capture_output=True, text=True)
    except FileNotFoundError:
        raise RuntimeError("git is not installed here: the exercises are checked against git's history") from None
    if done.returncode != 0:
        raise RuntimeError(f"`git {' '.join(arguments)}` in {folder} failed: {done.stderr.strip()}")
    return done.stdout.strip()


def _work_tree(folder: Path) -> None:
    try:
        _git(folder, "rev-parse", "--show-toplevel")
    except RuntimeError as error:
        raise RuntimeError(
            f"{folder.resolve()} is not in a git work tree ({error}). The exercises count an edit once it is "
            "committed: run the scripts from the git checkout that notebook 02 sets up."
        ) from None


def _commit_hint(folder: Path, path: Path, message: str) -> str:
    shown = shlex.quote(os.path.relpath(path))
    commit = f'git commit -m "{message}" {shown}'
    tracked = subprocess.run(["git", "-C", str(folder), "ls-files", "--error-unmatch", "--", path.name],
                             capture_output=True).returncode == 0
    return commit if tracked else f"git add {shown} && {commit}"


def _apply_solution(name: str, exercise: Exercise, folder: Path) -> str:
    solution = folder / "solutions" / name / exercise.file
    if not solution.is_file():
        raise FileNotFoundError(f"{solution} is missing: the reference solutions ship in solutions/, "
                                "next to the scripts")
    left = missing_pieces(name, solution.read_text())
    if left:  # the solutions are tested against this table; a gap here is the course's bug
        raise RuntimeError(f"the reference solution {solution} is itself incomplete: " + "; ".join(left))
    shutil.copyfile(solution, folder / exercise.file)
    identity = [] if _has_identity(folder) else FALLBACK_IDENTITY
    _git(folder, "add", "--", exercise.file)
    _git(folder, *identity, "commit", "--quiet", "-m", exercise.solution_message, "--", exercise.file)
    report = (f"{name}: not done, so the reference solution {solution} was copied over "
              f"{folder / exercise.file} and committed:\n{_git(folder, 'log', '-n', '2', '--oneline')}")
    print(report)
    return report


def _has_identity(folder: Path) -> bool:
    done = subprocess.run(["git", "-C", str(folder), "config", "user.email"], capture_output=True, text=True)
    return bool(done.stdout.strip())
