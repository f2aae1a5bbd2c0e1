"""The walk through the MLflow UI that the lesson gives, step by step, in the lesson's order.

Each step quotes the lesson's words (`says`, as they stand in `notebooks/source/<notebook>.md`, line
breaks aside) and does what they say, by the labels they name: every *italic* and `code` label of
the quote must be used by the step, and the step may use no other (`walk.check_labels`). A run's
own name (the text says "the new run") is found through `Seen`, not through the quote. Labels the
lesson says only the node shows (a GPU's metrics) are listed in `node_only`: a CPU machine has none.

`screen` names the figure the step leaves: `docs/screens/<screen>.webp`, shown next to the step.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Callable

from chi_helpers.series import NOTEBOOKS, SOURCE_DIR
from chi_helpers.ui_walk.stages import FIRST_RUN
from chi_helpers.ui_walk.walk import UI

GPU_0 = "system/gpu_0_utilization_percentage"
NOTEBOOKS_ORDER = [entry.source.removesuffix(".md") for entry in NOTEBOOKS]


@dataclass(frozen=True)
class Step:
    notebook: str  # the source's stem: notebooks/source/<notebook>.md
    title: str
    says: str
    run: Callable[[UI], object]  # returns the area of the figure (a locator), or None for the marks
    screen: str | None = None
    node_only: tuple[str, ...] = ()
    stage: str = ""  # what the history holds then (`stages`); "": as the notebook's end leaves it


WALK: list[Step] = []


def step(notebook: str, says: str, screen: str | None = None, node_only: tuple[str, ...] = (), stage: str = ""):
    def add(run: Callable[[UI], object]) -> Callable[[UI], object]:
        title = run.__name__.replace("_", " ")
        WALK.append(Step(notebook, title, " ".join(says.split()), run, screen, node_only, stage or notebook))
        return run
    return add


# --- places a student reaches by words, not by a label the quote names ------------------------------

def sidebar(ui: UI):
    return ui.page.locator("nav, aside").filter(has=ui.page.get_by_role("link", name="Model registry")).first


def main(ui: UI):
    return ui.page.locator("main").first


def column(ui: UI, label: str):
    return ui.page.get_by_role("columnheader").filter(has_text=re.compile(rf"^\s*{re.escape(label)}\s*$")).first


def runs_listed(ui: UI) -> None:
    ui.page.get_by_role("link", name=ui.seen.listed, exact=True).filter(visible=True).first.wait_for()


def in_the_experiment(ui: UI) -> None:
    """To the experiment's pages, from wherever the walk is (a student's "in the experiment")."""
    if not sidebar(ui).get_by_role("link", name="Runs", exact=True).count():
        sidebar(ui).get_by_role("link", name="Experiments", exact=True).click()
        ui.page.get_by_role("link", name=ui.seen.experiment, exact=True).first.click()
    sidebar(ui).get_by_role("link", name="Runs", exact=True).wait_for()


def experiment_runs(ui: UI) -> None:
    """The experiment's runs table, listing its runs."""
    in_the_experiment(ui)
    sidebar(ui).get_by_role("link", name="Runs", exact=True).click()
    runs_listed(ui)


# --- 04: the first look, on a stack that holds no runs yet -----------------------------------------

@step("04_stack", "choose *Model training* (the other one, GenAI, hides the model registry). *Experiments* has one "
      "experiment, `Default`, with no runs yet.", screen="04-first-look")
def pick_the_workflow(ui: UI):
    ui.click("Model training", mark=True)
    ui.click("Experiments", role="link", within=sidebar(ui), mark=True)
    ui.see("Default", mark=True)


# --- 05: a tracked run ------------------------------------------------------------------------------

@step("05_track_pytorch", "open *Experiments*, then `food11-classifier` when it appears, open the new run, and watch "
      "its *System metrics* tab while it trains.", stage=FIRST_RUN)
def watch_a_run(ui: UI):
    ui.click("Experiments", role="link", within=sidebar(ui))
    ui.click("food11-classifier", role="link")
    ui.open_run(ui.seen.killed_run)
    ui.click("System metrics", role="tab")


@step("05_track_pytorch", "In the experiment's *Runs* table, choose *Columns* and tick the parameter `lr`, the metrics "
      "`val_accuracy` and `epoch_time`, and the attribute *Version*", screen="05-columns", stage=FIRST_RUN)
