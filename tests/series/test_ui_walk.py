"""The MLflow UI walk-through the lesson gives, performed in Debian's Chromium on a real series' history.

The walk (`chi_helpers.ui_walk.steps`) quotes the lesson's words for each step and does what they say,
by the labels they name. These tests check both ends: the quotes stand in the lesson, in its order, and
the figures next to them (no browser needed); and the walk passes on the history of the real local
series run (`series`, shared with test_series.py), signed in to a stack with the node's topology and the
Compose file's own MLflow options, opened where a student opens the node: at its public address (a name
Chromium maps onto the loopback listener), not at localhost. A label the UI no longer has fails with the
lesson's words and a screenshot; so does the runs table under the Compose file's options before the
node's origin was among them.
"""

from __future__ import annotations

import re
from pathlib import Path
from urllib.parse import urlsplit

import pytest
from PIL import Image

from chi_helpers import compose_file
from chi_helpers.local import processes
from chi_helpers.local import stack as local_stack
from chi_helpers.series import NOTEBOOKS, SOURCE_DIR
from chi_helpers.ui_walk import figures, screens, steps, walk
from chi_helpers.ui_walk.steps import WALK, Step, normalized, quote_problems
from chi_helpers import credentials
from tracking_history import SignedIn

SOURCES = {entry.source.removesuffix(".md"): (SOURCE_DIR / entry.source).read_text() for entry in NOTEBOOKS}
FIGURE = re.compile(r"!\[[^\]]+\]\(\.\./\.\./docs/screens/(?P<name>[\w-]+)\.webp\)")


# --- the lesson's side: no browser -----------------------------------------------------------------

def test_every_step_quotes_the_lesson_in_its_order():
    assert quote_problems() == []
    assert [s.notebook for s in WALK] == sorted((s.notebook for s in WALK), key=steps.NOTEBOOKS_ORDER.index)


def test_a_reworded_label_or_a_reordered_step_in_the_lesson_is_caught():
    reworded = {**SOURCES, "05_track_pytorch": SOURCES["05_track_pytorch"].replace("choose *Columns*", "choose *Fields*")}
    assert [p for p in quote_problems(sources=reworded) if "*Columns*" in p], quote_problems(sources=reworded)
    text = SOURCES["05_track_pytorch"]
    model, system = re.search(r"^3\. \*Model metrics\*.*$", text, re.M)[0], re.search(r"^4\. \*System metrics\*.*$", text, re.M)[0]
    swapped = text.replace(model, "@@").replace(system, model).replace("@@", system)
    problems = quote_problems(sources={**SOURCES, "05_track_pytorch": swapped})
    assert any("order changed" in p for p in problems), problems


def test_every_ui_label_the_node_side_lessons_name_is_walked():
    walked = set().union(*(walk.labels_named(s.says) for s in WALK))
    for entry in NOTEBOOKS:
        if entry.side != "node":
            continue
        for label in walk.ITALIC.findall(SOURCES[entry.source.removesuffix(".md")]):
            assert label in walked, f"{entry.name} names *{label}*, which no walk step uses"


def test_a_step_must_use_exactly_the_labels_its_words_name():
    step = Step("05_track_pytorch", "a test", "choose *Columns* and tick `lr`", run=lambda ui: None)
    walk.check_labels(step, ["Columns", "lr"])
    with pytest.raises(walk.WalkError, match=r"named but not used: \['lr'\]"):
        walk.check_labels(step, ["Columns"])
    with pytest.raises(walk.WalkError, match=r"used but not named: \['Compare'\]"):
        walk.check_labels(step, ["Columns", "lr", "Compare"])


def test_each_figure_stands_next_to_its_step_and_is_small():
    named = [s.screen for s in WALK if s.screen]
    for index, step in enumerate(WALK):
        if not step.screen:
            continue
        text = normalized(SOURCES[step.notebook])
        at = text.find(step.says)
        following = [s for s in WALK[index + 1:] if s.notebook == step.notebook]
        end = text.find(following[0].says) if following else len(text)
        shown = [m["name"] for m in FIGURE.finditer(text[at:end])]
        assert step.screen in shown, f"{step.notebook}: no figure {step.screen} after the step {step.says!r}"
        path = figures.path_for(step.screen)
        assert path.is_file(), f"{path} is missing: `make screens` regenerates the figures"
        assert path.stat().st_size <= figures.MAX_BYTES
        with Image.open(path) as image:
            assert image.format == "WEBP" and image.width >= 600 and image.height >= 300
    committed = sorted(p.stem for p in figures.SCREENS_DIR.glob("*"))
    assert committed == sorted(named), "docs/screens holds exactly the walk's figures"
    used = {m["name"] for text in SOURCES.values() for m in FIGURE.finditer(text)}
    assert used == set(named)


