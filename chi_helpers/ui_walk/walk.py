"""Perform the walk (`steps.WALK`) in a browser, signed in to an MLflow server, and save its figures.

Each step runs through a `UI`, which finds controls by the labels a student reads (a button's,
tab's or link's name, a tooltip, a checkbox's text) and records every label it used. After the
step, the labels the lesson's words name (its *italics* and `code`) must be the labels the step
used: a step that clicks something the text does not name, or skips something it names, fails.
A step the UI does not offer fails with the lesson's words and a screenshot of the page.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit

from chi_helpers.progress import Clock
from chi_helpers.ui_walk import figures
from chi_helpers.ui_walk.browser import guarded_context

VIEWPORT = {"width": 1440, "height": 900}
TIMEOUT_MS = 20_000  # the UI fetches as it goes; a 2-core machine running the server is slow
ITALIC = re.compile(r"(?<![*\w])\*(?!\*)([^*\n]+?)\*(?![*\w])")
CODE = re.compile(r"`([^`\n]+)`")
# The UI's design system draws a tree of checkboxes without checkbox roles: found by its classes.
TREE_NODE, TREE_CHECKBOX = ".du-bois-light-tree-treenode", ".du-bois-light-tree-checkbox"
TREE_SWITCHER, TREE_TITLE = ".du-bois-light-tree-switcher", ".du-bois-light-tree-title"
TREE_LIST = ".du-bois-light-tree-list-holder"
ROLES = ("button", "tab", "link", "menuitem", "menuitemcheckbox", "menuitemradio", "radio", "option", "checkbox")


class WalkError(AssertionError):
    """A step the UI does not offer, or whose labels differ from the lesson's words."""


def labels_named(says: str) -> set[str]:
    """The labels a step's words name: what is in italics or in backticks."""
    return set(ITALIC.findall(says)) | set(CODE.findall(says))


@dataclass
class Seen:
    """What the walk knows of the server's history before it starts (run names are the runs' own)."""
    experiment: str
    killed_run: str  # 05's first tracked run, stopped by its timeout
    best_run: str  # the run with the best test_accuracy
    newest_runs: list[str]  # 06's two trainings, newest first
    registered_model: str  # 07's
    champion_version: str
    listed: str = ""  # a run the runs table lists at the step (the newest there)


@dataclass
class UI:
    page: object
    seen: Seen
    used: list[str] = field(default_factory=list)
    marked: list = field(default_factory=list)
    later: list = field(default_factory=list)  # what the step does after its figure is taken

    # -- finding -----------------------------------------------------------------------------------
    def control(self, label: str, role: str | None = None, within=None):
        """The visible control a student would call `label`."""
        scope = within or self.page
        if role:
            found = scope.get_by_role(role, name=label, exact=True)
        else:
            found = scope.get_by_role(ROLES[0], name=label, exact=True)
            for other in ROLES[1:]:
                found = found.or_(scope.get_by_role(other, name=label, exact=True))
            found = found.or_(scope.get_by_text(label, exact=True))
        return found.filter(visible=True).first

    def _use(self, label: str) -> str:
        self.used.append(label)
        return label

    # -- what a student does -------------------------------------------------------------------------
    def click(self, label: str, role: str | None = None, within=None, mark: bool = False):
        found = self.control(self._use(label), role, within)
        found.click()
        if mark:
            self.mark(found)
        return found

    def see(self, label: str, within=None, mark: bool = False, exact: bool = True):
        """A text the lesson says is on the screen."""
        found = (within or self.page).get_by_text(self._use(label), exact=exact).filter(visible=True).first
        found.wait_for()
        if mark:
            self.mark(found)
        return found

    def hover_says(self, target, label: str):
        """Hover an icon; its tooltip must read `label` (how the UI names an icon-only control)."""
        target.hover(force=True, )
        tip = self.page.get_by_role("tooltip").filter(has_text=self._use(label)).first
        tip.wait_for()
        return target

    def tick(self, label: str, within=None):
        """Tick the entry `label` of a tree of checkboxes (the UI's *Columns* list), found by its title."""
        scope = within or self.page
        self._use(label)
        title = scope.locator(TREE_TITLE, has_text=re.compile(rf"^\s*{re.escape(label)}\s*$"))
        node = scope.locator(TREE_NODE).filter(has=title).filter(visible=True).first
        holder = scope.locator(TREE_LIST).filter(visible=True).first
        holder.evaluate("(list) => { list.scrollTop = 0; }")
        for _ in range(200):  # the list draws only what is in view: scroll it, as a student does
            if node.count():
                break
            closed = scope.locator(f"{TREE_NODE}-switcher-close {TREE_SWITCHER}_close").filter(visible=True)
            if closed.count():  # a group not opened yet (Parameters starts closed)
                closed.first.click()
                continue
            moved = holder.evaluate("(list) => { const was = list.scrollTop; list.scrollTop += 120; return list.scrollTop !== was; }")
            if not moved:
                break
            self.page.wait_for_timeout(50)
        node.scroll_into_view_if_needed()
        box = node.locator(TREE_CHECKBOX).first
        if "checked" not in (box.get_attribute("class") or ""):
            box.click()
        node.locator(f"{TREE_CHECKBOX}-checked").wait_for()
        return node

    def open_run(self, run_name: str):
        """A run's name in a table: the run's own, so the text names it in words, not as a label."""
        found = self.page.get_by_role("link", name=run_name, exact=True).filter(visible=True).first
        found.click()
        return found

    def name(self, value: str) -> str:
        """A value the step uses that the text also names (a model name typed, a metric looked for)."""
        return self._use(value)

    def mark(self, found):
        found.evaluate(f"(node) => node.setAttribute('style', (node.getAttribute('style') || '') + ';{figures.MARK_CSS}')")
        found.evaluate("(node) => node.setAttribute('data-walk-mark', '1')")
        self.marked.append(found)
        return found

    def unmark(self):
        self.page.evaluate("""() => document.querySelectorAll('[data-walk-mark]').forEach(node => {
            node.style.outline = ''; node.style.outlineOffset = ''; node.removeAttribute('data-walk-mark'); })""")
        self.marked.clear()

    # -- the figure ----------------------------------------------------------------------------------
    def shot(self, path: Path, area=None) -> int:
        """A screenshot of `area` (a locator), or of the marked elements with a margin; saved as WebP."""
        self.page.wait_for_timeout(400)  # charts draw after their data arrives
        viewport = self.page.viewport_size
        boxes = [figures.Box.of(found.bounding_box()) for found in self.marked]
        if area is None and not boxes:
            raise WalkError("a figure needs an area or a marked element")
        marks = boxes[0] if boxes else None
        for other in boxes[1:]:
            marks = marks.union(other)
        if area is None:
            box = marks.padded(figures.PADDING).at_least(*figures.MIN_SIZE)
        else:  # the area, widened to every mark
            box = figures.Box.of(area.bounding_box())
            box = box if marks is None else box.union(marks.padded(figures.PADDING))
        clip = box.within(viewport["width"], viewport["height"]).clip()
        return figures.save(self.page.screenshot(clip=clip), path)


