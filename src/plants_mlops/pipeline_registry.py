"""Project pipelines: every folder under ``pipelines/`` is one pipeline, runnable alone
with ``kedro run --pipelines NAME``."""

from __future__ import annotations

from kedro.framework.project import find_pipelines
from kedro.pipeline import Pipeline

from plants_mlops.contracts import STAGES


def register_pipelines() -> dict[str, Pipeline]:
    pipelines = find_pipelines(raise_errors=True)
    default = Pipeline([])
    for name in STAGES:
        if name in pipelines:
            default += pipelines[name]
    pipelines["__default__"] = default
    # `data` (ingestion + formatting + validation) is the folder pipelines/data: kedro 1.7
    # imports only the folders named by `--pipelines`, so a composite defined here would be
    # empty when asked for alone.
    return pipelines
