"""The served model: loading a registry version into ONNX Runtime, and hot swapping it.

Requests read ``ModelManager.current`` once and keep that object for their whole
prediction, so replacing the reference swaps the model atomically: requests in flight
finish on the old session, new ones start on the new session, nothing is dropped.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from plants_mlops.contracts import ALIAS_CHAMPION
from plants_mlops.model.artifact import (
    ModelLoadError,
    RegisteredArtifact,
    parse_model_uri,
    resolve,
)

log = logging.getLogger("plants_mlops.serving.model")

__all__ = ["ModelLoadError", "ModelManager", "Registry", "ServingModel"]


@dataclass
class ServingModel(RegisteredArtifact):
    """One registry version being served, with where it came from."""

    source: str = ""
    lineage: dict[str, Any] = field(default_factory=dict)
    loaded_at: datetime = field(default_factory=lambda: datetime.now(UTC))
    model_card: str | None = None  # the version's `model_card` tag when it was loaded
    gate_verdict: str | None = None  # its `verdict` tag then: "pass", "fail", None (no verdict)

    def describe(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "version": self.version,
            "source": self.source,
            "run_id": self.run_id,
            "architecture": self.meta.architecture,
            "precision": self.meta.precision,
            "labels": list(self.meta.labels),
            "image_size": self.meta.image_size,
            "resize_size": self.meta.resize_size,
            "embedding_dim": self.embedding_dim,
            "dataset_fingerprint": self.meta.dataset_fingerprint,
            "test_metrics": self.meta.test_metrics,
            "lineage": self.lineage,
            "loaded_at": self.loaded_at.isoformat(),
            "model_card": self.model_card,
            "gate_verdict": self.gate_verdict,
        }


class Registry:
    """The few MLflow registry calls the service needs, through one explicit client."""

    def __init__(self, tracking_uri: str, model_uri: str) -> None:
        from mlflow import MlflowClient

        self.tracking_uri = tracking_uri
        self.model_uri = model_uri
        self.name, self.alias, self.version = parse_model_uri(model_uri)
        self.client = MlflowClient(tracking_uri=tracking_uri, registry_uri=tracking_uri)

    def target_version(self) -> tuple[str, str | None]:
        """(version, run_id) that the model URI points at now."""
        _, version, run_id = resolve(self.client, self.model_uri)
        return version, run_id

    def load(self, version: str, run_id: str | None, threads: int) -> ServingModel:
        from plants_mlops.model import artifact, registry

        if self.alias == ALIAS_CHAMPION:  # only a gated (or recorded --force) champion
            refusal = registry.serving_refusal(self.client, version, self.name)
            if refusal:
                raise artifact.ModelLoadError(refusal)
        loaded = artifact.load_version(self.client, self.name, version, threads=threads)
        run_id = run_id or loaded.meta.mlflow_run_id
        tags = self._tags(version)
        verdict = tags.get("verdict")
        if self.alias != ALIAS_CHAMPION and verdict != "pass":
            why = (
                f"verdict fail ({tags.get('gate.refused') or 'no reason recorded'})"
                if verdict
                else "no gate verdict"
            )
            log.warning(
                "%s serves %s version %s, not the gated champion: %s",
                self.model_uri,
                self.name,
                version,
                why,
                extra={"event": "ungated_model", "model_version": version, "gate_verdict": verdict},
            )
        return ServingModel(
            artifact=loaded,
            name=self.name,
            version=version,
            run_id=run_id,
            source=f"models:/{self.name}/{version}",
            lineage=self._lineage(run_id),
            model_card=tags.get("model_card"),
            gate_verdict=verdict,
        )

    def _tags(self, version: str) -> dict[str, str]:
        """The version's tags (model card, gate verdict); {} when the registry cannot say."""
        try:
            return dict(self.client.get_model_version(self.name, version).tags or {})
        except Exception:  # informative only, like the lineage
            return {}

    def _lineage(self, run_id: str | None) -> dict[str, Any]:
        if not run_id:
            return {}
        try:
            run = self.client.get_run(run_id)
        except Exception as exc:  # lineage is informative only
            return {"run_id": run_id, "error": str(exc)}
        base = (self.tracking_uri or "").rstrip("/")
        link = (
            f"{base}/#/experiments/{run.info.experiment_id}/runs/{run_id}"
            if base.startswith("http")
            else None
        )
        return {
            "run_id": run_id,
            "experiment_id": run.info.experiment_id,
            "run_name": run.info.run_name,
            "run_url": link,
            "metrics": dict(run.data.metrics),
            "params": dict(run.data.params),
        }


@dataclass
class ReloadOutcome:
    changed: bool
    version: str | None
    error: str | None = None
    detail: str = ""