def choose_columns(ui: UI):
    ui.click("Runs", role="link", within=sidebar(ui))
    runs_listed(ui)  # a column ticked while the table still loads is lost
    ui.click("Columns", role="button", mark=True)
    ticked = ("lr", "val_accuracy", "epoch_time", "Version")
    for label in ticked:
        ui.tick(label)
    ui.page.keyboard.press("Escape")
    # The table draws only the columns in view, and new ones come last: scroll it to them for the figure.
    ui.page.locator(".ag-body-horizontal-scroll-viewport").first.evaluate("(bar) => { bar.scrollLeft = bar.scrollWidth; }")
    for label in ticked:
        ui.mark(column(ui, label))
    return ui.page.locator(".ag-root-wrapper").first


@step("05_track_pytorch", "Click the run's name. *Overview* shows the *Parameters*, each metric's last value, and "
      "*Source*: the script and its commit.", screen="05-overview", stage=FIRST_RUN)
def open_the_run(ui: UI):
    ui.page.keyboard.press("Escape")
    ui.open_run(ui.seen.killed_run)
    ui.click("Overview", role="tab", mark=True)
    ui.see("Parameters", exact=False, mark=True)
    ui.mark(ui.see("Source").locator("xpath=.."))  # with its value: the script and the commit


@step("05_track_pytorch", "*Model metrics* draws each metric over the epochs.", screen="05-model-metrics", stage=FIRST_RUN)
def model_metrics(ui: UI):
    ui.click("Model metrics", role="tab", mark=True)
    return main(ui)


@step("05_track_pytorch", f"*System metrics* draws CPU, memory and, on the node, `{GPU_0}`.",
      screen="05-system-metrics", node_only=(GPU_0,), stage=FIRST_RUN)
def system_metrics(ui: UI):
    ui.click("System metrics", role="tab", mark=True)
    return main(ui)


@step("05_track_pytorch", "*Artifacts* holds `gpu-info.txt`.", screen="05-artifacts", stage=FIRST_RUN)
def artifacts(ui: UI):
    ui.click("Artifacts", role="tab", mark=True)
    ui.click("gpu-info.txt", mark=True)  # its text shows beside the list
    return main(ui)


@step("05_track_pytorch", "on the run's *Overview*, the pencil next to *Description*.")
def the_description(ui: UI):
    ui.click("Overview", role="tab")
    ui.see("Description")
    ui.page.get_by_role("button", name="Edit description").filter(visible=True).first.wait_for()


@step("05_track_pytorch", "Switch the runs table to *Chart view* (the chart icon next to the table): one chart per "
      "metric, a line per run.", screen="05-chart-view")
def chart_view(ui: UI):
    experiment_runs(ui)
    icon = ui.page.locator("label:has(input[value=CHART])").first
    ui.hover_says(icon, "Chart view").click()
    ui.mark(icon)
    return main(ui)


@step("05_track_pytorch", f"Find `epoch_time` and `{GPU_0}`. The two runs started minutes apart, so on wall time "
      "their lines do not overlap: in each chart's menu (the dots at its top right) choose *Configure* and set the "
      "X axis to *Step*, or to relative time.", screen="05-configure-chart", node_only=(GPU_0,))
def configure_a_chart(ui: UI):
    title = ui.see("epoch_time")
    card = title.locator("xpath=ancestor::*[.//button][1]")
    card.get_by_role("button").last.click()
    ui.click("Configure")
    dialog = ui.page.get_by_role("dialog").filter(visible=True).first
    ui.click("Step", within=dialog, mark=True)
    ui.later.append(lambda: dialog.get_by_role("button", name="Save changes").click())
    return dialog


@step("05_track_pytorch", "Save the two charts (each chart's menu, *Download as PNG*)")
def download_a_chart(ui: UI):
    # The chart of the step before: its menu again.
    ui.page.get_by_text("epoch_time", exact=True).filter(visible=True).first.locator(
        "xpath=ancestor::*[.//button][1]").get_by_role("button").last.click()
    ui.see("Download as PNG", exact=False)
    ui.page.keyboard.press("Escape")


