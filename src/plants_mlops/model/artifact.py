"""The serving model artifact, owned here and nowhere else (docs/contracts.md).

What it is: an ONNX graph with one input ``image`` (float32 ``[N, 3, S, S]``, normalised)
and two outputs ``logits`` and ``embedding`` (and, in exports since issue 31, a third,
``class_maps``, for ``/explain``: model/explain.py), plus :class:`ServingMeta` (labels, input
size, normalisation, lineage) stored as ``serving_meta.json`` beside ``model.onnx`` and as
the MLflow model's ``metadata``.

What this module does with it, for training, evaluation, the registry, the API, the
monitoring champion and the tests alike:

- :func:`log_serving_model`: log it to an MLflow run as a logged model of the ONNX flavour
  (signature, input example, metadata, ``serving_meta.json``) through an explicit client;
- :func:`download_version` / :func:`load_version`: fetch a registry version and load it;
- :func:`open_session`: one ONNX Runtime session configuration;
- :func:`check_contract`: refuse a graph that breaks the contract;
- :class:`ServingArtifact`: preprocessing + inference + the (temperature-scaled) softmax, once.
"""

from __future__ import annotations

import hashlib
import json
import logging
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from pydantic import BaseModel, ConfigDict, ValidationError, field_validator

from plants_mlops import contracts, imaging
from plants_mlops.errors import UserFacingError
from plants_mlops.model.ood import OUTPUT as OOD_OUTPUT
from plants_mlops.model.ood import OODSummary

ARTIFACT_NAME = "model"  # the MLflow logged model's name (its folder holds the two files)
ONNX_FILE = "model.onnx"
META_FILE = "serving_meta.json"

log = logging.getLogger(__name__)


class ModelLoadError(UserFacingError):
    """A model (file, folder or registry version) cannot serve: the message says why."""


class ServingMeta(BaseModel):
    """What a consumer needs besides the graph, and where the model came from."""

    model_config = ConfigDict(extra="ignore", frozen=True)

    labels: tuple[str, ...]
    image_size: int
    resize_size: int
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    architecture: str = "unknown"
    dataset_fingerprint: str | None = None
    test_metrics: dict[str, float] = {}
    mlflow_run_id: str | None = None
    model_sha256: str | None = None
    created_at: str | None = None
    # Temperature scaling fitted on the validation split (model/calibration.py): the
    # probabilities are softmax(logits / temperature). Artifacts from before calibration
    # have none: 1.0, the plain softmax.
    temperature: float = 1.0
    # The ONNX graph's number format (model/quantize.py): "fp32" or "int8" (static QDQ).
    # Artifacts from before the choice existed are float.
    precision: str = "fp32"
    # Out-of-distribution detection (model/ood.py): the graph's ``ood_score`` output is
    # compared with ``ood.threshold``. Artifacts from before it have none: nothing flagged.
    ood: OODSummary | None = None

    @field_validator("dataset_fingerprint", mode="before")
    @classmethod
    def _fingerprint(cls, value: Any) -> Any:
        if isinstance(value, dict):  # the dataset_fingerprint.json document itself
            value = value.get("fingerprint")
        return None if value is None else str(value)

    @field_validator("test_metrics", mode="before")
    @classmethod
    def _numbers_only(cls, value: Any) -> Any:
        return {
            k: v
            for k, v in (value or {}).items()
            if isinstance(v, int | float) and not isinstance(v, bool)
        }

    @field_validator("temperature", mode="before")
    @classmethod
    def _temperature(cls, value: Any) -> Any:
        if value is None:
            return 1.0
        if not isinstance(value, int | float) or isinstance(value, bool) or not value > 0:
            raise ValueError(f"temperature must be a number > 0, got {value!r}")
        return value

    @classmethod
    def parse(cls, raw: Any) -> ServingMeta:
        try:
            return cls.model_validate(raw)
        except ValidationError as exc:
            problems = "; ".join(
                f"{'.'.join(map(str, e['loc'])) or 'meta'}: {e['msg']}" for e in exc.errors()
            )
            raise ModelLoadError(f"{META_FILE} is incomplete or malformed: {problems}") from None

    def to_dict(self) -> dict[str, Any]:
        return self.model_dump(mode="json")


