"""Kedro hooks of the project (kept small: behaviour lives in nodes)."""

from __future__ import annotations

import logging
import os
import sys
from pathlib import Path

import click
from kedro.framework.hooks import hook_impl

from plants_mlops import memory, storage

log = logging.getLogger(__name__)

# A dataset in every run's catalog: the run's Kedro environment (before_pipeline_run).
RUN_ENV = "kedro_env"


def sweep_temporaries(pipeline, catalog) -> int:
    """Delete what killed runs left of their saves (``datasets.atomic``) where this run's
    datasets are written: the previous files stay intact, only the temporaries go."""
    from plants_mlops.datasets.atomic import sweep_dataset

    removed = 0
    for name in sorted(pipeline.all_outputs()):
        try:
            dataset = catalog.get(name)
        except Exception:  # a dataset kedro would create in memory
            continue
        if dataset is not None:
            removed += sweep_dataset(dataset)
    return removed


class ProjectHooks:
    """Logs which environment and pipeline a run uses, so every log file says where data
    went; takes the run's stage locks (``runlock``) and sweeps the temporaries killed runs
    left (``sweep_temporaries``); nodes tagged ``memory.RETURN_MEMORY`` load and run with
    glibc's mmap threshold held low, so the buffers of the frames they free go back to
    the OS."""

    _context = None
    _locks = None

    def _take_run_locks(self, pipeline) -> None:
        """One run at a time per stage and data root (``runlock``)."""
        from plants_mlops.runlock import RunLocks

        if self._context is None:
            return
        config = self._context.config_loader
        root = str((config.get("globals") or {}).get("root") or "data")
        if "://" not in root and not os.path.isabs(root):
            root = os.path.join(str(self._context.project_path), root)
        options = (config.get("credentials") or {}).get("storage") or {}
        self._locks = RunLocks(root)
        try:
            self._locks.acquire(stages_of(pipeline), options)
        except Exception as exc:
            self._locks = None
            _stop(exc)
            raise

    def _release_run_locks(self) -> None:
        if self._locks is not None:
            self._locks.release()
            self._locks = None

    @hook_impl
    def after_pipeline_run(self) -> None:
        self._release_run_locks()

    @hook_impl
    def after_context_created(self, context) -> None:
        """An environment's variables and its S3 server, checked before anything runs: one
        line naming every missing variable (``kedro run --env minio`` needs three), or the
        endpoint nothing answers at, instead of a traceback from the first dataset."""
        self._context = context  # its data root and credentials: the run locks
        conf = Path(context.project_path) / "conf"
        env = context.env or "local"
        missing = [
            v for v in storage.required_env([conf / "base", conf / env]) if v not in os.environ
        ]
        if missing:
            raise click.ClickException(
                f"set {', '.join(missing)} for `--env {env}` (docs/data.md, *Storage environments*)"
            )
        if "PLANTS_S3_ENDPOINT_URL" in storage.required_env([conf / env]):
            problem = storage.endpoint_problem(os.environ["PLANTS_S3_ENDPOINT_URL"])
            if problem:
                raise click.ClickException(
                    f"PLANTS_S3_ENDPOINT_URL: {problem}; start the S3 server (MinIO: "
                    "`docker compose up -d minio`) or point the variable at one"
                )

    @hook_impl
    def before_pipeline_run(self, run_params: dict, pipeline, catalog) -> None:
        log.info(
            "plants-mlops run: pipeline=%s env=%s",
            run_params.get("pipeline_names") or run_params.get("pipeline_name") or "__default__",
            run_params.get("env") or "local",
        )
        # The run's `--env` ("" without one) for the nodes that start another run of this
        # task (monitoring's retraining: `pipeline run --env ENV`).
        catalog[RUN_ENV] = run_params.get("env") or ""
        if "training" in stages_of(pipeline):
            _refuse_inherited_mlflow_run()  # before hours of training, not after
        self._take_run_locks(pipeline)  # before the sweep: a live run's files stay put
        sweep_temporaries(pipeline, catalog)

    @hook_impl
    def before_dataset_loaded(self, dataset_name: str, node) -> None:
        if memory.RETURN_MEMORY in node.tags:
            memory.set_mmap_threshold(memory.SMALL_MMAP_THRESHOLD)

    @hook_impl
    def after_node_run(self, node) -> None:
        if memory.RETURN_MEMORY in node.tags:
            memory.set_mmap_threshold(memory.LARGE_MMAP_THRESHOLD)

    @hook_impl
    def on_node_error(self, node) -> None:
        self.after_node_run(node)

    @hook_impl
    def on_pipeline_error(self, error: Exception) -> None:
        """Under the ``kedro`` command, a condition the user can fix (a damaged store, a
        refusal, a service down) ends the run in one line and exit status 1, not a page of
        traceback. In process (tests, ZenML steps) the error propagates as it is."""
        self._release_run_locks()
        _stop(error)


def _refuse_inherited_mlflow_run() -> None:
    from plants_mlops.model import tracking

    try:
        tracking.inherited_run_id()
    except Exception as exc:
        _stop(exc)
        raise


def _stop(error: BaseException) -> None:
    """Under the ``kedro`` command, a user-facing ``error`` becomes one line on stderr and
    exit status 1 (SystemExit); otherwise this returns and the caller raises it."""
    message = user_facing(error)
    if message is not None and os.path.basename(sys.argv[0] or "") == "kedro":
        sys.stderr.write(f"error: {message}\n")
        sys.stderr.flush()
        raise SystemExit(1)


def stages_of(pipeline) -> list[str]:
    """The project stages whose nodes ``pipeline`` runs (``pipelines.<stage>.*``)."""
    stages = set()
    for node in pipeline.nodes:
        module = getattr(node.func, "__module__", "") or ""
        parts = module.split(".")
        if len(parts) > 2 and parts[:2] == ["plants_mlops", "pipelines"]:
            stages.add(parts[2])
    return sorted(stages)


def user_facing(error: BaseException) -> str | None:
    """The message of the first ``UserFacingError`` in ``error``'s chain, or None."""
    from plants_mlops.errors import UserFacingError

    seen: set[int] = set()
    current: BaseException | None = error
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        if isinstance(current, UserFacingError):
            return str(current)
        current = current.__cause__ or current.__context__
    return None
