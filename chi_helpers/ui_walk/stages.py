"""The history as a student has it at each step of the walk, so each figure shows what their screen shows.

The walk restores a whole series' history, then, before each step, shows only what the lesson has
made by then: a run a later step makes is deleted (MLflow's own soft delete, which the runs table
leaves out, and `restore_run` brings back), and the model notebook 07 registers is away until 07 (with
the tag that names its versions on each logged model), then registered again from the same logged
models, version by version, with its aliases and those tags.

The stages, in the lesson's order (a step's `stage`; most steps' is their notebook's):
- `FIRST_RUN`: 05 after its first tracked run (the one its timeout stopped);
- `05_track_pytorch`: 05 after its second run (the fix);
- `06_lightning`: 06's runs as well;
- `07_registry`: everything, with 07's registered model.
"""

from __future__ import annotations

from dataclasses import dataclass

FIRST_RUN = "05_track_pytorch:first run"
ORDER = [FIRST_RUN, "05_track_pytorch", "06_lightning", "07_registry"]
TRAINING_SCRIPT = "train_mlflow.py"  # 05's runs; 06's come from the Lightning script
VERSIONS_TAG = "mlflow.modelVersions"  # mlflow/utils/mlflow_tags.py: MLFLOW_MODEL_VERSIONS


class StageError(RuntimeError):
    """A stage the lesson does not have."""


@dataclass
class _Version:
    source: str
    run_id: str | None
    model_id: str | None
    aliases: list[str]


def _logged_model_id(source: str) -> str | None:
    """The logged model a version's source names (`models:/m-...`): the server wants its id beside it."""
    return source.removeprefix("models:/") if source.startswith("models:/m-") else None


class History:
    """One experiment's runs and one registered model, shown stage by stage through `client`."""

    def __init__(self, client, experiment_id: str, registered_model: str):
        self.client, self.registered_model = client, registered_model
        # The runs the table lists (a run deleted before the archive stays deleted), oldest first.
        self.runs = list(client.search_runs([experiment_id], order_by=["attributes.start_time ASC"], max_results=1000))
        self.tracked = [r for r in self.runs if r.data.tags.get("mlflow.source.name", "").endswith(TRAINING_SCRIPT)]
        self.deleted: set[str] = set()  # the runs this history has deleted, to bring back
        versions = client.search_model_versions(f"name='{registered_model}'")
        # The model's own record holds its aliases (a searched version's list may be empty).
        aliases = client.get_registered_model(registered_model).aliases if versions else {}
        self.versions = [_Version(v.source, v.run_id, getattr(v, "model_id", None) or _logged_model_id(v.source),
                                  sorted(a for a, number in aliases.items() if str(number) == str(v.version)))
                         for v in sorted(versions, key=lambda v: int(v.version))]
        self.registered = bool(self.versions)
        # A registered logged model lists its versions in a tag of its own, which the runs table's Models
        # column and the model's page show: away with the registered model, back with it.
        self.version_tags = {}
        for model_id in {v.model_id for v in self.versions if v.model_id}:
            tags = client.get_logged_model(model_id).tags
            if VERSIONS_TAG in tags:
                self.version_tags[model_id] = tags[VERSIONS_TAG]

    def visible(self, stage: str) -> list:
        """The runs a student's table lists at `stage`, oldest first."""
        if stage not in ORDER:
            raise StageError(f"no stage {stage!r}: the stages are {', '.join(ORDER)}")
        if stage == FIRST_RUN:
            return self.tracked[:1]
        if stage == "05_track_pytorch":
            return self.tracked
        return self.runs

    def show(self, stage: str) -> str:
        """Make the server hold what the lesson has made by `stage`; returns the newest run's name there."""
        shown = {r.info.run_id for r in self.visible(stage)}
        for run in self.runs:
            run_id = run.info.run_id
            if run_id in shown and run_id in self.deleted:
                self.client.restore_run(run_id)
                self.deleted.discard(run_id)
            elif run_id not in shown and run_id not in self.deleted:
                self.client.delete_run(run_id)
                self.deleted.add(run_id)
        wanted = ORDER.index(stage) >= ORDER.index("07_registry") and bool(self.versions)
        if wanted and not self.registered:
            self._register_again()
        elif not wanted and self.registered:
            self.client.delete_registered_model(self.registered_model)
            for model_id in self.version_tags:
                self.client.delete_logged_model_tag(model_id, VERSIONS_TAG)
            self.registered = False
        return self.visible(stage)[-1].info.run_name

    def _register_again(self) -> None:
        self.client.create_registered_model(self.registered_model)
        for version in self.versions:
            made = self.client.create_model_version(self.registered_model, version.source, run_id=version.run_id,
                                                    model_id=version.model_id, await_creation_for=0)
            for alias in version.aliases:
                self.client.set_registered_model_alias(self.registered_model, alias, made.version)
        for model_id, value in self.version_tags.items():
            self.client.set_logged_model_tags(model_id, {VERSIONS_TAG: value})
        self.registered = True