@dataclass(frozen=True)
class Prediction:
    probabilities: np.ndarray  # float64 [N, C], rows sum to 1 (calibrated: logits / T)
    embeddings: np.ndarray  # float32 [N, D], penultimate layer
    logits: np.ndarray | None = None  # float32 [N, C], before the temperature
    # float64 [N]: distance from the training data (model/ood.py); None: no detector
    ood_scores: np.ndarray | None = None
    # bool [N]: ood_scores above the meta's threshold; None: no detector
    out_of_distribution: np.ndarray | None = None


def softmax(logits: np.ndarray, temperature: float = 1.0) -> np.ndarray:
    """Row-wise softmax of ``logits / temperature`` (float64, numerically stable)."""
    if not temperature > 0:
        raise ValueError(f"temperature must be > 0, got {temperature!r}")
    z = np.asarray(logits, dtype=np.float64) / temperature
    z = z - z.max(axis=1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=1, keepdims=True)


def open_session(model: bytes | str | Path, threads: int | None = None):
    """An ONNX Runtime session: CUDA when this onnxruntime has it, else CPU; ``threads``
    intra-op threads (None: ONNX Runtime's default, all cores). Spinning is off: on 2 cores
    spinning threads fight the decoder and uvicorn threads (docs/serving.md)."""
    import onnxruntime as ort

    opts = ort.SessionOptions()
    if threads:
        opts.intra_op_num_threads = int(threads)
        opts.inter_op_num_threads = 1
        opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    providers = [
        p
        for p in ("CUDAExecutionProvider", "CPUExecutionProvider")
        if p in ort.get_available_providers()
    ]
    source = str(model) if isinstance(model, Path) else model
    try:
        return ort.InferenceSession(source, sess_options=opts, providers=providers)
    except Exception as exc:  # onnxruntime raises its own exception types
        raise ModelLoadError(f"ONNX Runtime cannot load the model: {exc}") from exc


def check_contract(session, meta: ServingMeta) -> int:
    """Run two zero images through ``session`` and check names, shapes and labels against
    the contract (one logit per label of the meta: the task is the model's, not the
    code's); returns the embedding size. Raises :class:`ModelLoadError`."""
    inputs = [i.name for i in session.get_inputs()]
    outputs = [o.name for o in session.get_outputs()]
    wanted = {contracts.ONNX_OUTPUT_LOGITS, contracts.ONNX_OUTPUT_EMBEDDING}
    if inputs != [contracts.ONNX_INPUT] or not wanted <= set(outputs):
        raise ModelLoadError(
            f"model breaks the serving contract: inputs {inputs}, outputs {outputs} "
            f"(want input {contracts.ONNX_INPUT!r}, outputs "
            f"{contracts.ONNX_OUTPUT_LOGITS!r} and {contracts.ONNX_OUTPUT_EMBEDDING!r})"
        )
    if len(meta.labels) < 2 or len(set(meta.labels)) != len(meta.labels):
        raise ModelLoadError(f"model labels {list(meta.labels)}: two or more distinct ones")
    zeros = np.zeros((2, 3, meta.image_size, meta.image_size), np.float32)
    try:
        logits, emb = session.run(
            [contracts.ONNX_OUTPUT_LOGITS, contracts.ONNX_OUTPUT_EMBEDDING],
            {contracts.ONNX_INPUT: zeros},
        )
    except Exception as exc:  # wrong input size, unsupported op...
        raise ModelLoadError(f"model fails on a {meta.image_size}px input: {exc}") from exc
    if logits.shape != (2, len(meta.labels)) or emb.ndim != 2 or not np.isfinite(logits).all():
        raise ModelLoadError(f"model outputs have unexpected shapes {logits.shape}, {emb.shape}")
    if contracts.ONNX_OUTPUT_CLASS_MAPS in outputs:
        (maps,) = session.run([contracts.ONNX_OUTPUT_CLASS_MAPS], {contracts.ONNX_INPUT: zeros})
        if maps.ndim != 4 or maps.shape[:2] != (2, len(meta.labels)):
            raise ModelLoadError(
                f"model output {contracts.ONNX_OUTPUT_CLASS_MAPS!r} has shape {maps.shape}, "
                f"want [N, {len(meta.labels)}, h, w]"
            )
    return int(emb.shape[1])


