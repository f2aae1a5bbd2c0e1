"""`python -m chi_helpers build`: the series' notebooks and web pages, per GPU variant and for the local
target, from one source.

A source (`notebooks/source/NN_name.md`) is Markdown:

- a fenced block opened with ```` ```python ```` becomes a code cell (```` ```python parameters ````
  tags it `parameters` for papermill); every other fence stays Markdown, to be read, not run;
- the Markdown between two code cells is one Markdown cell, or several where a line `+++` splits it;
- `::: nvidia vm` ... `:::` keeps what it wraps only in those variants' notebooks, `::: chameleon` or
  `::: local` only in that target's, and `::: chameleon amd` only where both hold;
- `{{ key }}` is replaced by that field of the build's profile (`chi_helpers.variants`; the local build
  has `LOCAL`);
- a line `{{ compose_service NAME }}` becomes that service of `docker/compose-tracking.yaml`, as the
  file writes it, in a YAML block: the lesson shows the file the node runs, and cannot drift from it;
- `{{ node_command NAME }}` becomes the shell command of that setup step for the variant
  (`node_setup.lesson_steps`) as a Python string literal, so 02 shows each command itself, from the
  list the plan and the tests read;
- the setup cell (`SETUP_CELL`) is put right after the parameters cell of every notebook: three
  lines that import `series_setup` (a copy of the top folder's `series_setup.py` sits beside every
  notebook), which finds the copy of the series (or the installed package) and readies the kernel
  (`kernel_setup`), so a notebook opened where the package is not installed (Chameleon's JupyterHub)
  runs from its top.

`build` writes each variant's notebooks (testbed-side ones under `notebooks/<variant>/`, node-side
ones under `workspace_mlflow/<variant>/`), the local target's (`notebooks/local/`,
`workspace_mlflow/local/`), and one HTML page per build plus an index under `site/`. `build --check`
writes nothing and fails when a committed file differs.
"""

from __future__ import annotations

import re
import sys
from dataclasses import dataclass
from pathlib import Path

import nbformat

from chi_helpers.series import LOCAL_BUILD, NOTEBOOKS, REPO_ROOT, SOURCE_DIR, notebooks_for, output_path
from chi_helpers.variants import DEFAULT_VARIANT, LOCAL, TARGETS, VARIANTS, Variant

SITE_DIR = REPO_ROOT / "site"
FENCE = re.compile(r"^```python(?:\s+(?P<tags>[\w ,-]+))?\s*$")
ONLY = re.compile(r"^:::\s+(?P<names>[\w ]+)$")
SUBSTITUTION = re.compile(r"\{\{\s*(\w+)\s*\}\}")
COMPOSE_SERVICE = re.compile(r"^\{\{\s*compose_service\s+(?P<name>[\w-]+)\s*\}\}\s*$")
COMPOSE_FILE = REPO_ROOT / "docker" / "compose-tracking.yaml"
NODE_COMMAND = re.compile(r"\{\{\s*node_command\s+(?P<name>\w+)\s*\}\}")


class SourceError(ValueError):
    """A source file breaks the format; the message names the file and line."""


@dataclass
class Cell:
    kind: str  # "markdown" or "code"
    text: str
    tags: tuple[str, ...] = ()


def _keeps(names: list[str], variant: str, target: str, where: str) -> bool:
    """Whether a `::: names` block is for this build: each kind of name given (variants, targets) must match."""
    unknown = set(names) - set(VARIANTS) - set(TARGETS)
    if unknown:
        raise SourceError(f"{where}: unknown variant(s) or target(s) {sorted(unknown)}")
    variants = [n for n in names if n in VARIANTS]
    targets = [n for n in names if n in TARGETS]
    return (not variants or variant in variants) and (not targets or target in targets)


def _select(lines: list[str], variant: str, target: str, where: str) -> list[str]:
    """Drop the `::: names` blocks that are not for this variant and target."""
    kept, inside = [], None
    for number, line in enumerate(lines, 1):
        opened = ONLY.match(line)
        if opened:
            if inside is not None:
                raise SourceError(f"{where}:{number}: a ::: block inside another")
            inside = _keeps(opened["names"].split(), variant, target, f"{where}:{number}")
        elif line.strip() == ":::":
            if inside is None:
                raise SourceError(f"{where}:{number}: ::: closes nothing")
            inside = None
        elif inside is not False:
            kept.append(line)
    if inside is not None:
        raise SourceError(f"{where}: a ::: block is not closed")
    return kept


