"""Project pipelines: every folder under ``pipelines/`` is one pipeline, runnable alone
with ``kedro run --pipelines NAME``."""

from __future__ import annotations

from kedro.framework.project import find_pipelines
from kedro.pipeline import Pipeline

# The order of the end-to-end (default) run. Monitoring is not part of it: it needs a
# prediction log, which only exists once the API has served requests.
DEFAULT_ORDER = ("ingestion", "formatting", "validation", "training", "evaluation", "registry")


def register_pipelines() -> dict[str, Pipeline]:
    pipelines = find_pipelines(raise_errors=True)
    default = Pipeline([])
    for name in DEFAULT_ORDER:
        if name in pipelines:
            default += pipelines[name]
    pipelines["__default__"] = default
    pipelines["data"] = sum(
        (pipelines[n] for n in ("ingestion", "formatting", "validation") if n in pipelines),
        Pipeline([]),
    )
    return pipelines
