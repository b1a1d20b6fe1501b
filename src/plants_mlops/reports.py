"""Small self-contained HTML pages of the stages' JSON reports (validation, evaluation).

Written to 08_reporting next to the JSON they render, and shown by ZenML as the step's
visualization. No template engine and no external asset: one page, inline CSS, every
value escaped.
"""

from __future__ import annotations

import base64
import html
from collections.abc import Iterable, Sequence
from typing import Any

_STYLE = """
body{font-family:system-ui,sans-serif;margin:1.5rem;color:#1d2330}
h1{font-size:1.4rem}h2{font-size:1.1rem;margin-top:1.5rem}
table{border-collapse:collapse;margin:.5rem 0}
td,th{border:1px solid #ccd;padding:.25rem .6rem;text-align:left;vertical-align:top}
th{background:#eef}.figures{display:flex;flex-wrap:wrap;gap:1rem}figure{margin:0}.pass{color:#176b2c;font-weight:600}.fail{color:#b3261e;font-weight:600}
"""


def _cell(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4f}"
    if value is None:
        return "-"
    return html.escape(str(value))


def table(header: Sequence[str], rows: Iterable[Sequence[Any]]) -> str:
    head = "".join(f"<th>{html.escape(h)}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{_cell(v)}</td>" for v in row) + "</tr>" for row in rows)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def verdict(passed: bool, yes: str = "passed", no: str = "failed") -> str:
    return f'<span class="{"pass" if passed else "fail"}">{yes if passed else no}</span>'


def page(title: str, *sections: str) -> str:
    return (
        f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title>"
        f"<style>{_STYLE}</style></head><body><h1>{html.escape(title)}</h1>"
        + "".join(sections)
        + "</body></html>"
    )


def validation_html(report: dict[str, Any]) -> str:
    checks = report["checks"]
    failed = [c for c in checks if not c["passed"]]
    summary = (
        f"<p>{verdict(report['passed'])}: {len(checks) - len(failed)} of {len(checks)} checks "
        f"passed, checked at {_cell(report.get('checked_at'))}.</p>"
    )
    sizes = table(["dataset", "rows"], sorted(report["n_rows"].items()))
    rows = [
        (
            c["dataset"],
            c["rule"],
            "pass" if c["passed"] else "FAIL",
            c["detail"],
            ", ".join(map(str, c.get("failing_rows") or [])),
        )
        for c in sorted(checks, key=lambda c: (c["passed"], c["dataset"], c["rule"]))
    ]
    return page(
        "Validation report",
        summary,
        "<h2>Datasets</h2>",
        sizes,
        "<h2>Checks (failures first)</h2>",
        table(["dataset", "rule", "result", "detail", "failing rows"], rows),
    )


_METRICS = ("accuracy", "precision_macro", "recall_macro", "f1_macro", "roc_auc")


def figure(name: str, png: bytes) -> str:
    """A PNG inlined in the page (a data URI: the page stays one self-contained file)."""
    data = base64.b64encode(png).decode("ascii")
    alt = html.escape(name.removesuffix(".png").replace("_", " "))
    return f'<figure><img alt="{alt}" src="data:image/png;base64,{data}"></figure>'


def evaluation_html(report: dict[str, Any], figures: dict[str, bytes] | None = None) -> str:
    candidates = [("this model", report["model"])]
    candidates += [(f"baseline: {name}", m) for name, m in report["baselines"].items()]
    champion = report.get("champion") or {}
    if champion.get("f1_macro") is not None:
        candidates.append((f"champion v{champion['version']}", champion))
    metrics = table(
        ["model", *_METRICS], [(name, *(m.get(k) for k in _METRICS)) for name, m in candidates]
    )
    matrix = report["model"]["confusion_matrix"]
    labels = report["model"]["labels"]
    confusion = table(
        ["true \\ predicted", *labels], [(labels[i], *row) for i, row in enumerate(matrix)]
    )
    note = (
        f"<p>champion: {_cell(champion.get('version'))}"
        f"{' (' + _cell(champion.get('error') or champion.get('note')) + ')' if champion.get('error') or champion.get('note') else ''}"
        "</p>"
    )
    return page(
        "Evaluation report",
        f"<p>{report['test_size']} test images; MLflow run {_cell(report.get('mlflow_run_id'))}; "
        f"dataset {_cell((report.get('dataset_fingerprint') or '')[:12])}.</p>",
        "<h2>Test split</h2>",
        metrics,
        note,
        "<h2>Confusion matrix (this model)</h2>",
        confusion,
        *(
            ["<h2>Figures (this model, test split)</h2><div class='figures'>"]
            + [figure(name, png) for name, png in (figures or {}).items()]
            + ["</div>"]
            if figures
            else []
        ),
    )
