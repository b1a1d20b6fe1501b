"""One ZenML step per Kedro pipeline, all made by :func:`make_step`. Each runs its pipeline
in a ``KedroSession`` and returns the stage's own ``<stage>_summary`` as a
:class:`StepSummary`; heavy data stays in the Kedro catalog (its URIs go into the step's
metadata).

Caching (docs/zenml.md): ingestion, formatting and validation read or write state outside
ZenML (the plants_data table, remote URLs) and never cache. Training caches on the *value*
of the validated dataset's fingerprint (:class:`SummaryMaterializer` hashes only
``data_key``), its parameters and ``config_hash`` (conf + the code of every module the
stage imports); the pipeline turns that cache off when the Kedro outputs it would reuse
are missing. Evaluation, behaviour and registry never cache either: they read the MLflow
registry (the champion they compare against, the versions they register), which a rollback
or a wiped store changes behind ZenML's back; a cached step would hide that.
"""

from __future__ import annotations

import logging
import os
import uuid
from collections.abc import Callable
from typing import Annotated, Any, ClassVar

from zenml import get_step_context, log_metadata, step
from zenml.config.cache_policy import CachePolicy
from zenml.materializers.pydantic_materializer import PydanticMaterializer

from plants_mlops.contracts import REGISTERED_MODEL_NAME, STAGES
from plants_mlops.orchestration.kedro_stage import DatasetRecord, run_stage
from plants_mlops.orchestration.summaries import StepSummary, data_key_hash

log = logging.getLogger(__name__)


class SummaryMaterializer(PydanticMaterializer):
    """Stores a :class:`StepSummary` as JSON; its cache identity is its ``data_key`` only."""

    ASSOCIATED_TYPES: ClassVar[tuple[type[Any], ...]] = (StepSummary,)

    def compute_content_hash(self, data: StepSummary) -> str | None:
        return data_key_hash(data)


def _execute(
    stage: str, project: str, env: str, params: dict[str, Any] | None, upstream: StepSummary | None
) -> StepSummary:
    result = run_stage(stage, project, env, params or None, upstream)
    summary = result.summary
    if not summary.dataset_fingerprint:
        # Without a fingerprint nothing proves the data is unchanged: never let a later
        # step's cache key on this summary.
        summary.data_key = f"no-fingerprint:{uuid.uuid4()}"
    metadata = summary.metadata()
    log.info("%s: %s", stage, metadata)
    log_metadata(metadata={**metadata, "kedro_datasets": {d.name: d.uri for d in result.datasets}})
    publish_datasets(stage, result.datasets)
    return summary


def publish_datasets(stage: str, datasets: list[DatasetRecord]) -> None:
    """Show what the stage wrote in the ZenML dashboard, as outputs of this step run.

    - every file-backed Kedro dataset becomes an artifact version *by URI*: ZenML records
      where the catalog put it (local disk or S3) with its metadata; nothing is copied;
    - every HTML report (``*_html``) is also saved as an ``HTMLString`` artifact, whose
      visualization the dashboard renders (a visualization must live in the artifact store,
      and a report is a few kB).
    """
    from zenml import save_artifact
    from zenml.types import HTMLString

    for record in datasets:
        try:
            _register_by_uri(stage, record)
            if record.name.endswith("_html") and record.html is not None:
                save_artifact(HTMLString(record.html), name=record.name, tags=[stage])
        except Exception as exc:  # the dashboard view must never fail the pipeline
            log.warning("could not publish %s to ZenML: %s", record.name, exc)


def _register_by_uri(stage: str, record: DatasetRecord) -> None:
    """An artifact version pointing at the Kedro dataset's own URI (no copy)."""
    from pathlib import Path

    from zenml.artifacts.utils import _link_artifact_version_to_the_step_and_model
    from zenml.client import Client
    from zenml.enums import ArtifactSaveType, ArtifactType
    from zenml.materializers.path_materializer import PathMaterializer
    from zenml.metadata.metadata_types import Uri
    from zenml.models import ArtifactVersionRequest
    from zenml.utils import source_utils

    client = Client()
    request = ArtifactVersionRequest(
        artifact_name=f"kedro.{record.name}",
        type=ArtifactType.MODEL if record.name in MODEL_DATASETS else ArtifactType.DATA,
        uri=record.uri,
        materializer=source_utils.resolve(PathMaterializer),
        data_type=source_utils.resolve(Path),
        save_type=ArtifactSaveType.PREEXISTING,
        has_custom_name=True,
        tags=[stage, "kedro"],
        project=client.active_project.id,
        metadata={
            "kedro_dataset": record.name,
            "kedro_type": record.kind,
            "uri": Uri(record.uri),
            **record.metadata,
        },
    )
    version = client.zen_store.create_artifact_version(artifact_version=request)
    _link_artifact_version_to_the_step_and_model(artifact_version=version)


