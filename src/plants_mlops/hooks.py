"""Kedro hooks of the project (kept small: behaviour lives in nodes)."""

from __future__ import annotations

import logging

from kedro.framework.hooks import hook_impl

log = logging.getLogger(__name__)


class ProjectHooks:
    """Logs which environment and pipeline a run uses, so every log file says where data went."""

    @hook_impl
    def before_pipeline_run(self, run_params: dict, pipeline, catalog) -> None:
        log.info(
            "plants-mlops run: pipeline=%s env=%s",
            run_params.get("pipeline_names") or run_params.get("pipeline_name") or "__default__",
            run_params.get("env") or "local",
        )