def _substitute(text: str, profile: dict, where: str) -> str:
    def value(match: re.Match) -> str:
        key = match[1]
        if key not in profile:
            raise SourceError(f"{where}: {{{{ {key} }}}} is not a field of the variant profile")
        return str(profile[key])

    return SUBSTITUTION.sub(value, text)


def compose_service(name: str, where: str = "<source>") -> list[str]:
    """One service of the tracking stack's Compose file, its comments included, as a YAML block."""
    lines = COMPOSE_FILE.read_text().splitlines()
    if f"  {name}:" not in lines:
        raise SourceError(f"{where}: docker/compose-tracking.yaml has no service {name!r}")
    start = end = lines.index(f"  {name}:")
    while end + 1 < len(lines) and (lines[end + 1].startswith("    ") or not lines[end + 1].strip()):
        end += 1
    while not lines[end].strip():
        end -= 1
    return ["```yaml", *(line[2:] for line in lines[start:end + 1]), "```"]


def python_string(text: str) -> str:
    """`text` as a Python literal a student reads easily: quotes that need no escapes, and an f-string
    where it names the notebook's `{repo}` or `{ref}`."""
    prefix = "f" if "{repo}" in text or "{ref}" in text else ""
    if prefix and re.sub(r"\{(repo|ref)\}", "", text).count("{"):
        raise SourceError(f"a command with {{repo}} or {{ref}} has other braces, which an f-string would read: {text}")
    if "\\" not in text and "\n" not in text:
        for quote in ('"', "'", '"""'):
            if quote not in text and not text.endswith(quote[0]):
                return f"{prefix}{quote}{text}{quote}"
    return prefix + repr(text)


WIDTH = 96  # a command longer than this is shown as several literals Python joins, one per line
BREAKS = ("&& ", "|| ", "; ", "| ")  # where a line may end (else at a space)


def python_lines(text: str, indent: str) -> str:
    """`text` as adjacent Python literals, one line each: Python joins them into the same string, so
    where the lines break changes nothing but how it reads."""
    pieces = []
    while len(text) > WIDTH:
        cut = max(text.rfind(b, 20, WIDTH - len(b)) + len(b) for b in BREAKS)
        if cut < 40:
            cut = text.rfind(" ", 20, WIDTH) + 1 or WIDTH
        pieces.append(text[:cut])
        text = text[cut:]
    pieces.append(text)
    if len(pieces) == 1:
        return python_string(text)
    return "\n" + "".join(f"{indent}    {python_string(piece)}\n" for piece in pieces) + indent


def node_command(name: str, variant: Variant, where: str = "<source>", indent: str = "") -> str:
    from chi_helpers.chameleon import node_setup

    steps = node_setup.lesson_steps(variant)
    if name not in steps:
        raise SourceError(f"{where}: no setup step {name!r} for {variant.name} (node_setup.lesson_steps has "
                          f"{', '.join(steps)})")
    return python_lines(steps[name].command, indent)


def _expand(lines: list[str], variant: Variant, where: str) -> list[str]:
    expanded = []
    for line in lines:
        found = COMPOSE_SERVICE.match(line)
        if found:
            expanded += compose_service(found["name"], where)
        else:
            indent = line[:len(line) - len(line.lstrip())]
            expanded.append(NODE_COMMAND.sub(lambda m: node_command(m["name"], variant, where, indent), line))
    return expanded


def parse(text: str, variant: Variant, where: str = "<source>", target: str = "chameleon") -> list[Cell]:
    """The cells of one source, for one variant on one target (the local build: `LOCAL` on "local")."""
    lines = _expand(_select(text.splitlines(), variant.name, target, where), variant, where)
    cells: list[Cell] = []
    markdown: list[str] = []
    code: list[str] | None = None
    tags: tuple[str, ...] = ()

    def flush_markdown() -> None:
        body = "\n".join(markdown).strip("\n")
        if body.strip():
            cells.append(Cell("markdown", body))
        markdown.clear()

    for line in lines:
        if code is None:
            fence = FENCE.match(line)
            if fence:
                flush_markdown()
                code, tags = [], tuple(t for t in re.split(r"[ ,]+", fence["tags"] or "") if t)
            elif line.strip() == "+++":
                flush_markdown()
            else:
                markdown.append(line)
        elif line.strip() == "```":
            cells.append(Cell("code", "\n".join(code).strip("\n"), tags))
            code = None
        else:
            code.append(line)
    if code is not None:
        raise SourceError(f"{where}: a ```python block is not closed")
    flush_markdown()
    profile = variant.as_dict()
    for cell in cells:
        cell.text = _substitute(cell.text, profile, where)
    return cells