def check_sha256(onnx: bytes, meta: ServingMeta, version: str | None = None) -> None:
    """Refuse (:class:`ModelLoadError`) graph bytes whose sha256 is not the meta's
    ``model_sha256`` (the served graph as training wrote it: a file replaced or damaged in
    the artifact store). A meta without one (logged before it was recorded) passes, said
    in a log line."""
    what = ONNX_FILE if version is None else f"{ONNX_FILE} of version {version}"
    if meta.model_sha256 is None:
        log.info(
            "%s: its %s records no model_sha256 (an older model): not checked", what, META_FILE
        )
        return
    actual = hashlib.sha256(onnx).hexdigest()
    if actual != meta.model_sha256.lower():
        raise ModelLoadError(
            f"{what} does not match the sha256 its serving meta records: "
            f"{actual} != {meta.model_sha256} (the file was changed after training: "
            "not served)"
        )


class ServingArtifact:
    """A loaded, contract-checked serving model: preprocessing, inference and softmax."""

    def __init__(self, session, meta: ServingMeta) -> None:
        self.session = session
        self.meta = meta
        self.embedding_dim = check_contract(session, meta)
        outputs = {o.name for o in session.get_outputs()}
        if meta.ood is not None and OOD_OUTPUT not in outputs:
            raise ModelLoadError(
                f"{META_FILE} names an OOD threshold but the graph has no {OOD_OUTPUT!r} output"
            )
        self._outputs = [contracts.ONNX_OUTPUT_LOGITS, contracts.ONNX_OUTPUT_EMBEDDING]
        if meta.ood is not None:
            self._outputs.append(OOD_OUTPUT)
        self.has_class_maps = contracts.ONNX_OUTPUT_CLASS_MAPS in outputs

    @classmethod
    def from_bytes(cls, onnx: bytes, meta: ServingMeta | dict, threads: int | None = None):
        meta = meta if isinstance(meta, ServingMeta) else ServingMeta.parse(meta)
        return cls(open_session(onnx, threads), meta)

    @classmethod
    def from_folder(
        cls, folder: Path, threads: int | None = None, version: str | None = None
    ) -> ServingArtifact:
        """A model folder as logged by :func:`log_serving_model` (or ``06_models``), its
        ``model.onnx`` checked against the meta's ``model_sha256`` (:func:`check_sha256`;
        ``version``: the registry version it is, for the message)."""
        folder = Path(folder)
        onnx_path, meta_path = folder / ONNX_FILE, folder / META_FILE
        if not onnx_path.is_file() or not meta_path.is_file():
            present = sorted(p.name for p in folder.iterdir()) if folder.is_dir() else []
            raise ModelLoadError(
                f"model folder lacks {ONNX_FILE} or {META_FILE} (it has {present})"
            )
        try:
            raw = json.loads(meta_path.read_text())
        except json.JSONDecodeError as exc:
            raise ModelLoadError(f"{META_FILE} is not JSON: {exc}") from exc
        meta = ServingMeta.parse(raw)
        onnx = onnx_path.read_bytes()
        check_sha256(onnx, meta, version)
        return cls(open_session(onnx, threads), meta)

    def preprocess(self, img) -> tuple[np.ndarray, Any]:
        """RGB PIL image -> (model input CHW, the fmt-size image monitoring takes stats of)."""
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
        return self._prediction(*self.session.run(self._outputs, {contracts.ONNX_INPUT: batch}))

    def _prediction(self, logits, emb, *ood) -> Prediction:
        """The outputs of ``self._outputs`` (logits, embedding[, ood_score]) as a Prediction."""
        scores = np.asarray(ood[0], dtype=np.float64) if ood else None
        return Prediction(
            softmax(logits, self.meta.temperature),
            np.asarray(emb, dtype=np.float32),
            logits,
            scores,
            None if scores is None else scores > self.meta.ood.threshold,
        )

    def run_with_maps(self, batch: np.ndarray) -> tuple[Prediction, np.ndarray]:
        """:meth:`run` plus the class maps [N, K, h, w] of the same inference
        (:class:`ModelLoadError` for a graph exported without them)."""
        if not self.has_class_maps:
            raise ModelLoadError(
                f"this model has no {contracts.ONNX_OUTPUT_CLASS_MAPS!r} output (exported "
                "before explanations existed): retrain and register it to explain its answers"
            )
        *head, maps = self.session.run(
            [*self._outputs, contracts.ONNX_OUTPUT_CLASS_MAPS], {contracts.ONNX_INPUT: batch}
        )
        prediction = self._prediction(*head)
        return prediction, np.asarray(maps, dtype=np.float32)

    def predict_images(self, images: Sequence, batch_size: int = 32) -> Prediction:
        """Serving preprocessing + inference for RGB PIL images, in batches."""
        probs, embs, logits, scores = [], [], [], []
        for start in range(0, len(images), batch_size):
            out = self.run(
                np.stack([self.preprocess(img)[0] for img in images[start : start + batch_size]])
            )
            probs.append(out.probabilities)
            embs.append(out.embeddings)
            logits.append(out.logits)
            scores.append(out.ood_scores)
        if not probs:
            n_labels = len(self.meta.labels)
            return Prediction(
                np.zeros((0, n_labels)), np.zeros((0, 0), np.float32), np.zeros((0, n_labels))
            )
        ood = np.concatenate(scores) if self.meta.ood is not None else None
        return Prediction(
            np.concatenate(probs),
            np.concatenate(embs),
            np.concatenate(logits),
            ood,
            None if ood is None else ood > self.meta.ood.threshold,
        )


