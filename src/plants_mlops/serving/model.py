"""The served model: loading a registry version into ONNX Runtime, and hot swapping it.

Requests read ``ModelManager.current`` once and keep that object for their whole
prediction, so replacing the reference swaps the model atomically: requests in flight
finish on the old session, new ones start on the new session, nothing is dropped.
"""

from __future__ import annotations

import json
import logging
import tempfile
import threading
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np

from plants_mlops import contracts, imaging

log = logging.getLogger("plants_mlops.serving.model")


class ModelLoadError(RuntimeError):
    """A registry version could not be turned into a working serving model."""


@dataclass(frozen=True)
class ServingMeta:
    labels: tuple[str, ...]
    image_size: int
    resize_size: int
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    architecture: str = "unknown"
    dataset_fingerprint: str | None = None
    test_metrics: dict[str, float] = field(default_factory=dict)
    mlflow_run_id: str | None = None

    @classmethod
    def from_dict(cls, raw: dict[str, Any]) -> ServingMeta:
        try:
            labels = tuple(raw["labels"])
            image_size = int(raw["image_size"])
            return cls(
                labels=labels,
                image_size=image_size,
                resize_size=int(raw.get("resize_size") or image_size),
                mean=tuple(float(v) for v in raw["mean"]),
                std=tuple(float(v) for v in raw["std"]),
                architecture=str(raw.get("architecture", "unknown")),
                dataset_fingerprint=_fingerprint(raw.get("dataset_fingerprint")),
                test_metrics={
                    k: float(v)
                    for k, v in (raw.get("test_metrics") or {}).items()
                    if isinstance(v, int | float)
                },
                mlflow_run_id=raw.get("mlflow_run_id"),
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise ModelLoadError(f"serving_meta is incomplete or malformed: {exc!r}") from exc


def _fingerprint(value: Any) -> str | None:
    if isinstance(value, dict):  # the dataset_fingerprint.json document itself
        value = value.get("fingerprint")
    return None if value is None else str(value)


@dataclass
class Prediction:
    probabilities: np.ndarray  # [N, C]
    embeddings: np.ndarray  # [N, D]


class ServingModel:
    """One loaded registry version: an ONNX Runtime session plus its serving metadata."""

    def __init__(
        self,
        *,
        name: str,
        version: str,
        run_id: str | None,
        source: str,
        meta: ServingMeta,
        onnx_path: Path,
        threads: int = 1,
        lineage: dict[str, Any] | None = None,
    ) -> None:
        import onnxruntime as ort

        self.name = name
        self.version = version
        self.run_id = run_id
        self.source = source
        self.meta = meta
        self.lineage = lineage or {}
        self.loaded_at = datetime.now(UTC)
        opts = ort.SessionOptions()
        # 2 cores shared by uvicorn, decoding and ORT: one intra-op thread per request and
        # no spinning (spinning threads fight the decoder threads; see docs/serving.md).
        opts.intra_op_num_threads = max(1, threads)
        opts.inter_op_num_threads = 1
        opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        providers = [
            p
            for p in ("CUDAExecutionProvider", "CPUExecutionProvider")
            if p in ort.get_available_providers()
        ]
        try:
            self.session = ort.InferenceSession(str(onnx_path), opts, providers=providers)
        except Exception as exc:  # onnxruntime raises its own exception types
            raise ModelLoadError(f"onnxruntime cannot load the model: {exc}") from exc
        inputs = [i.name for i in self.session.get_inputs()]
        outputs = [o.name for o in self.session.get_outputs()]
        if inputs != [contracts.ONNX_INPUT] or not {
            contracts.ONNX_OUTPUT_LOGITS,
            contracts.ONNX_OUTPUT_EMBEDDING,
        } <= set(outputs):
            raise ModelLoadError(
                f"model breaks the serving contract: inputs {inputs}, outputs {outputs} "
                f"(want input {contracts.ONNX_INPUT!r}, outputs "
                f"{contracts.ONNX_OUTPUT_LOGITS!r} and {contracts.ONNX_OUTPUT_EMBEDDING!r})"
            )
        if list(meta.labels) != list(contracts.LABELS):
            raise ModelLoadError(f"model labels {meta.labels} differ from {contracts.LABELS}")
        # Warm up (first run allocates) and check the shapes once.
        probe = self.run(np.zeros((1, 3, meta.image_size, meta.image_size), np.float32))
        if probe.probabilities.shape != (1, len(meta.labels)):
            raise ModelLoadError(f"logits have shape {probe.probabilities.shape}")
        self.embedding_dim = int(probe.embeddings.shape[1])

    def preprocess(self, img) -> tuple[np.ndarray, Any]:
        """RGB PIL image -> (model input CHW, the fmt-size image monitoring computes stats on)."""
        fmt = imaging.square_resize(img, self.meta.resize_size)
        x = imaging.to_model_input(
            fmt,
            resize_size=self.meta.resize_size,
            image_size=self.meta.image_size,
            mean=self.meta.mean,
            std=self.meta.std,
        )
        return x, fmt

    def run(self, batch: np.ndarray) -> Prediction:
        logits, emb = self.session.run(
            [contracts.ONNX_OUTPUT_LOGITS, contracts.ONNX_OUTPUT_EMBEDDING],
            {contracts.ONNX_INPUT: batch},
        )
        logits = logits.astype(np.float64)
        logits -= logits.max(axis=1, keepdims=True)
        probs = np.exp(logits)
        probs /= probs.sum(axis=1, keepdims=True)
        return Prediction(probabilities=probs, embeddings=np.asarray(emb, dtype=np.float32))

    def describe(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "version": self.version,
            "source": self.source,
            "run_id": self.run_id,
            "architecture": self.meta.architecture,
            "labels": list(self.meta.labels),
            "image_size": self.meta.image_size,
            "resize_size": self.meta.resize_size,
            "embedding_dim": self.embedding_dim,
            "dataset_fingerprint": self.meta.dataset_fingerprint,
            "test_metrics": self.meta.test_metrics,
            "lineage": self.lineage,
            "loaded_at": self.loaded_at.isoformat(),
        }


def parse_model_uri(uri: str) -> tuple[str, str | None, str | None]:
    """``models:/NAME@ALIAS`` or ``models:/NAME/VERSION`` -> (name, alias, version)."""
    if not uri.startswith("models:/"):
        raise ModelLoadError(f"model URI must look like models:/NAME@ALIAS, got {uri!r}")
    rest = uri[len("models:/") :]
    if "@" in rest:
        name, alias = rest.split("@", 1)
        return name, alias, None
    name, _, version = rest.partition("/")
    if not version:
        raise ModelLoadError(f"model URI {uri!r} names neither an alias nor a version")
    return name, None, version


def _read_meta(folder: Path) -> dict[str, Any]:
    for candidate in (folder / "serving_meta.json", folder / "extra_files" / "serving_meta.json"):
        if candidate.is_file():
            return json.loads(candidate.read_text())
    mlmodel = folder / "MLmodel"
    if mlmodel.is_file():
        import yaml

        meta = (yaml.safe_load(mlmodel.read_text()) or {}).get("metadata")
        if meta:
            return meta
    raise ModelLoadError(f"no serving_meta.json in the model folder {folder}")


def _find_onnx(folder: Path) -> Path:
    direct = folder / "model.onnx"
    if direct.is_file():
        return direct
    found = sorted(folder.rglob("*.onnx"))
    if not found:
        raise ModelLoadError(f"no .onnx file in the model folder {folder}")
    return found[0]


class Registry:
    """The few MLflow registry calls the service needs (mlflow imported lazily)."""

    def __init__(self, tracking_uri: str | None, model_uri: str) -> None:
        from mlflow import MlflowClient

        self.tracking_uri = tracking_uri
        self.model_uri = model_uri
        self.name, self.alias, self.version = parse_model_uri(model_uri)
        self.client = MlflowClient(tracking_uri=tracking_uri, registry_uri=tracking_uri)

    def target_version(self) -> tuple[str, str | None]:
        """(version, run_id) that the model URI points at now."""
        if self.alias:
            mv = self.client.get_model_version_by_alias(self.name, self.alias)
        else:
            mv = self.client.get_model_version(self.name, self.version)
        return str(mv.version), mv.run_id

    def load(self, version: str, run_id: str | None, threads: int) -> ServingModel:
        import os

        import mlflow

        os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
        mlflow.set_tracking_uri(self.tracking_uri)
        uri = f"models:/{self.name}/{version}"
        with tempfile.TemporaryDirectory(prefix="plants-serving-") as tmp:
            try:
                folder = Path(mlflow.artifacts.download_artifacts(artifact_uri=uri, dst_path=tmp))
            except Exception as exc:  # noqa: BLE001 - any transport/registry error
                raise ModelLoadError(f"cannot download {uri}: {exc}") from exc
            meta = ServingMeta.from_dict(_read_meta(folder))
            onnx_path = _find_onnx(folder)
            lineage = self._lineage(run_id or meta.mlflow_run_id)
            return ServingModel(
                name=self.name,
                version=version,
                run_id=run_id or meta.mlflow_run_id,
                source=uri,
                meta=meta,
                onnx_path=onnx_path,
                threads=threads,
                lineage=lineage,
            )

    def _lineage(self, run_id: str | None) -> dict[str, Any]:
        if not run_id:
            return {}
        try:
            run = self.client.get_run(run_id)
        except Exception as exc:  # noqa: BLE001 - lineage is informative only
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
            self._thread.join(timeout=10)

    def _loop(self) -> None:
        while not self._stop.is_set():
            outcome = self.reload()
            if self._stop.is_set():
                return
            if self.current is None:
                wait = self.config.startup_retry_seconds
            elif self.config.poll_seconds > 0:
                wait = self.config.poll_seconds
            else:
                return  # polling off: the admin reload route is the only trigger
            if outcome.error and self.current is None:
                log.warning(
                    "no model yet, retrying in %.0fs",
                    wait,
                    extra={"event": "model_wait", "error": outcome.error},
                )
            self._stop.wait(wait)

    def reload(self, force: bool = False) -> ReloadOutcome:
        """Resolve the model URI; load and swap in the target version if it is new.

        A version that already failed is not retried by the poller (it would fail and log
        every interval); ``force`` (the admin reload route) tries it again."""
        with self._lock:
            try:
                registry = self.registry()
                version, run_id = registry.target_version()
            except Exception as exc:  # noqa: BLE001 - registry down, alias missing...
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
            except Exception as exc:  # noqa: BLE001 - keep serving the old model
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
