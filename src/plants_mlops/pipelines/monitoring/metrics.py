"""The monitoring verdict as Prometheus gauges (a pure node; the ``monitoring_metrics``
dataset pushes them to the Pushgateway when one is configured).

Gauges (job ``plants-monitoring``), read by the ``PlantsDriftDetected`` and
``PlantsMonitoringStale`` alerts and the Grafana dashboard:

- ``plants_monitoring_verdict{status}``: 1 for the verdict of this run, 0 for the others
  (``drift``, ``no_drift``, ``insufficient_data``);
- ``plants_monitoring_drift_score{test, column, method}``: each drift test's score (K-S
  p-value per image statistic, prediction columns; ROC AUC or distance for embeddings);
- ``plants_monitoring_drifted_share``: share of image statistics that drifted;
- ``plants_monitoring_rows{window}``: distinct images in the current window (repeats left
  out) and rows of the reference;
- ``plants_monitoring_last_run_timestamp_seconds``: when the verdict was made.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

VERDICT_STATUSES = ("drift", "no_drift", "insufficient_data")


def _gauge(help_text: str, samples: list[tuple[dict[str, str], float]]) -> dict[str, Any]:
    return {
        "help": help_text,
        "samples": [{"labels": labels, "value": float(value)} for labels, value in samples],
    }


def _scores(verdict: dict[str, Any]) -> list[tuple[dict[str, str], float]]:
    out = []
    groups = (
        ("image_stats", (verdict.get("data_drift") or {}).get("columns") or {}),
        ("prediction", verdict.get("prediction_drift") or {}),
    )
    for test, columns in groups:
        for column, result in columns.items():
            if result.get("score") is not None:
                labels = {"test": test, "column": column, "method": str(result.get("method"))}
                out.append((labels, result["score"]))
    emb = verdict.get("embeddings") or {}
    if emb.get("score") is not None:
        labels = {"test": "embeddings", "column": "embedding", "method": str(emb.get("method"))}
        out.append((labels, emb["score"]))
    return out


def verdict_metrics(verdict: dict[str, Any]) -> dict[str, Any]:
    """The verdict of ``decide_drift`` as gauges for ``PushgatewayDataset``."""
    status = verdict["status"]
    metrics = {
        "plants_monitoring_verdict": _gauge(
            "Monitoring verdict of the last run: 1 for its status",
            [({"status": s}, s == status) for s in VERDICT_STATUSES],
        ),
        "plants_monitoring_rows": _gauge(
            "Rows compared by the last monitoring run",
            [
                ({"window": "current"}, verdict.get("n_current") or 0),
                ({"window": "reference"}, verdict.get("n_reference") or 0),
            ],
        ),
        "plants_monitoring_last_run_timestamp_seconds": _gauge(
            "Unix time of the last monitoring verdict",
            [({}, datetime.fromisoformat(verdict["at"]).timestamp())],
        ),
    }
    scores = _scores(verdict)
    if scores:
        metrics["plants_monitoring_drift_score"] = _gauge(
            "Drift test score per column (p-value for image statistics, ROC AUC or "
            "distance for embeddings)",
            scores,
        )
    share = (verdict.get("data_drift") or {}).get("share_drifted")
    if share is not None:
        metrics["plants_monitoring_drifted_share"] = _gauge(
            "Share of image statistics that drifted", [({}, share)]
        )
    ood = verdict.get("ood")
    if ood:  # the champion has an OOD detector (docs/monitoring.md)
        metrics["plants_monitoring_ood_share"] = _gauge(
            "Share of predictions flagged out of distribution, current window and reference",
            [
                ({"window": "current"}, ood["current_share"]),
                ({"window": "reference"}, ood["reference_share"]),
            ],
        )
    return metrics