# --- MLflow: log, find, download ------------------------------------------------------


@dataclass(frozen=True)
class LoggedArtifact:
    model_id: str
    model_uri: str  # models:/<model_id>
    run_id: str
    # Where the files are: the source a registry version is created from (MLflow's SQL
    # registry resolves a models:/ source through the process-wide tracking URI).
    artifact_location: str


def log_serving_model(client, run_id: str, onnx: bytes, meta: ServingMeta | dict) -> LoggedArtifact:
    """Log the serving model into run ``run_id`` as an MLflow logged model of the ONNX
    flavour: signature and input example from a real inference, the meta as the MLflow
    model's ``metadata`` and as ``serving_meta.json`` beside ``model.onnx``. ``model.onnx``
    holds ``onnx`` byte for byte and the meta's ``model_sha256`` is their sha256 (recorded
    here when the meta has none; a different one is refused): what loading checks.

    Everything goes through ``client`` (its tracking URI), never through process-wide
    MLflow state, so several stores can be used from one process.
    """
    import mlflow.onnx
    import onnx as onnx_lib
    from mlflow.entities import LoggedModelOutput, LoggedModelStatus
    from mlflow.models import Model, infer_signature

    meta = meta if isinstance(meta, ServingMeta) else ServingMeta.parse(meta)
    if meta.model_sha256 is None:
        meta = meta.model_copy(update={"model_sha256": hashlib.sha256(onnx).hexdigest()})
    check_sha256(onnx, meta)
    artifact = ServingArtifact.from_bytes(onnx, meta, threads=1)  # refuses a broken graph
    example = np.zeros((1, 3, meta.image_size, meta.image_size), np.float32)
    names = [o.name for o in artifact.session.get_outputs()]
    outputs = artifact.session.run(None, {contracts.ONNX_INPUT: example})
    signature = infer_signature(  # logits, embedding and, with a detector, ood_score
        {contracts.ONNX_INPUT: example}, dict(zip(names, outputs, strict=True))
    )
    experiment_id = client.get_run(run_id).info.experiment_id
    logged = client.create_logged_model(
        experiment_id=experiment_id,
        name=ARTIFACT_NAME,
        source_run_id=run_id,
        tags={"architecture": meta.architecture},
    )
    client.log_outputs(run_id=run_id, models=[LoggedModelOutput(logged.model_id, step=0)])
    with tempfile.TemporaryDirectory(prefix="plants-artifact-") as tmp:
        folder = Path(tmp) / ARTIFACT_NAME
        mlflow.onnx.save_model(
            onnx_lib.load_from_string(onnx),
            path=str(folder),
            mlflow_model=Model(
                artifact_path=logged.artifact_location,
                model_uuid=logged.model_id,
                run_id=run_id,
                model_id=logged.model_id,
            ),
            signature=signature,
            input_example={contracts.ONNX_INPUT: example},
            metadata=meta.to_dict(),
            save_as_external_data=False,
            onnx_execution_providers=["CPUExecutionProvider"],
            # Stated, not inferred: inference loads the model in a subprocess (seconds).
            pip_requirements=_requirements(),
        )
        # The bytes given, not onnx's re-serialisation of them: the sha256 is of these.
        (folder / ONNX_FILE).write_bytes(onnx)
        (folder / META_FILE).write_text(json.dumps(meta.to_dict(), indent=2, sort_keys=True))
        client.log_model_artifacts(logged.model_id, str(folder))
    client.finalize_logged_model(logged.model_id, LoggedModelStatus.READY)
    return LoggedArtifact(
        logged.model_id, f"models:/{logged.model_id}", run_id, logged.artifact_location
    )


