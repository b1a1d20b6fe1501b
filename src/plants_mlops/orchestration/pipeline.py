"""The ZenML pipeline over the Kedro pipelines, and the function that runs it.

``run_pipeline()`` is what ``plants-mlops pipeline run`` and ``plants-mlops demo`` call. It
runs any subset of the stages (``contracts.STAGES``, plus ``monitoring`` on request) that
exists as a Kedro pipeline, in order, each stage's
summary feeding the next step so the dashboard shows one connected flow.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from zenml import Model, pipeline

from plants_mlops.contracts import REGISTERED_MODEL_NAME, STAGES
from plants_mlops.orchestration import kedro_stage
from plants_mlops.orchestration.gpu import training_step_settings
from plants_mlops.orchestration.steps import CACHED_STAGES, STEPS

log = logging.getLogger(__name__)

PIPELINE_NAME = "plants_mlops"
# Stack label naming the Kedro environment a stack runs (set by `plants-mlops stack register`).
KEDRO_ENV_LABEL = "plants_mlops_kedro_env"
GPU_LABEL = "plants_mlops_gpu"
# The MLflow experiment the tracker's runs land in unless training.mlflow.experiment says.
EXPERIMENT_NAME = "plants-classifier"
# Non-secret settings the steps need wherever they run (passed as the steps' environment).
FORWARDED_ENV = (
    "MLFLOW_TRACKING_URI",
    "MLFLOW_S3_ENDPOINT_URL",
    "PLANTS_DB_URL",
    "PLANTS_S3_ENDPOINT_URL",
    "PLANTS_S3_BUCKET",
    "PLANTS_MIRROR",
)


@pipeline(
    name=PIPELINE_NAME,
    model=Model(name=REGISTERED_MODEL_NAME, tags=["plants-mlops"]),  # prepare_run: the env's
)
def plants_mlops_pipeline(
    project: str,
    env: str,
    params: dict[str, Any],
    stages: list[str],
    config_hashes: dict[str, str],
    tracker: str | None = None,
    experiment: str = EXPERIMENT_NAME,
    gpu: bool = False,
    reuse_models: bool = True,
) -> None:
    """ingestion -> formatting -> curation -> validation -> training -> evaluation -> registry."""
    upstream = None
    for stage in stages:
        step_fn = STEPS[stage]
        if stage == "training":
            options: dict[str, Any] = {}
            if tracker:
                from zenml.integrations.mlflow.flavors.mlflow_experiment_tracker_flavor import (
                    MLFlowExperimentTrackerSettings,
                )

                options["experiment_tracker"] = tracker
                options["settings"] = {
                    "experiment_tracker": MLFlowExperimentTrackerSettings(
                        experiment_name=experiment
                    )
                }
            if gpu:
                options.setdefault("settings", {}).update(training_step_settings())
            if options:
                step_fn = step_fn.with_options(**options)
        if stage in CACHED_STAGES and not reuse_models:
            step_fn = step_fn.with_options(enable_cache=False)
        upstream = step_fn(
            project=project,
            env=env,
            params=params,
            config_hash=config_hashes[stage],
            upstream=upstream,
        )


@dataclass
class RunResult:
    run_name: str
    run_id: str
    status: str
    stack: str
    env: str
    stages: list[str]
    summaries: dict[str, dict[str, Any]] = field(default_factory=dict)
    cached: list[str] = field(default_factory=list)


def nested_params(pairs: list[str] | None) -> dict[str, Any]:
    """``["training.epochs=1", "x=a"]`` -> ``{"training": {"epochs": 1}, "x": "a"}``."""
    import yaml

    from plants_mlops.errors import UserFacingError

    out: dict[str, Any] = {}
    for pair in pairs or []:
        key, sep, raw = pair.partition("=")
        if not sep or not key.strip():
            raise UserFacingError(f"--params wants KEY=VALUE, got {pair!r}")
        node = out
        *parents, leaf = key.strip().split(".")
        for part in parents:
            node = node.setdefault(part, {})
        node[leaf] = yaml.safe_load(raw)
    return out


@dataclass
class PreparedRun:
    """The pipeline (with its run options) and its arguments, for the active stack."""

    pipeline: Any
    kwargs: dict[str, Any]
    stack: str
    env: str
    stages: list[str]
    cron: str | None = None

    def plan(self) -> dict[str, Any]:
        """What each step would run with (compiles the pipeline; runs nothing)."""
        self.pipeline.prepare(**self.kwargs)
        steps = {}
        for name, invocation in self.pipeline.invocations.items():
            config = invocation.step.configuration
            resources = config.settings.get("resources")
            steps[name] = {
                "enable_cache": config.enable_cache,
                "experiment_tracker": config.experiment_tracker,
                "gpu_count": resources.model_dump().get("gpu_count") if resources else None,
            }
        model = self.pipeline.configuration.model
        return {
            "stack": self.stack,
            "env": self.env,
            "stages": self.stages,
            "model": model.name if model else None,
            "steps": steps,
        }


def _make_experiment(project: Path, uri: str, name: str) -> None:
    """Create the tracker's experiment in an embedded SQLite store as the Kedro nodes would
    (``tracking.experiment_id``) before the tracker does: MLflow's own default put its
    artifacts in ``./mlruns`` under an absolute path. A store inside the project is opened
    by its project-relative path, so the location recorded is ``data/mlartifacts/<id>``,
    which a moved project keeps."""
    import contextlib

    from mlflow import MlflowClient

    from plants_mlops.model.tracking import experiment_id

    project = project.resolve()
    db = Path(uri.removeprefix("sqlite:///")).resolve()
    if db.is_relative_to(project):
        uri = f"sqlite:///{db.relative_to(project).as_posix()}"
    with contextlib.chdir(project):
        experiment_id(MlflowClient(uri), name)


def run_pipeline(*args: Any, **kwargs: Any) -> RunResult | None:
    """Run the ZenML pipeline on the active stack (arguments: :func:`prepare_run`'s);
    returns the run and its step summaries. With ``cron``, schedules it on the
    orchestrator instead and returns ``None``."""
    prepared = prepare_run(*args, **kwargs)
    run = prepared.pipeline(**prepared.kwargs)
    if prepared.cron:
        return None
    return _result(run, prepared.stack, prepared.env, prepared.stages)


def prepare_run(
    project: str | Path = ".",
    env: str | None = None,
    stages: list[str] | None = None,
    params: dict[str, Any] | None = None,
    enable_cache: bool = True,
    run_name: str | None = None,
    cron: str | None = None,
) -> PreparedRun:
    """Resolve the stack, environment, stages and step options of a run."""
    from zenml.client import Client

    from plants_mlops.errors import UserFacingError
    from plants_mlops.project import foreign_store

    project = Path(project).resolve()
    if not (project / "pyproject.toml").exists():
        raise UserFacingError(f"{project} is not the Kedro project (no pyproject.toml)")
    stack = Client().active_stack_model
    labels = stack.labels or {}
    env = env or labels.get(KEDRO_ENV_LABEL) or "local"
    wanted = tuple(stages or STAGES)
    unknown = [s for s in wanted if s not in STEPS]
    if unknown:
        raise UserFacingError(f"unknown stage(s) {unknown}; choose from {list(STEPS)}")
    wanted = tuple(s for s in STEPS if s in wanted)  # run order, whatever the order asked
    present = kedro_stage.available_stages(project, wanted)
    skipped = [s for s in wanted if s not in present]
    if skipped:
        log.warning("skipping stage(s) with no Kedro pipeline in this project: %s", skipped)
    if not present:
        raise UserFacingError(f"none of {list(wanted)} exists as a Kedro pipeline in {project}")

    if "training" in present:
        # The stack's MLflow tracker would resume that run too (mlflow.start_run reads it).
        from plants_mlops.model.tracking import inherited_run_id

        inherited_run_id()
    cached_here = [s for s in present if s in CACHED_STAGES]
    reuse = enable_cache
    if reuse and cached_here:
        state = kedro_stage.persisted_outputs_exist(project, env, cached_here)
        missing = sorted(k for k, ok in state.items() if not ok)
        if missing:
            log.info("not reusing cached model steps: outputs missing %s", missing)
            reuse = False

    tracker = stack.components.get(_tracker_type())
    uri = tracker[0].configuration.get("tracking_uri") if tracker else None
    if uri:
        refusal = foreign_store(project, stack.name, uri, labels)
        if refusal:
            raise UserFacingError(refusal)
        # One MLflow store per run: the tracker (training) and the Kedro nodes of every other
        # step (evaluation resumes the training run, registry registers it) must agree.
        current = os.environ.get("MLFLOW_TRACKING_URI")
        if current and current != uri:
            log.warning(
                "MLFLOW_TRACKING_URI=%s differs from the %s stack's tracker (%s): using the "
                "stack's; `plants-mlops stack register %s` (or --stack) re-points it",
                current,
                stack.name,
                uri,
                stack.name,
            )
        os.environ["MLFLOW_TRACKING_URI"] = uri
    forwarded = {k: os.environ[k] for k in FORWARDED_ENV if os.environ.get(k)}
    options: dict[str, Any] = {"enable_cache": enable_cache, "environment": forwarded}
    if run_name:
        options["run_name"] = run_name
    if cron:
        from zenml.config.schedule import Schedule

        options["schedule"] = Schedule(name=f"{PIPELINE_NAME}-{stack.name}", cron_expression=cron)
    experiment, model_name, title = kedro_stage.parameters(
        project, env, "training.mlflow.experiment", "registry.model_name", "task.title"
    )
    if uri and uri.startswith("sqlite:///"):  # a server decides where artifacts go
        _make_experiment(Path(project), uri, experiment or EXPERIMENT_NAME)
    # The run's ZenML Model is the environment's registered model (each task its own).
    options["model"] = Model(
        name=model_name or REGISTERED_MODEL_NAME,
        description=title or None,
        tags=["plants-mlops", f"env:{env}"],
    )
    kwargs = dict(
        project=str(project),
        env=env,
        params=params or {},
        stages=present,
        config_hashes={s: kedro_stage.config_hash(project, env, s) for s in present},
        tracker=tracker[0].name if tracker else None,
        experiment=experiment or EXPERIMENT_NAME,
        gpu=str(labels.get(GPU_LABEL, "")).lower() == "true",
        reuse_models=reuse,
    )
    return PreparedRun(
        plants_mlops_pipeline.with_options(**options), kwargs, stack.name, env, present, cron
    )


def orchestrator_schedules() -> tuple[str, bool]:
    """The active orchestrator's name and whether it can run a cron schedule itself."""
    from zenml.client import Client

    orchestrator = Client().active_stack.orchestrator
    return orchestrator.name, bool(orchestrator.config.is_schedulable)


def _tracker_type():
    from zenml.enums import StackComponentType

    return StackComponentType.EXPERIMENT_TRACKER


def _result(run, stack_name: str, env: str, stages: list[str]) -> RunResult:
    from zenml.client import Client

    run = Client().get_pipeline_run(run.id)
    result = RunResult(
        run_name=run.name,
        run_id=str(run.id),
        status=str(run.status.value),
        stack=stack_name,
        env=env,
        stages=stages,
    )
    for name, step_run in run.steps.items():
        if str(step_run.status.value) == "cached":
            result.cached.append(name)
        if name in step_run.outputs:
            try:
                result.summaries[name] = (
                    step_run.outputs[name][0].load().model_dump(exclude={"outputs"})
                )
            except Exception as exc:  # a summary we cannot read back is not a failed run
                log.warning("could not load the %s summary: %s", name, exc)
    return result