class ModelManager:
    """Holds the current model; loads the first one, polls for a new target, swaps safely."""

    def __init__(self, config) -> None:
        self.config = config
        self.current: ServingModel | None = None
        self.last_error: dict[str, Any] | None = None
        self._registry: Registry | None = None
        self._lock = threading.Lock()  # one load at a time
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.on_swap = None  # callback(model) for metrics
        self.on_failure = None  # callback() for metrics
        self._signal_seen = self._signal() if config.reload_signal_file else ""
        self._waiting_for: str | None = None  # the error last reported while no model is up

    def registry(self) -> Registry:
        if self._registry is None:
            self._registry = Registry(self.config.tracking_uri, self.config.model_uri)
        return self._registry

    def start(self) -> None:
        self._thread = threading.Thread(target=self._loop, name="model-watch", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            # A daemon thread: a load stuck on a hung registry must not hold the shutdown
            # past uvicorn's grace period (MLflow's calls are bounded, bound_http_calls).
            self._thread.join(timeout=2)

    def _loop(self) -> None:
        forced = False
        while not self._stop.is_set():
            outcome = self.reload(force=forced)
            if self._stop.is_set():
                return
            if self.current is None:
                wait = self.config.startup_retry_seconds
            elif self.config.poll_seconds > 0:
                wait = self.config.poll_seconds
            elif self.config.reload_signal_file:
                wait = None  # only reloads asked for through another worker
            else:
                return  # polling off: the admin reload route is the only trigger
            if outcome.error and self.current is None:
                self._no_model_yet(outcome.error, wait)
            forced = self._wait(wait)

    def _no_model_yet(self, error: str, wait: float) -> None:
        """Say once what to do when there is nothing to serve (a fresh clone: no champion
        yet); the retries every ``wait`` seconds are debug lines until the error changes."""
        if error == self._waiting_for:
            log.debug("no model yet, retrying in %.0fs", wait, extra={"event": "model_wait"})
            return
        self._waiting_for = error
        log.warning(
            "no model to serve yet (%s): train one with `make demo`, or `kedro run "
            "--pipelines training,evaluation,behaviour,registry`; /ready answers 503 until then, "
            "and the API checks again every %.0f s",
            error,
            wait,
            extra={"event": "model_wait", "error": error},
        )

    # --- several workers: POST /admin/reload reaches one; it tells the others -----------

    def _signal(self) -> str:
        try:
            with open(self.config.reload_signal_file) as fh:
                return fh.read()
        except OSError:
            return ""

    def _wait(self, seconds: float | None) -> bool:
        """Sleep ``seconds`` (None: until stopped); True when another worker asked every
        worker to reload meanwhile (``broadcast_reload``), checked every 0.25 s."""
        if not self.config.reload_signal_file:
            self._stop.wait(seconds)
            return False
        deadline = None if seconds is None else time.monotonic() + seconds
        while not self._stop.is_set():
            seen = self._signal()
            if seen != self._signal_seen:
                self._signal_seen = seen
                return True
            left = 0.25 if deadline is None else min(0.25, deadline - time.monotonic())
            if left <= 0:
                return False
            self._stop.wait(left)
        return False

    def broadcast_reload(self) -> None:
        """Ask every worker's watcher to reload now (a no-op with one worker)."""
        path = self.config.reload_signal_file
        if not path:
            return
        token = f"{os.getpid()}-{time.time_ns()}"
        with open(path, "w") as fh:
            fh.write(token)
        self._signal_seen = token  # this worker has just reloaded itself

    def reload(self, force: bool = False) -> ReloadOutcome:
        """Resolve the model URI; load and swap in the target version if it is new.

        A version that already failed is not retried by the poller (it would fail and log
        every interval); ``force`` (the admin reload route) tries it again."""
        with self._lock:
            try:
                registry = self.registry()
                version, run_id = registry.target_version()
            except Exception as exc:  # registry down, alias missing...
                return self._failed(None, f"cannot resolve {self.config.model_uri}: {exc}")
            current = self.current
            if current is not None and current.version == version:
                return ReloadOutcome(False, version, detail="already serving this version")
            failed = self.last_error
            if not force and current is not None and failed and failed["version"] == version:
                return ReloadOutcome(
                    False,
                    current.version,
                    error=failed["error"],
                    detail=f"version {version} failed before; not retried",
                )
            started = time.perf_counter()
            try:
                model = registry.load(version, run_id, self.config.ort_threads)
            except Exception as exc:  # keep serving the old model
                return self._failed(version, str(exc))
            self.current = model  # the atomic swap
            self.last_error = None
            log.info(
                "serving model version %s",
                version,
                extra={
                    "event": "model_swapped",
                    "model_version": version,
                    "previous_version": current.version if current else None,
                    "load_seconds": round(time.perf_counter() - started, 3),
                },
            )
            if self.on_swap:
                self.on_swap(model)
            return ReloadOutcome(True, version, detail=f"now serving version {version}")

    def _failed(self, version: str | None, error: str) -> ReloadOutcome:
        kept = self.current.version if self.current else None
        if self.on_failure:
            self.on_failure()
        self.last_error = {
            "version": version,
            "error": error,
            "at": datetime.now(UTC).isoformat(),
            "kept_version": kept,
        }
        if version is None and kept is None:  # nothing registered yet: _no_model_yet says so
            return ReloadOutcome(False, None, error=error, detail="no model to serve yet")
        log.error(
            "model %s failed to load; still serving %s",
            version,
            kept,
            extra={
                "event": "model_load_failed",
                "failed_version": version,
                "kept_version": kept,
                "error": error,
            },
        )
        return ReloadOutcome(
            False, kept, error=error, detail=f"version {version} failed to load; serving {kept}"
        )