def _requirements() -> list[str]:
    from importlib.metadata import version

    return [f"{pkg}=={version(pkg)}" for pkg in ("onnx", "onnxruntime", "numpy")]


def download_version(client, name: str, version: str, dest: Path) -> Path:
    """Download registry version ``name/version``'s model folder into ``dest``."""
    from mlflow.store.artifact.artifact_repository_registry import get_artifact_repository

    uri = client.get_model_version_download_uri(name, str(version))
    repo = get_artifact_repository(uri, tracking_uri=client.tracking_uri)
    return Path(repo.download_artifacts("", dst_path=str(dest)))


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


@dataclass
class RegisteredArtifact:
    """A registry version, loaded: the artifact and which version of what it is."""

    artifact: ServingArtifact
    name: str
    version: str
    run_id: str | None

    @property
    def meta(self) -> ServingMeta:
        return self.artifact.meta

    @property
    def embedding_dim(self) -> int:
        return self.artifact.embedding_dim

    def preprocess(self, img) -> tuple[np.ndarray, Any]:
        return self.artifact.preprocess(img)

    def run(self, batch: np.ndarray) -> Prediction:
        return self.artifact.run(batch)

    def run_with_maps(self, batch: np.ndarray) -> tuple[Prediction, np.ndarray]:
        return self.artifact.run_with_maps(batch)


def resolve(client, model_uri: str) -> tuple[str, str, str | None]:
    """(name, version, run_id) that ``models:/NAME@ALIAS`` or ``models:/NAME/V`` names now."""
    name, alias, version = parse_model_uri(model_uri)
    if alias:
        mv = client.get_model_version_by_alias(name, alias)
    else:
        mv = client.get_model_version(name, version)
    return name, str(mv.version), mv.run_id


def load_registered(client, model_uri: str, threads: int | None = None) -> RegisteredArtifact:
    """Resolve and load ``model_uri``; :class:`ModelLoadError` when either fails."""
    try:
        name, version, run_id = resolve(client, model_uri)
    except ModelLoadError:
        raise
    except Exception as exc:  # registry unreachable, alias missing
        raise ModelLoadError(f"cannot resolve {model_uri} on {client.tracking_uri}: {exc}") from exc
    loaded = load_version(client, name, version, threads)
    return RegisteredArtifact(loaded, name, version, run_id or loaded.meta.mlflow_run_id)


def load_version(client, name: str, version: str, threads: int | None = None) -> ServingArtifact:
    """Download and load a registry version; :class:`ModelLoadError` says what is wrong."""
    with tempfile.TemporaryDirectory(prefix="plants-model-") as tmp:
        try:
            folder = download_version(client, name, version, Path(tmp))
        except ModelLoadError:
            raise
        except Exception as exc:  # transport, missing artifacts, registry errors
            raise ModelLoadError(f"cannot download {name} version {version}: {exc}") from exc
        # The session keeps the graph in memory: the temporary folder can go.
        return ServingArtifact.from_folder(folder, threads, version)
