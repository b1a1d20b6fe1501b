"""What a ZenML step returns: the stage's own typed ``<stage>_summary`` plus the run context.

The stage fills its summary itself (``plants_mlops.summaries.StageSummary``); nothing here
guesses fields from other JSON outputs. ``data_key`` is what later steps' caches are keyed
on: :class:`~plants_mlops.orchestration.steps.SummaryMaterializer` hashes only that field,
so a summary whose timings differ but whose data is the same still hits the cache.
"""

from __future__ import annotations

import contextlib
import hashlib
from collections.abc import Callable, Iterator
from typing import Any

from plants_mlops.summaries import StageSummary


class StepSummary(StageSummary):
    """A stage summary as one ZenML step saw it: environment, duration, cache key."""

    env: str
    duration_s: float = 0.0
    data_key: str = ""

    def metadata(self) -> dict[str, Any]:
        """Flat, dashboard-friendly metadata (no ``None`` values, nothing large)."""
        flat: dict[str, Any] = {
            "stage": self.stage,
            "kedro_env": self.env,
            "duration_s": round(self.duration_s, 2),
        }
        for name in (
            "dataset_fingerprint",
            "mlflow_run_id",
            "model_version",
            "champion_version",
            "verdict",
        ):
            if (value := getattr(self, name)) is not None:
                flat[name] = value
        flat.update({f"count_{k}": v for k, v in self.counts.items()})
        flat.update({f"metric_{k}": v for k, v in self.metrics.items()})
        return flat


def step_summary(
    stage_summary: StageSummary | dict[str, Any],
    env: str,
    duration_s: float,
    upstream: StepSummary | None = None,
) -> StepSummary:
    """The step's summary: the stage's own, with the fingerprint and run carried forward
    from upstream when the stage itself has none (ingestion knows no fingerprint yet)."""
    own = StageSummary.model_validate(stage_summary)
    fields = own.model_dump()
    if upstream is not None:
        fields["dataset_fingerprint"] = own.dataset_fingerprint or upstream.dataset_fingerprint
        fields["mlflow_run_id"] = own.mlflow_run_id or upstream.mlflow_run_id
    summary = StepSummary(**fields, env=env, duration_s=duration_s)
    summary.data_key = f"{summary.dataset_fingerprint or ''}:{summary.mlflow_run_id or ''}"
    return summary


def data_key_hash(summary: StepSummary) -> str:
    return hashlib.sha256(summary.data_key.encode()).hexdigest()


# Who follows the run as it goes (the demo's and `pipeline run`'s console): each stage's
# summary, as soon as the stage has run in this process (plain Kedro or a ZenML step).
_listeners: list[Callable[[StepSummary], None]] = []


@contextlib.contextmanager
def listening(listener: Callable[[StepSummary], None]) -> Iterator[None]:
    """Call ``listener`` with every stage summary :func:`publish` sees inside the block."""
    _listeners.append(listener)
    try:
        yield
    finally:
        _listeners.remove(listener)


def publish(summary: StepSummary) -> None:
    """Hand a finished stage's summary to whoever listens (nobody: nothing happens)."""
    for listener in list(_listeners):
        listener(summary)
