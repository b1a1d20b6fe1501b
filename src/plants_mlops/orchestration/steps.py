"""One ZenML step per Kedro pipeline. Each runs its pipeline in a ``KedroSession`` and
returns a :class:`StageSummary`; heavy data stays in the Kedro catalog.

Caching (see docs/zenml.md): ingestion, formatting, validation, evaluation and registry
read or write state outside ZenML (the plants_data table, remote URLs, the MLflow registry)
and never cache. Training caches on the *value* of the validated dataset's fingerprint
(:class:`SummaryMaterializer` hashes only ``data_key``), its parameters and a hash of its
configuration and code; the pipeline turns that cache off when the Kedro outputs it would
reuse are missing. Evaluation and registry cache on the training artifact's ID, so they are
reused exactly when training was.
"""

from __future__ import annotations

import logging
import os
import uuid
from typing import Annotated, Any, ClassVar

from zenml import get_step_context, log_metadata, step
from zenml.config.cache_policy import CachePolicy
from zenml.materializers.pydantic_materializer import PydanticMaterializer

from plants_mlops.orchestration.kedro_stage import run_stage
from plants_mlops.orchestration.summaries import StageSummary, data_key_hash

log = logging.getLogger(__name__)


class SummaryMaterializer(PydanticMaterializer):
    """Stores a :class:`StageSummary` as JSON; its cache identity is its ``data_key`` only."""

    ASSOCIATED_TYPES: ClassVar[tuple[type[Any], ...]] = (StageSummary,)

    def compute_content_hash(self, data: StageSummary) -> str | None:
        return data_key_hash(data)


def _execute(
    stage: str, project: str, env: str, params: dict[str, Any] | None, upstream: StageSummary | None
) -> StageSummary:
    summary = run_stage(stage, project, env, params or None, upstream)
    if not summary.dataset_fingerprint:
        # Without a fingerprint nothing proves the data is unchanged: never let a later
        # step's cache key on this summary.
        summary.data_key = f"no-fingerprint:{uuid.uuid4()}"
    log_metadata(metadata=summary.metadata())
    log.info("%s: %s", stage, summary.metadata())
    return summary


_NO_CACHE = {"enable_cache": False, "output_materializers": SummaryMaterializer}


@step(**_NO_CACHE)
def ingestion(
    project: str,
    env: str,
    params: dict[str, Any],
    config_hash: str,
    upstream: StageSummary | None = None,
) -> Annotated[StageSummary, "ingestion"]:
    """Download the pending images of the plants_data table into 01_raw."""
    return _execute("ingestion", project, env, params, upstream)


@step(**_NO_CACHE)
def formatting(
    project: str,
    env: str,
    params: dict[str, Any],
    config_hash: str,
    upstream: StageSummary | None = None,
) -> Annotated[StageSummary, "formatting"]:
    """Raw -> formatted images -> dataset index + fingerprint (03_primary)."""
    return _execute("formatting", project, env, params, upstream)


@step(**_NO_CACHE)
def validation(
    project: str,
    env: str,
    params: dict[str, Any],
    config_hash: str,
    upstream: StageSummary | None = None,
) -> Annotated[StageSummary, "validation"]:
    """Pandera checks on every index; a failure stops the run before training."""
    return _execute("validation", project, env, params, upstream)


@step(
    output_materializers=SummaryMaterializer,
    cache_policy=CachePolicy(include_artifact_values=True, include_artifact_ids=False),
)
def training(
    project: str,
    env: str,
    params: dict[str, Any],
    config_hash: str,
    upstream: StageSummary | None = None,
) -> Annotated[StageSummary, "training"]:
    """Train the classifier; logs into the stack's MLflow experiment tracker run if any.

    The tracker starts its run before the step; the local orchestrator runs the step and
    its Kedro nodes in this process, and the nodes' ``tracking.run`` logs into an active run
    (or resumes ``MLFLOW_RUN_ID``, exported here for runners that start new processes).
    """
    import mlflow

    active = mlflow.active_run()
    if active is not None:
        os.environ["MLFLOW_TRACKING_URI"] = mlflow.get_tracking_uri()
        os.environ["MLFLOW_RUN_ID"] = active.info.run_id
    try:
        summary = _execute("training", project, env, params, upstream)
    finally:
        os.environ.pop("MLFLOW_RUN_ID", None)
    if active is not None and not summary.mlflow_run_id:
        summary.mlflow_run_id = active.info.run_id
    return summary


@step(output_materializers=SummaryMaterializer)
def evaluation(
    project: str,
    env: str,
    params: dict[str, Any],
    config_hash: str,
    upstream: StageSummary | None = None,
) -> Annotated[StageSummary, "evaluation"]:
    """Test metrics of the new model against the baseline and the current champion."""
    return _execute("evaluation", project, env, params, upstream)


@step(output_materializers=SummaryMaterializer)
def registry(
    project: str,
    env: str,
    params: dict[str, Any],
    config_hash: str,
    upstream: StageSummary | None = None,
) -> Annotated[StageSummary, "registry"]:
    """Register the model in MLflow, apply the gate, move `champion`; link the ZenML model."""
    summary = _execute("registry", project, env, params, upstream)
    _link_zenml_model_version(summary)
    return summary


STEPS = {f.name: f for f in (ingestion, formatting, validation, training, evaluation, registry)}
CACHED_STAGES = ("training", "evaluation", "registry")


# --- ZenML Model Control Plane <-> MLflow Model Registry ---------------------------------


def _link_zenml_model_version(summary: StageSummary) -> None:
    """Tag and annotate this run's ZenML model version with the MLflow registry version."""
    from zenml.client import Client

    model_version = get_step_context().model_version
    if model_version is None:
        return
    meta: dict[str, Any] = {
        "mlflow_registered_model": _registered_model_name(),
        "mlflow_model_version": summary.model_version or "none",
        "mlflow_run_id": summary.mlflow_run_id or "none",
        "gate_verdict": summary.verdict or "none",
        "dataset_fingerprint": summary.dataset_fingerprint or "none",
    }
    meta.update({f"metric_{k}": v for k, v in summary.metrics.items()})
    log_metadata(metadata=meta, model_version_id=model_version.id)
    tags = [f"verdict:{summary.verdict}"] if summary.verdict else []
    if summary.model_version:
        tags.append(f"mlflow-version:{summary.model_version}")
    if tags:
        Client().update_model_version(
            model_name_or_id=model_version.model.id,
            version_name_or_id=model_version.id,
            add_tags=tags,
        )


def _registered_model_name() -> str:
    from plants_mlops.contracts import REGISTERED_MODEL_NAME

    return REGISTERED_MODEL_NAME