SETUP_CELL = '''\
# Setup (safe to rerun): series_setup.py, beside this notebook, readies the kernel.
import series_setup
series_setup.prepare("{target}", side="{side}", folder="{folder}")'''
SETUP_MODULE = REPO_ROOT / "series_setup.py"
SETUP_COPY_HEADER = ("# Written by `python -m chi_helpers build` from series_setup.py at the top of the series: edit "
                     "that one.\n")


def setup_module_copies() -> dict[Path, str]:
    """series_setup.py in every folder that holds notebooks, where the setup cell's import finds it."""
    text = SETUP_COPY_HEADER + SETUP_MODULE.read_text()
    folders = {output_path(entry, variant.name).parent for variant, target in builds() for entry in notebooks_for(target)}
    return {folder / SETUP_MODULE.name: text for folder in sorted(folders)}


def with_setup_cell(cells: list[Cell], setup: str, where: str) -> list[Cell]:
    """The cells with the setup cell right after the parameters cell."""
    at = next((i for i, c in enumerate(cells) if "parameters" in c.tags), None)
    if at is None:
        raise SourceError(f"{where}: no ```python parameters block: every notebook needs one")
    return [*cells[:at + 1], Cell("code", setup, ("setup",)), *cells[at + 1:]]


def setup_cell(target: str, side: str, folder: str) -> str:
    return SETUP_CELL.replace("{target}", target).replace("{side}", side).replace("{folder}", folder)


def render(source: Path, variant: Variant, side: str = "testbed", target: str = "chameleon") -> nbformat.NotebookNode:
    where = str(source.relative_to(REPO_ROOT))
    folder = ("notebooks/" if side == "testbed" else "workspace_mlflow/") + variant.name
    cells = with_setup_cell(parse(source.read_text(), variant, where, target), setup_cell(target, side, folder), where)
    nb = nbformat.v4.new_notebook()
    nb.metadata = {
        "kernelspec": {"name": "python3", "display_name": "Python 3", "language": "python"},
        "language_info": {"name": "python"},
    }
    for index, cell in enumerate(cells):
        made = (nbformat.v4.new_code_cell if cell.kind == "code" else nbformat.v4.new_markdown_cell)(cell.text)
        made.id = f"{source.stem[:2]}-{index:02d}"  # stable ids: a rebuild changes nothing
        if cell.tags:
            made.metadata["tags"] = list(cell.tags)
        nb.cells.append(made)
    nbformat.validate(nb)
    return nb


def notebook_text(nb: nbformat.NotebookNode) -> str:
    return nbformat.writes(nb) + "\n"


# nbconvert's `lab` page reads well on a laptop but not on a phone (390 px): it clips code cells
# (`.jp-InputArea { overflow: hidden }`), so a long line's end is cut off out of reach, and a markdown
# table wider than the column runs past the cell's edge. These few rules come last in every page (and,
# being in every page, end up at the end of the shared stylesheet), so they override nbconvert's.
PAGE_CSS = """
/* chi_helpers/series/build.py (PAGE_CSS): the pages read at a phone's width as at a laptop's. */
/* Code blocks scroll sideways inside their own box: code keeps its lines, nothing is cut off. */
pre { overflow-x: auto; }
/* A table is as wide as it needs, at most its column, and scrolls in its own box past that (GitHub's
   way). On a laptop it still sits centred (nbconvert's auto margins). */
.jp-RenderedHTMLCommon table { display: block; width: max-content; max-width: 100%; overflow-x: auto; }
/* On a phone the width goes to the content: no browser margin around nbconvert's padding, no 20 px gutter
   right of the text, table cells that pad less. So the index's variant table fits with its words whole. */
@media (max-width: 480px) {
  body.jp-Notebook { margin: 0; }
  .jp-RenderedHTMLCommon { padding-right: 5px; }
  .jp-RenderedHTMLCommon :is(td, th) { padding: 0.5em 0.25em; }
}
/* Diagrams and screenshots shrink to the column, never wider. */
img { max-width: 100%; height: auto; }
/* On a wide screen prose stops at about 110 characters a line; code, tables and figures keep the width. */
.jp-RenderedMarkdown > :is(p, ul, ol, blockquote, h1, h2, h3, h4):not(:has(img)) { max-width: 60em; }
"""

