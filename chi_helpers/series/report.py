"""The series run's report: JSON for tools, Markdown and HTML for people."""

from __future__ import annotations

import html
import json
from pathlib import Path


def _runs_text(runs: list[dict]) -> str:
    parts = []
    for run in runs:
        scores = ", ".join(f"{k} {run[k]:.3f}" for k in ("val_accuracy", "test_accuracy") if k in run)
        parts.append(f"{run['name']} ({run['status']}{', ' + scores if scores else ''})")
    return "; ".join(parts) or "-"


def _rows(report: dict) -> list[list[str]]:
    rows = []
    for nb in report["notebooks"]:
        problem = f"cell {nb['failing_cell']}: {nb['error']}" if nb["status"] == "failed" else ""
        versions = ", ".join(f"{v['name']} v{v['version']}" for v in nb["model_versions"]) or "-"
        rows.append([nb["name"], nb["status"], f"{nb['seconds']:.1f} s", _runs_text(nb["runs"]), versions, problem])
    return rows


HEADER = ["notebook", "result", "time", "runs created", "model versions", "error"]


def markdown(report: dict) -> str:
    lines = [
        f"# Series run: {'PASSED' if report['passed'] else 'FAILED'}",
        "",
        f"- target `{report['target']}`, variant `{report['variant']}`, {report['seconds']:.0f} s in all",
        f"- MLflow: {report['mlflow_url']} ({'still running' if report['stack_kept'] else 'stopped after the run'})",
        f"- executed notebooks: `{report['output_dir']}`",
        "",
        "| " + " | ".join(HEADER) + " |",
        "|" + "---|" * len(HEADER),
    ]
    lines += ["| " + " | ".join(cell.replace("|", "\\|") for cell in row) + " |" for row in _rows(report)]
    return "\n".join(lines) + "\n"


def html_page(report: dict) -> str:
    status = "PASSED" if report["passed"] else "FAILED"
    head = "".join(f"<th>{html.escape(h)}</th>" for h in HEADER)
    body = "".join(
        f"<tr class='{html.escape(row[1].replace(' ', '-'))}'>"
        + "".join(f"<td>{html.escape(cell)}</td>" for cell in row) + "</tr>"
        for row in _rows(report)
    )
    return f"""<!doctype html>
<html><head><meta charset="utf-8"><title>Series run: {status}</title>
<style>
body {{ font-family: system-ui, sans-serif; margin: 2em; }}
table {{ border-collapse: collapse; }} td, th {{ border: 1px solid #ccc; padding: .3em .6em; text-align: left; }}
tr.passed td:nth-child(2) {{ color: #176b1e; }} tr.failed td:nth-child(2) {{ color: #b00020; font-weight: bold; }}
</style></head><body>
<h1>Series run: {status}</h1>
<p>target <code>{html.escape(report['target'])}</code>, variant <code>{html.escape(report['variant'])}</code>,
{report['seconds']:.0f} s in all; MLflow at <a href="{html.escape(report['mlflow_url'])}">{html.escape(report['mlflow_url'])}</a></p>
<table><tr>{head}</tr>{body}</table>
</body></html>
"""


def write_report(report: dict, out_dir: Path) -> dict[str, Path]:
    paths = {"json": out_dir / "report.json", "markdown": out_dir / "report.md", "html": out_dir / "report.html"}
    paths["json"].write_text(json.dumps(report, indent=2))
    paths["markdown"].write_text(markdown(report))
    paths["html"].write_text(html_page(report))
    return paths
