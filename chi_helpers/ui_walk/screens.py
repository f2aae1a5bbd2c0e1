"""`python -m chi_helpers screens`: walk the MLflow UI as the lesson does and regenerate its figures.

The walk needs a server holding a real series' history. It takes the archive notebook 08 left in
the local target's work folder (`make run` makes one; `--archive FILE` names another), starts a
stack as the node runs it (the Compose file's MLflow options: sign-in, allowed hosts, CORS origin;
artifacts in an S3 bucket) with nothing in it, walks notebook 04's first look, restores the archive
into the running stack, and walks the rest, each step on the history as the lesson has made it by then
(`stages`). Chromium opens it where a student opens the node: at a
public name (`NODE_NAME`, mapped onto the loopback listener inside the browser), not at localhost.
"""

from __future__ import annotations

import os
import tempfile
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from chi_helpers import credentials
from chi_helpers.local.target import DEFAULT_WORKDIR
from chi_helpers.progress import Clock
from chi_helpers.ui_walk import browser, figures, stages, steps, walk

EXPERIMENT = "food11-classifier"
REGISTERED_MODEL = "food11-staging"  # 07's model_name
FIRST_AFTER_RESTORE = "05_track_pytorch"
FAILURES_DIR = DEFAULT_WORKDIR / "walk-failures"  # the page when a step fails; never beside the figures
NODE_NAME = "node.test"  # the node's public address as the browser knows it (RFC 6761: no DNS answers .test)


class ScreensError(RuntimeError):
    """No history to walk through, or the stack did not start."""


def newest_archive(workdir: Path) -> Path:
    found = sorted((workdir / "archives").glob("mlflow-history-*.tar"))
    if not found:
        raise ScreensError(f"no archive of a series run in {workdir / 'archives'}: run `make run` first (notebook 08 "
                           "leaves one there), or name one with --archive FILE")
    return found[-1]


def seen_in(client) -> tuple[walk.Seen, stages.History]:
    """The runs the lesson's steps point at, read from the restored history, and that history by stage."""
    experiment = client.get_experiment_by_name(EXPERIMENT)
    if experiment is None:
        raise ScreensError(f"the archive holds no experiment {EXPERIMENT!r}: it is not from a run of the series")
    history = stages.History(client, experiment.experiment_id, REGISTERED_MODEL)
    finished = [r for r in history.runs if r.info.status == "FINISHED"]
    if not history.tracked or len(finished) < 2:
        raise ScreensError("the archive lacks 05's tracked runs or 06's two trainings: archive a whole series run")
    best = max(history.tracked, key=lambda r: r.data.metrics.get("test_accuracy", -1.0))
    champion = client.get_model_version_by_alias(REGISTERED_MODEL, "champion")
    seen = walk.Seen(EXPERIMENT, history.tracked[0].info.run_name, best.info.run_name,
                     [r.info.run_name for r in reversed(finished[-2:])], REGISTERED_MODEL, str(champion.version))
    return seen, history


@dataclass
class Walkable:
    """A stack the walk can sign in to; `between` restores the history before notebook 05's first step.
    `hosts`: the names the browser maps onto this machine to reach `url`."""
    url: str
    credentials: dict
    seen: walk.Seen
    between: object
    hosts: dict | None = None


@contextmanager
def walkable_stack(archive: Path, state_dir: Path | None = None, clock: Clock | None = None):
    """A stack as the node runs it (the Compose file's MLflow options for a node at `NODE_NAME`, artifacts
    in an S3 bucket), empty until the walk reaches notebook 05, when `archive`'s history is restored into
    it, as 05-07 would have made it. Stopped on exit."""
    from mlflow import MlflowClient

    from chi_helpers.archive import location, manifest, restore
    from chi_helpers.local import processes
    from chi_helpers.local import stack as local_stack

    clock = clock or Clock()
    archive = Path(archive).resolve()
    verified = manifest.verify(archive, say=clock.say)
    restore.preflight(verified)  # a history this MLflow cannot load is refused before anything starts
    scratch = tempfile.TemporaryDirectory(prefix="ui-walk-") if state_dir is None else None
    state_dir = Path(scratch.name if scratch else state_dir)
    stack = local_stack.up(state_dir, port=processes.free_port(), object_store=True, public_address=NODE_NAME,
                           clock=clock)
    try:
        sign_in = credentials.read(stack.auth_file)
        seen = walk.Seen("", "", "", [], "", "")
        history: stages.History | None = None
        shown = ""

        def between(step, page) -> None:
            nonlocal history, shown
            if steps.NOTEBOOKS_ORDER.index(step.notebook) < steps.NOTEBOOKS_ORDER.index(FIRST_AFTER_RESTORE):
                return
            with _signed_in(sign_in):
                client = MlflowClient(stack.url)
                if history is None:
                    clock.say(f"restoring {archive.name}: the series' runs, shown as notebooks 05-07 make them")
                    restore.restore(archive, location.from_state_dir(state_dir), manifest=verified, clock=clock)
                    found, history = seen_in(client)
                    seen.__dict__.update(found.__dict__)
                if step.stage == shown:
                    return
                seen.listed = history.show(step.stage)
                if history.registered:
                    seen.champion_version = str(client.get_model_version_by_alias(REGISTERED_MODEL, "champion").version)
            clock.say(f"the history as it stands at {step.stage}: {len(history.visible(step.stage))} run(s)")
            shown = step.stage
            page.reload()  # as a student comes back to the UI after training: the lists load anew

        yield Walkable(stack.public_url, {"username": sign_in["MLFLOW_TRACKING_USERNAME"],
                                          "password": sign_in["MLFLOW_TRACKING_PASSWORD"]}, seen, between,
                       hosts={NODE_NAME: stack.host})
    finally:
        local_stack.down(state_dir, clock=clock)
        if scratch:
            scratch.cleanup()


def walk_on(target: Walkable, binary: str, screens_dir: Path | None, failures_dir: Path, clock: Clock | None = None,
            walk_steps=None, prepare=None, timeout_ms: int = walk.TIMEOUT_MS) -> list[str]:
    """Walk `walk_steps` (the whole lesson by default) on `target` in the Chromium at `binary`."""
    with browser.chromium(binary, hosts=target.hosts) as chromium:
        return walk.perform(chromium, target.url, target.credentials, target.seen,
                            steps.WALK if walk_steps is None else walk_steps, screens_dir, failures_dir,
                            clock=clock, between=target.between, prepare=prepare, timeout_ms=timeout_ms)


def regenerate(archive: Path, screens_dir: Path = figures.SCREENS_DIR, failures_dir: Path | None = None,
               state_dir: Path | None = None, clock: Clock | None = None) -> list[str]:
    """Walk the lesson on a fresh stack holding `archive`'s history; returns the figures written."""
    clock = clock or Clock()
    binary = browser.install(clock)
    with walkable_stack(archive, state_dir, clock) as target:
        return walk_on(target, binary, screens_dir, failures_dir or FAILURES_DIR, clock)


class _signed_in:
    """MLflow's client reads the sign-in from the environment: set it for a while."""

    def __init__(self, values: dict[str, str]):
        self.values = {k: v for k, v in values.items() if k.startswith("MLFLOW_TRACKING_")}
        self.saved: dict[str, str | None] = {}

    def __enter__(self):
        for key, value in self.values.items():
            self.saved[key] = os.environ.get(key)
            os.environ[key] = value

    def __exit__(self, *exc):
        for key, value in self.saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