def test_each_stage_holds_what_the_lesson_has_made_by_then(mlflow_server):
    # A history shaped as the series leaves it: two runs of 05's script, three of Lightning's, a model with
    # two versions and a champion. Each stage lists only its runs; 07's model is away before 07, and back
    # after, with its versions in order and the same champion.
    import uuid

    from mlflow import MlflowClient

    from chi_helpers.ui_walk import stages
    from tracking_history import tracking_uri

    name = f"stages-{uuid.uuid4().hex[:8]}"
    model = f"{name}-model"
    with tracking_uri(mlflow_server.url):
        client = MlflowClient(mlflow_server.url)
        experiment = client.create_experiment(name)
        scripts = ["train_mlflow.py"] * 2 + ["train_lightning_mlflow.py"] * 3
        runs = [client.create_run(experiment, start_time=1_000 * (i + 1), run_name=f"run-{i}",
                                  tags={"mlflow.source.name": f"/w/{script}"}) for i, script in enumerate(scripts)]
        client.create_registered_model(model)
        logged_ids = []
        for run in runs[3:]:  # as 07 registers them: from each run's logged model
            logged = client.create_logged_model(experiment, name="model", source_run_id=run.info.run_id)
            client.create_model_version(model, f"models:/{logged.model_id}", run_id=run.info.run_id,
                                        model_id=logged.model_id)
            logged_ids.append(logged.model_id)
        client.set_registered_model_alias(model, "champion", "1")

        def listed() -> list[str]:
            found = client.search_runs([experiment], order_by=["attributes.start_time ASC"])
            return [r.info.run_name for r in found]

        client.set_logged_model_tags(logged_ids[0], {stages.VERSIONS_TAG: f'[{{"name": "{model}", "version": 1}}]'})

        def version_tags() -> list:
            return [client.get_logged_model(i).tags.get(stages.VERSIONS_TAG) for i in logged_ids]

        before = version_tags()
        history = stages.History(client, experiment, model)
        assert history.show(stages.FIRST_RUN) == "run-0" and listed() == ["run-0"]
        assert client.search_registered_models(f"name='{model}'") == []
        assert not any(version_tags())  # no "Models" entry in the runs table before 07
        assert history.show("05_track_pytorch") == "run-1" and listed() == ["run-0", "run-1"]
        assert history.show("06_lightning") == "run-4" and listed() == [f"run-{i}" for i in range(5)]
        assert client.search_registered_models(f"name='{model}'") == []
        history.show("07_registry")
        versions = sorted(client.search_model_versions(f"name='{model}'"), key=lambda v: int(v.version))
        assert [(v.version, v.run_id) for v in versions] == [("1", runs[3].info.run_id), ("2", runs[4].info.run_id)]
        assert client.get_model_version_by_alias(model, "champion").run_id == runs[3].info.run_id
        assert version_tags() == before
        assert history.show(stages.FIRST_RUN) == "run-0" and listed() == ["run-0"]  # and back again
        with pytest.raises(stages.StageError, match="no stage"):
            history.show("08_release")


# --- the UI's side: Chromium on the series' history ---------------------------------------------------

@pytest.fixture(scope="module")
def walked(chromium, series, tmp_path_factory):
    """The whole walk on the series' archive; the stack stays for the test that changes the UI."""
    _, _, workdir = series
    out = tmp_path_factory.mktemp("walk")
    with screens.walkable_stack(screens.newest_archive(workdir), out / "stack") as target:
        written = screens.walk_on(target, chromium, out / "screens", out / "failures")
        yield target, written, out


def test_the_walk_follows_the_lesson_on_a_series_history(walked):
    target, written, out = walked
    assert target.url.startswith(f"http://{screens.NODE_NAME}:")  # the node's public address, not loopback
    assert written == [s.screen for s in WALK if s.screen]
    for name in written:
        path = figures.path_for(name, out / "screens")
        assert 0 < path.stat().st_size <= figures.MAX_BYTES
        with Image.open(path) as image, Image.open(figures.path_for(name)) as committed:
            # The same screen as the committed figure, give or take the data's own widths.
            assert abs(image.width - committed.width) <= 200 and abs(image.height - committed.height) <= 200, name
    # The walk registered food11 from the UI, as notebook 05 tells the student to.
    assert target.seen.best_run and not (out / "failures").exists()
    # It ended at 07: every run of the series listed again, and 07's model back with its champion.
    with SignedIn(out / "stack") as client:
        experiment = client.get_experiment_by_name(screens.EXPERIMENT).experiment_id
        assert not client.search_runs([experiment], run_view_type=2)  # ViewType.DELETED_ONLY
        champion = client.get_model_version_by_alias(screens.REGISTERED_MODEL, "champion")
        assert str(champion.version) == target.seen.champion_version