MODEL_DATASETS = ("serving_model", "model_checkpoint")


def _run_training(
    project: str, env: str, params: dict[str, Any], upstream: StepSummary | None
) -> StepSummary:
    """The tracker starts its run before the step; the local orchestrator runs the step and
    its Kedro nodes in this process. The nodes log through their own MLflow client into the
    run named by ``MLFLOW_RUN_ID`` on ``MLFLOW_TRACKING_URI``: hand the tracker's run over
    (allowed for that run only, ``tracking.inherited_run_id``)."""
    import mlflow

    from plants_mlops.model.tracking import ALLOW_RUN_ID_ENV

    active = mlflow.active_run()
    saved = {k: os.environ.get(k) for k in ("MLFLOW_RUN_ID", ALLOW_RUN_ID_ENV)}
    if active is not None:
        os.environ["MLFLOW_TRACKING_URI"] = mlflow.get_tracking_uri()
        os.environ["MLFLOW_RUN_ID"] = os.environ[ALLOW_RUN_ID_ENV] = active.info.run_id
    try:
        summary = _execute("training", project, env, params, upstream)
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
    if active is not None and not summary.mlflow_run_id:
        summary.mlflow_run_id = active.info.run_id
    return summary


def _run_registry(
    project: str, env: str, params: dict[str, Any], upstream: StepSummary | None
) -> StepSummary:
    summary = _execute("registry", project, env, params, upstream)
    _link_zenml_model_version(summary)
    return summary


# Caching (docs/zenml.md): stages that read or write state outside ZenML (the table,
# remote URLs, the champion and versions in the MLflow registry) never cache; only training
# caches, on the value of the validated fingerprint, its parameters and config_hash (conf +
# every module it imports).
CACHED_STAGES = ("training",)
_DOCS = {
    "ingestion": "Download the pending images of the plants_data table into 01_raw.",
    "formatting": "Raw -> formatted images -> dataset index + fingerprint (03_primary).",
    "curation": "Near-duplicates, label issues, outliers -> the review queue (08_reporting).",
    "validation": "Pandera checks on every index; a failure stops the run before training.",
    "training": "Train the classifier; logs into the stack's MLflow tracker run if any.",
    "evaluation": "Test metrics of the new model against the baselines and the champion.",
    "behaviour": "Invariance, clear cases and OOD flags of the new model (the gate reads them).",
    "registry": "Register the model in MLflow, apply the gate, move `champion`.",
    "monitoring": "Evidently drift report of the prediction log against the training data.",
}
_RUNNERS: dict[str, Callable[..., StepSummary]] = {
    "training": _run_training,
    "registry": _run_registry,
}


def make_step(stage: str):
    """The ZenML step of one Kedro pipeline: runs it, returns its :class:`StepSummary`
    (output artifact named after the stage)."""
    runner = _RUNNERS.get(stage)

    def stage_step(
        project: str,
        env: str,
        params: dict[str, Any],
        config_hash: str,
        upstream: StepSummary | None = None,
    ):
        if runner is not None:
            return runner(project, env, params, upstream)
        return _execute(stage, project, env, params, upstream)

    # Real objects, not the strings `from __future__ import annotations` leaves: ZenML reads
    # them, and the output's name (the stage) is only known here.
    stage_step.__annotations__ = {
        "project": str,
        "env": str,
        "params": dict[str, Any],
        "config_hash": str,
        "upstream": StepSummary | None,
        "return": Annotated[StepSummary, stage],
    }
    stage_step.__name__ = stage_step.__qualname__ = stage
    stage_step.__doc__ = _DOCS[stage]
    stage_step.__module__ = __name__
    options: dict[str, Any] = {"output_materializers": SummaryMaterializer}
    if stage == "training":
        options["cache_policy"] = CachePolicy(
            include_artifact_values=True, include_artifact_ids=False
        )
    elif stage not in CACHED_STAGES:
        options["enable_cache"] = False
    return step(**options)(stage_step)


# ZenML imports steps by module attribute: each one must be a module-level name.
ingestion = make_step("ingestion")
formatting = make_step("formatting")
curation = make_step("curation")
validation = make_step("validation")
training = make_step("training")
evaluation = make_step("evaluation")
behaviour = make_step("behaviour")
registry = make_step("registry")
monitoring = make_step("monitoring")  # on request (`--pipelines monitoring`), never by default
STEPS = {name: globals()[name] for name in (*STAGES, "monitoring")}


# --- ZenML Model Control Plane <-> MLflow Model Registry ---------------------------------


def _link_zenml_model_version(summary: StepSummary) -> None:
    """Tag and annotate this run's ZenML model version with the MLflow registry version."""
    from zenml.client import Client

    model_version = get_step_context().model_version
    if model_version is None:
        return
    meta: dict[str, Any] = {
        "mlflow_registered_model": REGISTERED_MODEL_NAME,
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
