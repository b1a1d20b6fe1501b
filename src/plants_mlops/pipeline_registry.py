"""Project pipelines: every folder under ``pipelines/`` is one pipeline, runnable alone
with ``kedro run --pipelines NAME``."""

from __future__ import annotations

import importlib.resources
import re

import click
from kedro.framework.project import find_pipelines
from kedro.pipeline import Pipeline

from plants_mlops.contracts import STAGES


def pipeline_names() -> list[str]:
    """The pipelines of this package (its folders under ``pipelines/``), sorted."""
    root = importlib.resources.files("plants_mlops.pipelines")
    return sorted(p.name for p in root.iterdir() if p.is_dir() and (p / "__init__.py").is_file())


def register_pipelines() -> dict[str, Pipeline]:
    try:
        pipelines = find_pipelines(raise_errors=True)
    except ImportError as exc:
        if exc.__cause__ is not None:  # a pipeline that exists failed to import: the traceback
            raise
        # `kedro run --pipelines NAME` with no such folder: one line naming the valid ones
        # (click prints a UsageError as `Error: ...`, exit code 2, no traceback).
        unknown = re.findall(r"\.pipelines\.(\w+)'", str(exc))
        raise click.UsageError(
            f"unknown pipeline {', '.join(unknown) or '?'}; choose from "
            f"{', '.join(pipeline_names())} (or none: all stages)"
        ) from None
    default = Pipeline([])
    for name in STAGES:
        if name in pipelines:
            default += pipelines[name]
    pipelines["__default__"] = default
    # `data` (ingestion + formatting + validation) is the folder pipelines/data: kedro 1.7
    # imports only the folders named by `--pipelines`, so a composite defined here would be
    # empty when asked for alone.
    return pipelines
