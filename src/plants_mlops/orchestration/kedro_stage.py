"""Run one Kedro pipeline in a ``KedroSession`` and read back its small JSON outputs.

This is the only place the orchestration layer touches Kedro: ZenML steps call
:func:`run_stage`; the benchmark and the cache guard use the same helpers, so a ZenML step
and ``kedro run --pipelines NAME --env ENV`` do exactly the same work.
"""

from __future__ import annotations

import ast
import hashlib
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from plants_mlops.orchestration.summaries import StepSummary, publish, step_summary
from plants_mlops.summaries import dataset_name

log = logging.getLogger(__name__)

# The installed package: the code a stage runs is read from here for the cache key.
PACKAGE_ROOT = Path(__file__).resolve().parents[1]


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


def parameters(project: Path, env: str, *dotted: str) -> list[Any]:
    """Kedro parameters (``"training.mlflow.experiment"``, ...) of ``env``, read in one
    session; ``None`` for each one absent."""
    from kedro.framework.session import KedroSession

    _bootstrap(project)
    with KedroSession.create(project_path=project, env=env) as session:
        params: Any = session.load_context().params
    found = []
    for name in dotted:
        node = params
        for part in name.split("."):
            node = node.get(part) if isinstance(node, dict) else None
        found.append(node)
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


# --- the cache key: configuration and every module the stage's code imports -------------


def _module_file(dotted: str, root: Path) -> Path | None:
    """The file of module ``dotted`` (``plants_mlops.x.y``) under ``root`` (the package)."""
    parts = dotted.split(".")
    if parts[0] != root.name:
        return None
    base = root.joinpath(*parts[1:])
    for candidate in (base.with_suffix(".py"), base / "__init__.py"):
        if candidate.is_file():
            return candidate
    return None


def _imports(path: Path, root: Path) -> set[Path]:
    """Project modules ``path`` imports, at module level or inside functions."""
    package = [root.name, *path.relative_to(root).parent.parts]
    found: set[Path] = set()
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        names: list[str] = []
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = package[: len(package) - node.level + 1] if node.level else []
            module = ".".join([*base, *([node.module] if node.module else [])])
            names = [module, *(f"{module}.{alias.name}" for alias in node.names)]
        for name in names:
            if (file := _module_file(name, root)) is not None:
                found.add(file)
    return found


def stage_modules(stage: str, root: Path | None = None) -> list[Path]:
    """Every project module the ``stage`` pipeline's code reaches through imports: for
    training that is its nodes plus ``model/*`` (architectures, data, train, export,
    artifact...), ``imaging.py``, ``params.py``, ``contracts.py``."""
    root = root or PACKAGE_ROOT
    todo = sorted((root / "pipelines" / stage).glob("*.py"))
    seen: set[Path] = set()
    while todo:
        path = todo.pop()
        if path in seen:
            continue
        seen.add(path)
        todo.extend(sorted(_imports(path, root) - seen))
    return sorted(seen)


def config_hash(project: Path, env: str, stage: str, root: Path | None = None) -> str:
    """Hash of what a stage's result depends on besides data: conf (base + env) and the
    code of every module the stage imports, transitively."""
    root = root or PACKAGE_ROOT
    digest = hashlib.sha256()
    files = sorted((project / "conf" / "base").rglob("*.yml"))
    files += sorted((project / "conf" / env).rglob("*.yml"))
    for path in files:
        digest.update(path.name.encode())
        digest.update(path.read_bytes())
    for path in stage_modules(stage, root):
        digest.update(str(path.relative_to(root)).encode())
        digest.update(path.read_bytes())
    return digest.hexdigest()[:16]


# --- running a stage ---------------------------------------------------------------------


@dataclass
class DatasetRecord:
    """A catalog dataset a stage wrote, for ZenML to register by URI (no copy)."""

    name: str
    uri: str
    kind: str
    metadata: dict[str, Any] = field(default_factory=dict)
    html: str | None = None  # the page itself, for an HTML report


@dataclass
class StageRun:
    summary: StepSummary
    datasets: list[DatasetRecord]


def _dataset_uri(catalog, name: str, project: Path) -> str | None:
    """Where a file-backed dataset lives (``filepath`` or ``path``; a local one as an
    absolute path: the catalog's are relative to the project), else None."""
    try:
        desc = catalog.get(name)._describe()
    except Exception:  # not in the catalog (memory) or not describable
        return None
    location = desc.get("filepath") or desc.get("path")
    if not location:
        return None
    protocol = desc.get("protocol")
    location = str(location)
    if protocol and protocol not in ("file", "local"):
        return location if "://" in location else f"{protocol}://{location}"
    return str((project / location).resolve())


def run_stage(
    stage: str,
    project: str | Path,
    env: str,
    params: dict[str, Any] | None = None,
    upstream: StepSummary | None = None,
) -> StageRun:
    """``kedro run --pipelines STAGE --env ENV --params ...`` in-process, then read the
    stage's own ``<stage>_summary`` (published to the run's listeners, ``summaries.publish``)
    and list the file-backed datasets it wrote."""
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
    summary = step_summary(catalog.load(dataset_name(stage)), env, duration, upstream)
    records = []
    for name in sorted(pipelines[stage].all_outputs()):
        uri = _dataset_uri(catalog, name, project)
        if uri is None:
            continue
        kind = (catalog.get_type(name) or "").rsplit(".", 1)[-1]
        record = DatasetRecord(name, uri, kind)
        if name.endswith("_html"):
            record.html = catalog.load(name)
            record.metadata["size_bytes"] = len(record.html.encode())
        records.append(record)
    publish(summary)
    return StageRun(summary, records)