@step("05_track_pytorch", "Its *Overview* lists, under *Logged models*, its `food11` model. Click it, press "
      "*Register model*, choose *Create New Model*, name it `food11`, press *Register*.", screen="05-register-model")
def register_from_the_ui(ui: UI):
    ui.page.locator("label:has(input[value=TABLE])").first.click()  # back from the chart view to the table
    ui.open_run(ui.seen.best_run)
    ui.click("Overview", role="tab")
    heading = ui.see("Logged models", exact=False)
    ui.page.get_by_role("heading", name=re.compile(r"Logged models \([1-9]")).wait_for()  # "(0)" while loading
    section = heading.locator("xpath=../..")
    section.get_by_role("link", name="food11", exact=True).last.click()
    ui.click("Register model", role="button")
    dialog = ui.page.get_by_role("dialog").filter(visible=True).first
    dialog.get_by_role("combobox").first.click()
    ui.click("Create New Model")
    dialog.get_by_role("textbox").last.fill(ui.name("food11"))
    ui.mark(dialog.get_by_role("textbox").last)
    ui.later.append(lambda: ui.click("Register", role="button", within=dialog))  # after the figure
    return dialog


@step("05_track_pytorch", "*Model registry* in the sidebar now lists `food11`; on your first visit a window presents "
      "the registry's new layout first: press *Try it now*.", screen="05-model-registry")
def the_registry_lists_it(ui: UI):
    ui.click("Model registry", role="link", within=sidebar(ui), mark=True)
    ui.click("Try it now", role="button")
    ui.see(ui.name("food11"), mark=True)


# --- 06: compare ------------------------------------------------------------------------------------

@step("06_lightning", "In the experiment's *Runs* table, tick the two newest runs and press *Compare*.")
def pick_two_runs(ui: UI):
    in_the_experiment(ui)
    ui.click("Runs", role="link", within=sidebar(ui))
    runs_listed(ui)
    for name in ui.seen.newest_runs:
        row = ui.page.get_by_role("row").filter(has=ui.page.get_by_role("link", name=name, exact=True)).first
        row.get_by_role("checkbox").first.check()
    ui.click("Compare", role="button")


@step("06_lightning", "The page lists their parameters side by side; *Show diff only* leaves the rows that differ: `lr`.",
      screen="06-compare")
def show_the_difference(ui: UI):
    ui.click("Show diff only", mark=True)  # the first one: the parameters'
    ui.see("lr")
    return main(ui)


# --- 07: the champion -------------------------------------------------------------------------------

@step("07_registry", "*Model registry*, the model, the version, then the pencil next to *Aliases*, *Edit aliases*",
      screen="07-edit-aliases")
def edit_aliases(ui: UI):
    ui.click("Model registry", role="link", within=sidebar(ui))
    ui.page.get_by_role("link", name=ui.seen.registered_model, exact=True).first.click()
    ui.page.get_by_role("link", name=f"Version {ui.seen.champion_version}", exact=True).first.click()
    ui.see("Aliases", exact=False)
    ui.click("Edit aliases", mark=True)
    return ui.page.get_by_role("dialog").filter(visible=True).first


# --- the quotes stand in the lesson, in its order ---------------------------------------------------

def normalized(text: str) -> str:
    """The source's words with line breaks and list markers flattened, as a quote is written."""
    lines = [re.sub(r"^\s*\d+\.\s+", "", line) for line in text.splitlines()]
    return " ".join(" ".join(lines).split())


def quote_problems(walk: list[Step] | None = None, sources: dict[str, str] | None = None) -> list[str]:
    """Every step's words must stand in its notebook's source, and the steps come in the lesson's order."""
    walk = WALK if walk is None else walk
    order = NOTEBOOKS_ORDER
    problems, last = [], (-1, -1)
    for item in walk:
        if sources is not None and item.notebook in sources:
            text = sources[item.notebook]
        else:
            text = (SOURCE_DIR / f"{item.notebook}.md").read_text()
        at = normalized(text).find(item.says)
        if at < 0:
            problems.append(f"{item.notebook}: the lesson no longer says: {item.says!r}")
            continue
        place = (order.index(item.notebook), at)
        if place <= last:
            problems.append(f"{item.notebook}: the walk's step {item.title!r} comes earlier in the lesson than the "
                            "step before it: the lesson's order changed")
        last = place
    return problems