# nbconvert's `lab` template with PAGE_CSS last in <head>, and without the two scripts it always loads
# from a CDN: require.js (for widgets) and MathJax (for math); no page has either, so a page fetches
# nothing from outside. (Mermaid's loader stays: it fetches only where a page has a diagram.)
PAGE_TEMPLATE = (
    "{%- extends 'index.html.j2' -%}\n"
    "{% block html_head_js_requirejs %}{% endblock %}\n"
    "{% block html_head_js_mathjax %}{% endblock %}\n"
    '{% block html_head_css %}{% raw %}<style type="text/css">' + PAGE_CSS + "</style>{% endraw %}{% endblock %}\n"
)


def page_html(notebooks: list[nbformat.NotebookNode], title: str) -> str:
    """One HTML page of several notebooks, through nbconvert."""
    from jinja2 import DictLoader
    from nbconvert import HTMLExporter

    whole = nbformat.v4.new_notebook(metadata={"title": title, **notebooks[0].metadata})
    for nb in notebooks:
        whole.cells.extend(nb.cells)
    exporter = HTMLExporter(template_name="lab", template_file="series_page.html.j2",
                            extra_loaders=[DictLoader({"series_page.html.j2": PAGE_TEMPLATE})])
    body, _ = exporter.from_notebook_node(whole, resources={"metadata": {"name": title}})
    # A notebook links the repository's files from two folders down (notebooks/<build>/); a page sits one down.
    body = body.replace('src="../../', 'src="../').replace('href="../../', 'href="../')
    # A page holds a dozen UI figures: the browser fetches each as the reader scrolls near it.
    return body.replace("<img ", '<img loading="lazy" ')


def index_notebook() -> nbformat.NotebookNode:
    rows = "\n".join(
        f"| [{v.title}]({v.name}.html) | {v.site} | {v.gpus} x {v.gpu_model} | `{v.image}` |"
        for v in VARIANTS.values()
    )
    listing = "\n".join(f"{i + 1}. {n.title}" for i, n in enumerate(notebooks_for("chameleon")))
    text = (
        "# ML experiment tracking on a GPU testbed\n\n"
        "A hands-on series: reserve a GPU node on Chameleon, run an MLflow tracking stack on it, and "
        "train a food-photo classifier with tracking, autologging and the model registry.\n\n"
        "Pick the page for the hardware you will reserve:\n\n"
        "| variant | site | GPUs | disk image |\n|---|---|---|---|\n" + rows + "\n\n"
        f"The series, in order:\n\n{listing}\n\n"
        f"Without Chameleon, [the local edition]({LOCAL_BUILD}.html) takes the same lesson on one computer's "
        "CPU, with a small data set.\n"
    )
    nb = nbformat.v4.new_notebook()
    cell = nbformat.v4.new_markdown_cell(text)
    cell.id = "index"
    nb.cells.append(cell)
    return nb


START_HERE = REPO_ROOT / "START_HERE.ipynb"


def start_here_notebook() -> nbformat.NotebookNode:
    """The notebook at the top of a student's copy: which folder to open for which hardware."""
    rows = "\n".join(
        f"| {v.title} | {v.site} | {v.gpus} x {v.gpu_model} | [notebooks/{v.name}/00_introduction.ipynb]"
        f"(notebooks/{v.name}/00_introduction.ipynb) |"
        for v in VARIANTS.values()
    )
    testbed = ", ".join(f"`{e.name[:2]}`" for e in NOTEBOOKS if e.side == "testbed")
    node = ", ".join(f"`{e.name[:2]}`" for e in NOTEBOOKS if e.side == "node")
    text = (
        "# Start here: ML experiment tracking on a GPU testbed\n\n"
        "This copy of the series holds one set of notebooks per kind of GPU host. Open the first "
        "notebook of the one your class (or your reservation) uses, and go on in order:\n\n"
        "| hardware | site | GPUs | open first |\n|---|---|---|---|\n" + rows + "\n\n"
        f"Notebooks {testbed} run here, in this Jupyter server: they reserve the host, set it up, start "
        f"the tracking stack and release it all at the end. Notebooks {node} run on the node, in the "
        "Jupyter container that notebook 04 starts there.\n\n"
        "Without Chameleon, open [notebooks/local/00_introduction.ipynb](notebooks/local/00_introduction.ipynb): "
        "the same lesson on this computer's CPU. `docs/students.md` lists what you need before you start.\n"
    )
    nb = nbformat.v4.new_notebook()
    nb.metadata = {"kernelspec": {"name": "python3", "display_name": "Python 3", "language": "python"},
                   "language_info": {"name": "python"}}
    cell = nbformat.v4.new_markdown_cell(text)
    cell.id = "start-here"
    nb.cells.append(cell)
    return nb


