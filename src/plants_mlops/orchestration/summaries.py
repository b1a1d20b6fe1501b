"""The small typed summary each ZenML step returns, built from the JSON datasets a Kedro
pipeline writes (``ingestion_summary``, ``dataset_fingerprint``, ``training_summary``,
``registry_decision``...).

The summary carries what the dashboard should show (counts, fingerprint, MLflow run id,
model version, metrics, verdict); heavy data stays in the Kedro catalog. ``data_key`` is
what later steps' caches are keyed on: :class:`SummaryMaterializer` hashes only that field,
so a summary whose timings differ but whose data is the same still hits the cache.
"""

from __future__ import annotations

import hashlib
import json
from typing import Any

from pydantic import BaseModel, Field

# Keys looked up (recursively, first match wins) in a pipeline's JSON outputs.
_FINGERPRINT_KEYS = ("fingerprint", "dataset_fingerprint")
_RUN_ID_KEYS = ("mlflow_run_id", "run_id")
_VERSION_KEYS = ("model_version", "registered_version", "version")
_VERDICT_KEYS = ("verdict", "decision", "passed")
_METRIC_KEYS = ("metrics", "test_metrics")


class StageSummary(BaseModel):
    """What one Kedro pipeline run produced, small enough for step metadata."""

    stage: str
    env: str
    duration_s: float = 0.0
    counts: dict[str, int] = Field(default_factory=dict)
    dataset_fingerprint: str | None = None
    mlflow_run_id: str | None = None
    model_version: str | None = None
    metrics: dict[str, float] = Field(default_factory=dict)
    verdict: str | None = None
    # Everything the pipeline's JSON outputs said, by dataset name (for the record).
    outputs: dict[str, Any] = Field(default_factory=dict)
    # What downstream caches key on: the dataset fingerprint (+ run id once a model exists).
    data_key: str = ""

    def metadata(self) -> dict[str, Any]:
        """Flat, dashboard-friendly metadata (no ``None`` values, nothing large)."""
        flat: dict[str, Any] = {
            "stage": self.stage,
            "kedro_env": self.env,
            "duration_s": round(self.duration_s, 2),
        }
        for name in ("dataset_fingerprint", "mlflow_run_id", "model_version", "verdict"):
            if (value := getattr(self, name)) is not None:
                flat[name] = value
        flat.update({f"count_{k}": v for k, v in self.counts.items()})
        flat.update({f"metric_{k}": v for k, v in self.metrics.items()})
        return flat


def _find(obj: Any, keys: tuple[str, ...]) -> Any:
    """First value under any of ``keys`` (in that order of preference), searched breadth-first."""
    for key in keys:
        queue = [obj]
        while queue:
            cur = queue.pop(0)
            if isinstance(cur, dict):
                if key in cur and cur[key] is not None and not isinstance(cur[key], (dict, list)):
                    return cur[key]
                queue.extend(v for v in cur.values() if isinstance(v, dict))
    return None


def _metrics(obj: Any) -> dict[str, float]:
    for key in _METRIC_KEYS:
        queue = [obj]
        while queue:
            cur = queue.pop(0)
            if not isinstance(cur, dict):
                continue
            value = cur.get(key)
            if isinstance(value, dict):
                return {
                    k: float(v)
                    for k, v in value.items()
                    if isinstance(v, (int, float)) and not isinstance(v, bool)
                }
            queue.extend(v for v in cur.values() if isinstance(v, dict))
    return {}


def _counts(outputs: dict[str, Any]) -> dict[str, int]:
    """Top-level integer fields of every output (``n_images``, ``ok``, ``failed``...)."""
    counts: dict[str, int] = {}
    for data in outputs.values():
        if isinstance(data, dict):
            for k, v in data.items():
                if isinstance(v, int) and not isinstance(v, bool):
                    counts.setdefault(k, v)
    return counts


def summarize(
    stage: str,
    env: str,
    outputs: dict[str, Any],
    duration_s: float,
    upstream: StageSummary | None = None,
) -> StageSummary:
    """Build a stage's summary from its JSON outputs; carries the fingerprint forward."""
    verdict = _find(outputs, _VERDICT_KEYS)
    if isinstance(verdict, bool):
        verdict = "passed" if verdict else "failed"
    fingerprint = _find(outputs, _FINGERPRINT_KEYS) or (
        upstream.dataset_fingerprint if upstream else None
    )
    run_id = _find(outputs, _RUN_ID_KEYS) or (upstream.mlflow_run_id if upstream else None)
    version = _find(outputs, _VERSION_KEYS)
    summary = StageSummary(
        stage=stage,
        env=env,
        duration_s=duration_s,
        counts=_counts(outputs),
        dataset_fingerprint=str(fingerprint) if fingerprint else None,
        mlflow_run_id=str(run_id) if run_id else None,
        model_version=str(version) if version is not None else None,
        metrics=_metrics(outputs),
        verdict=str(verdict) if verdict is not None else None,
        outputs=json.loads(json.dumps(outputs, default=str)),
    )
    summary.data_key = f"{summary.dataset_fingerprint or ''}:{summary.mlflow_run_id or ''}"
    return summary


def data_key_hash(summary: StageSummary) -> str:
    return hashlib.sha256(summary.data_key.encode()).hexdigest()