def perform(browser, url: str, credentials: dict | None, seen: Seen, steps, screens_dir: Path | None,
            failures_dir: Path, clock: Clock | None = None, between=None, prepare=None,
            timeout_ms: int = TIMEOUT_MS) -> list[str]:
    """Walk `steps` on the server at `url`; write each step's figure into `screens_dir` (when given).

    `between(step, page)` runs before each step (the walk restores a history after 04's first look with it).
    `prepare(context)` may add routes to the browser context first (a test changes the UI with it).
    Returns the names of the figures written. Requests outside loopback are refused in the browser.
    """
    clock = clock or Clock()
    refused: list[str] = []
    context = guarded_context(browser, refused, viewport=VIEWPORT, http_credentials=credentials,
                              reduced_motion="reduce")
    context.set_default_timeout(timeout_ms)  # every find, click and wait of the walk
    if prepare:
        prepare(context)
    page = context.new_page()
    page.goto(url)
    written = []
    try:
        for number, step in enumerate(steps, 1):
            if between:
                between(step, page)
            ui = UI(page, seen)
            clock.say(f"[{number}/{len(steps)}] {step.notebook}: {step.title}")
            try:
                area = step.run(ui)
                if step.screen and screens_dir is not None:
                    size = ui.shot(figures.path_for(step.screen, screens_dir), area)
                    written.append(step.screen)
                    clock.say(f"    figure {step.screen}{figures.SUFFIX}: {size // 1000} KB")
                ui.unmark()
                for action in ui.later:
                    action()
            except Exception as failed:  # Playwright's timeouts and errors, or an assertion
                if isinstance(failed, WalkError):
                    raise
                failures_dir.mkdir(parents=True, exist_ok=True)
                picture = failures_dir / f"{number:02d}-{step.notebook}.png"
                page.screenshot(path=str(picture), full_page=True)
                first = str(failed).strip().splitlines()[0] if str(failed).strip() else type(failed).__name__
                raise WalkError(f"{step.notebook}, step {number} ({step.title}): the lesson says\n    {step.says}\n"
                                f"but the UI does not offer it: {first}\nthe page then: {picture}") from failed
            check_labels(step, ui.used)
    finally:
        context.close()
        if refused:  # stopped in the browser: nothing left the machine
            hosts = sorted({urlsplit(url).netloc for url in refused})
            clock.say(f"refused {len(refused)} request(s) outside loopback, to {', '.join(hosts)}")
    return written


def check_labels(step, used: list[str]) -> None:
    named = labels_named(step.says) - set(step.node_only)
    missing = named - set(used)
    extra = set(used) - named
    if missing or extra:
        raise WalkError(f"{step.notebook}, {step.title}: the lesson's words and the walk differ"
                        + (f"; named but not used: {sorted(missing)}" if missing else "")
                        + (f"; used but not named: {sorted(extra)}" if extra else "")
                        + f"\n    the lesson says: {step.says}")