STYLE = re.compile(r"<style[^>]*>(?P<css>.*?)</style>\n?", re.S)
SHARED_CSS = "nbconvert.css"


def share_styles(pages: dict[Path, str]) -> dict[Path, str]:
    """Move the <style> blocks every page has into one stylesheet that each page links to.

    nbconvert embeds the same ~6,000 lines of CSS in every page; a style only some pages have stays inline.
    """
    blocks = {path: [m[0] for m in STYLE.finditer(html)] for path, html in pages.items()}
    common = [b for b in next(iter(blocks.values())) if all(b in found for found in blocks.values())]
    if not common:
        return pages
    out = {SITE_DIR / SHARED_CSS: "".join(STYLE.fullmatch(block)["css"] for block in common)}
    link = f'<link rel="stylesheet" href="{SHARED_CSS}">\n'
    for path, html in pages.items():
        first = html.index(common[0])
        for block in common:
            html = html.replace(block, "", 1)
        out[path] = html[:first] + link + html[first:]
    return out


def builds() -> list[tuple[Variant, str]]:
    """Every build: each variant's on Chameleon, and the local target's."""
    return [*((variant, "chameleon") for variant in VARIANTS.values()), (LOCAL, "local")]


def expected_files() -> dict[Path, str]:
    """Every generated file and the text the source gives it."""
    files: dict[Path, str] = {}
    pages: dict[Path, str] = {}
    for variant, target in builds():
        rendered = []
        for entry in notebooks_for(target):
            nb = render(SOURCE_DIR / entry.source, variant, entry.side, target)
            files[output_path(entry, variant.name)] = notebook_text(nb)
            rendered.append(nb)
        pages[SITE_DIR / f"{variant.name}.html"] = page_html(rendered, f"ML experiment tracking: {variant.title}")
    pages[SITE_DIR / "index.html"] = page_html([index_notebook()], "ML experiment tracking on a GPU testbed")
    files.update(share_styles(pages))
    files[START_HERE] = notebook_text(start_here_notebook())
    files.update(setup_module_copies())
    return files


def stale_outputs(files: dict[Path, str]) -> list[Path]:
    """Generated notebooks and pages lying around that no source produces any more."""
    places = [SITE_DIR.glob("*.html"), SITE_DIR.glob("*.css")]
    for variant, _ in builds():
        places += [(REPO_ROOT / "notebooks" / variant.name).glob("*.ipynb"),
                   (REPO_ROOT / "workspace_mlflow" / variant.name).glob("*.ipynb")]
    return sorted(p for found in places for p in found if p not in files)


def build(check: bool = False, stream=None) -> int:
    stream = stream or sys.stdout
    files = expected_files()
    changed = [p for p, text in files.items() if not p.exists() or p.read_text() != text]
    stale = stale_outputs(files)
    if check:
        for path in changed:
            print(f"differs from its source: {path.relative_to(REPO_ROOT)}", file=stream)
        for path in stale:
            print(f"no source makes it: {path.relative_to(REPO_ROOT)}", file=stream)
        if changed or stale:
            print("run `python -m chi_helpers build` and commit the result", file=stream)
            return 1
        print(f"all {len(files)} generated files match their sources", file=stream)
        return 0
    for path in changed:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(files[path])
        print(f"wrote {path.relative_to(REPO_ROOT)}", file=stream)
    for path in stale:
        path.unlink()
        print(f"removed {path.relative_to(REPO_ROOT)} (no source makes it)", file=stream)
    print(f"{len(files)} files, {len(changed)} written (default page: {DEFAULT_VARIANT})", file=stream)
    return 0
