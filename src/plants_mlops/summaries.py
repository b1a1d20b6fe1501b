"""``<stage>_summary``: the small typed record each Kedro pipeline writes last.

Every stage says, in fields it fills itself, what it produced: counts, the dataset
fingerprint it worked on, the MLflow run, the registry version it created, headline
metrics and its verdict, and which catalog datasets are worth showing (reports, models).
The ZenML steps read this dataset back instead of guessing from the stage's other JSON
outputs, and `plants-mlops pipeline run` prints it. Details stay in the stage's reports.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from plants_mlops.contracts import STAGES

SUMMARY_STAGES = (*STAGES, "monitoring")


def dataset_name(stage: str) -> str:
    return f"{stage}_summary"


class StageSummary(BaseModel):
    """What one stage produced. ``model_version`` is only ever the version *this* stage
    registered (the registry stage); the champion an evaluation compared against is
    ``champion_version``."""

    model_config = ConfigDict(extra="forbid")

    stage: str
    counts: dict[str, int] = Field(default_factory=dict)
    dataset_fingerprint: str | None = None
    mlflow_run_id: str | None = None
    model_version: str | None = None
    champion_version: str | None = None
    metrics: dict[str, float] = Field(default_factory=dict)
    verdict: str | None = None
    # Catalog datasets this stage wrote that a person would open (reports, the model).
    outputs: list[str] = Field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        return self.model_dump(mode="json")


def numbers(values: dict[str, Any] | None) -> dict[str, float]:
    """The numeric entries of ``values`` (metrics dicts carry lists and nested dicts too)."""
    return {
        k: float(v)
        for k, v in (values or {}).items()
        if isinstance(v, int | float) and not isinstance(v, bool)
    }


def integers(values: dict[str, Any] | None) -> dict[str, int]:
    return {
        k: int(v)
        for k, v in (values or {}).items()
        if isinstance(v, int) and not isinstance(v, bool)
    }
