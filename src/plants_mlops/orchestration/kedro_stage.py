"""Run one Kedro pipeline in a ``KedroSession`` and read back its small JSON outputs.

This is the only place the orchestration layer touches Kedro: ZenML steps call
:func:`run_stage`; the benchmark and the cache guard use the same helpers, so a ZenML step
and ``kedro run --pipelines NAME --env ENV`` do exactly the same work.
"""

from __future__ import annotations

import hashlib
import logging
import time
from pathlib import Path
from typing import Any

from plants_mlops.orchestration.summaries import StageSummary, summarize

log = logging.getLogger(__name__)

# Dataset types whose outputs are small JSON documents worth putting in a step summary.
_SUMMARY_TYPE_HINTS = ("JSONDataset", "JsonDataset", "json_dataset")


def _bootstrap(project: Path) -> None:
    from kedro.framework.startup import bootstrap_project

    bootstrap_project(project)


def _catalog(project: Path, env: str, params: dict[str, Any] | None):
    from kedro.framework.session import KedroSession

    with KedroSession.create(project_path=project, env=env, runtime_params=params) as session:
        return session.load_context().catalog


def available_stages(project: Path, wanted: tuple[str, ...]) -> list[str]:
    """The stages among ``wanted`` that exist as Kedro pipelines (in order).

    Looks for the pipeline folders instead of loading ``pipelines``: loading imports every
    stage's code (torch, evidently...), which costs seconds a data-only run does not need.
    """
    import importlib.resources

    _bootstrap(project)
    from kedro.framework.project import PACKAGE_NAME

    root = importlib.resources.files(f"{PACKAGE_NAME}.pipelines")
    return [name for name in wanted if (root / name / "pipeline.py").is_file()]


def _pipelines(names: list[str]):
    """Kedro's pipelines, loading only ``names`` (Kedro 1.7 imports just those folders)."""
    from kedro.framework.project import pipelines

    pipelines.set_requested(list(names))
    return pipelines


def parameter(project: Path, env: str, dotted: str) -> Any:
    """A Kedro parameter (``"training.mlflow.experiment"``) or ``None`` when absent."""
    from kedro.framework.session import KedroSession

    _bootstrap(project)
    with KedroSession.create(project_path=project, env=env) as session:
        node: Any = session.load_context().params
    for part in dotted.split("."):
        if not isinstance(node, dict) or part not in node:
            return None
        node = node[part]
    return node


def json_outputs(catalog, names: set[str]) -> dict[str, Any]:
    """Load the JSON datasets among ``names`` (small by construction); skip what is absent."""
    found: dict[str, Any] = {}
    for name in sorted(names):
        kind = catalog.get_type(name) or ""
        if not any(h in kind for h in _SUMMARY_TYPE_HINTS):
            continue
        try:
            if catalog.exists(name):
                found[name] = catalog.load(name)
        except Exception as exc:  # a summary that cannot be read must not fail the run
            log.warning("could not read %s for the step summary: %s", name, exc)
    return found


def persisted_outputs_exist(project: Path, env: str, stages: list[str]) -> dict[str, bool]:
    """Whether every persisted output of ``stages`` exists now (``{dataset: exists}``)."""
    _bootstrap(project)
    pipelines = _pipelines(stages)
    catalog = _catalog(project, env, None)
    state: dict[str, bool] = {}
    for stage in stages:
        for name in sorted(pipelines[stage].all_outputs()):
            kind = catalog.get_type(name)
            if kind is None or "MemoryDataset" in kind:
                continue  # in-memory intermediates are recomputed anyway
            try:
                state[name] = bool(catalog.exists(name))
            except Exception:  # a dataset that cannot answer counts as missing
                state[name] = False
    return state


def config_hash(project: Path, env: str, stage: str) -> str:
    """Hash of what a stage's result depends on besides data: conf (base + env) and its code."""
    digest = hashlib.sha256()
    files = sorted((project / "conf" / "base").rglob("*.yml"))
    files += sorted((project / "conf" / env).rglob("*.yml"))
    code = Path(__file__).resolve().parents[1] / "pipelines" / stage
    files += sorted(code.rglob("*.py"))
    for path in files:
        digest.update(str(path.name).encode())
        digest.update(path.read_bytes())
    return digest.hexdigest()[:16]


def run_stage(
    stage: str,
    project: str | Path,
    env: str,
    params: dict[str, Any] | None = None,
    upstream: StageSummary | None = None,
) -> StageSummary:
    """``kedro run --pipelines STAGE --env ENV --params ...`` in-process, then summarise."""
    project = Path(project).resolve()
    _bootstrap(project)
    from kedro.framework.session import KedroSession

    pipelines = _pipelines([stage])
    if stage not in pipelines:
        from plants_mlops.errors import UserFacingError

        raise UserFacingError(f"no Kedro pipeline named {stage!r} in {project}")
    started = time.perf_counter()
    with KedroSession.create(project_path=project, env=env, runtime_params=params) as session:
        session.run(pipeline_names=[stage])
        catalog = session.load_context().catalog
    duration = time.perf_counter() - started
    outputs = json_outputs(catalog, set(pipelines[stage].all_outputs()))
    return summarize(stage, env, outputs, duration, upstream)