def test_the_bucket_holds_what_notebook_04_says(walked):
    # "In the bucket, MLflow keeps a folder per experiment, a folder per run inside it, and a folder of logged
    # models": read over S3 from the stand-in that holds the series' artifacts.
    from chi_helpers.local import object_store

    _, _, out = walked
    store = object_store.read_state(out / "stack")
    s3 = store.s3()

    def folders(prefix: str = "") -> set[str]:
        listed = s3.list_objects_v2(Bucket=store.bucket, Prefix=prefix, Delimiter="/")
        return {p["Prefix"] for p in listed.get("CommonPrefixes", [])}

    with SignedIn(out / "stack") as client:
        experiment = client.get_experiment_by_name(screens.EXPERIMENT).experiment_id
        runs = {r.info.run_id for r in client.search_runs([experiment], max_results=1000)}
    assert folders() == {f"{experiment}/"}
    assert folders(f"{experiment}/") == {f"{experiment}/{run}/" for run in runs} | {f"{experiment}/models/"}


def test_a_label_the_ui_no_longer_has_fails_with_the_lessons_words_and_a_screenshot(walked, chromium):
    target, _, out = walked

    def rename_columns(context):
        # The UI as a release that renamed the button: its bundle says "Fields" where it said "Columns". The
        # bundle is fetched by Playwright itself, outside the browser and its resolver: at the loopback
        # address the public name stands for.
        def renamed(route):
            parts = urlsplit(route.request.url)
            local = parts._replace(netloc=f"{target.hosts[parts.hostname]}:{parts.port}").geturl()
            answer = route.fetch(url=local)
            route.fulfill(response=answer, body=answer.text().replace('"Columns"', '"Fields"'))
        context.route(re.compile(r".*/static-files/static/js/.*\.js$"), renamed)

    upto = [s for s in WALK if s.run.__name__ in ("pick_the_workflow", "watch_a_run", "choose_columns")]
    with pytest.raises(walk.WalkError) as failed:
        screens.walk_on(target, chromium, None, out / "renamed", walk_steps=upto, prepare=rename_columns,
                        timeout_ms=5000)
    message = str(failed.value)
    assert "choose *Columns* and tick the parameter `lr`" in message and "does not offer it" in message
    picture = Path(message.rsplit("the page then: ", 1)[1].strip())
    assert picture.is_file() and picture.parent == out / "renamed"


def test_the_runs_table_at_the_nodes_address_needs_the_nodes_origin(chromium, tmp_path):
    """The Compose file's MLflow options before `--cors-allowed-origins` named the node: the UI loads (its GET
    requests pass), but MLflow refuses the runs table's search (a POST from an origin that is not localhost),
    so the run a student is told to open never appears. The same steps pass on today's file in the walk above."""
    from mlflow import MlflowClient

    port = processes.free_port()
    before = [flag for flag in local_stack.node_flags(screens.NODE_NAME, port)
              if not flag.startswith(("--cors-allowed-origins", "--artifacts-destination"))]
    assert compose_file.flag_value(before, "--allowed-hosts")  # the Host check passes: only the origin is missing
    stack = local_stack.up(tmp_path / "stack", port=port, flags=before, public_address=screens.NODE_NAME)
    try:
        with screens._signed_in(credentials.read(stack.auth_file)):
            client = MlflowClient(stack.url)
            run = client.create_run(client.create_experiment(screens.EXPERIMENT), run_name="a-first-run")
        seen = walk.Seen(screens.EXPERIMENT, "a-first-run", "a-first-run", ["a-first-run"], "", "")
        sign_in = credentials.read(stack.auth_file)
        target = screens.Walkable(stack.public_url, {"username": sign_in["MLFLOW_TRACKING_USERNAME"],
                                                     "password": sign_in["MLFLOW_TRACKING_PASSWORD"]}, seen, None,
                                  hosts={screens.NODE_NAME: stack.host})
        upto = [s for s in WALK if s.run.__name__ in ("pick_the_workflow", "watch_a_run")]
        with pytest.raises(walk.WalkError) as failed:
            screens.walk_on(target, chromium, None, tmp_path / "failures", walk_steps=upto, timeout_ms=5000)
        assert "open the new run" in str(failed.value) and run.info.run_id
        assert f"Blocked cross-origin request from {stack.public_url}" in Path(stack.log).read_text()  # MLflow refused it
    finally:
        local_stack.down(tmp_path / "stack")
