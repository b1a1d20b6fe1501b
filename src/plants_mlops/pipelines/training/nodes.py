"""Training nodes: fit the classifier, export the ONNX serving model, log the MLflow run.

The MLflow tracking store is checked before the (long) fit, so an unreachable server
fails the run in seconds; the checkpoint and ONNX model are saved by the catalog before
the logging node runs, so a tracking server dying at the end loses no trained model.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import logging
import time
from typing import Any

import numpy as np
import pandas as pd

from plants_mlops.contracts import SPLITS
from plants_mlops.errors import RefusedInput, UserFacingError
from plants_mlops.model import tracking
from plants_mlops.params import TaskParams, TrainingParams, parse
from plants_mlops.summaries import StageSummary

log = logging.getLogger(__name__)

# What a training run records as its configuration (checkpoint + MLflow params).
CONFIG_KEYS = (
    "strategy",
    "probe",
    "architecture",
    "weights",
    "image_size",
    "dropout",
    "bn_momentum",
    "epochs",
    "batch_size",
    "optimizer",
    "scheduler",
    "label_smoothing",
    "early_stopping",
    "augment",
    "calibration",
    "seed",
    "device",
    "max_images_per_split",
)


def _config(params: TrainingParams) -> dict[str, Any]:
    return params.model_dump(mode="json", include=set(CONFIG_KEYS))


def require_valid_data(
    validation_passed: dict,
    dataset_fingerprint: dict,
    dataset_index: pd.DataFrame,
    fmt_images: dict,
) -> pd.DataFrame:
    """Refuse to train on data that is not what validation passed; pass the index through.

    ``validation_passed`` is written by the validation pipeline only when every check
    passed, with the fingerprint of the dataset it checked: taking it as an input orders
    training after validation in a full ``kedro run``. The JSON records alone prove
    nothing about the files, so this node also re-checks, cheaply, what it will read:

    - the fingerprint recomputed from ``dataset_index`` itself must be the validated one
      (a label flipped or a row added in the parquet file changes it);
    - every index row must have its formatted image (a killed formatting run leaves
      index rows without one);
    - every formatted image must decode and hash to the ``fmt_sha256`` formatting recorded
      (a damaged or overwritten file refuses here, with the count and the first keys,
      instead of crashing mid-fit or training on other pixels).
    """
    from plants_mlops.fingerprint import fingerprint_of

    validated = validation_passed.get("dataset_fingerprint")
    current = dataset_fingerprint.get("fingerprint")
    if not validation_passed.get("passed") or validated != current:
        raise RefusedInput(
            f"refusing to train: dataset {str(current)[:12]} has not passed validation "
            f"(last validated: {str(validated)[:12]}); run `kedro run --pipelines validation`"
        )
    image_size = int(dataset_fingerprint.get("image_size") or 0)
    labels = fingerprint_labels(dataset_fingerprint)
    actual = fingerprint_of(dataset_index, image_size, labels)["fingerprint"]
    if actual != validated:
        raise RefusedInput(
            f"refusing to train: dataset_index differs from what validation passed (its "
            f"content hashes to {actual[:12]}, validated {str(validated)[:12]}); run "
            "`kedro run --pipelines formatting,curation,validation`"
        )
    missing = sorted(set(dataset_index["image_key"]) - set(fmt_images))
    if missing:
        raise RefusedInput(
            f"refusing to train: {len(missing)} of {len(dataset_index)} index rows have no "
            f"formatted image (e.g. {', '.join(missing[:3])}): the formatting run was "
            "interrupted or the fmt layer changed; run `kedro run --pipelines formatting "
            "validation`"
        )
    _verify_fmt_images(dataset_index, fmt_images)
    return dataset_index


def _verify_fmt_images(dataset_index: pd.DataFrame, fmt_images: dict) -> None:
    """Read, hash and decode every formatted image the index names (threads: hashing and
    JPEG decoding release the GIL); refuse on the first pass's damaged ones."""
    from concurrent.futures import ThreadPoolExecutor

    from plants_mlops import imaging

    if "fmt_sha256" not in dataset_index.columns:
        raise RefusedInput(
            "refusing to train: dataset_index records no fmt_sha256 (formatted by an older "
            "version); run `kedro run --pipelines formatting,curation,validation`"
        )

    def damaged(item: tuple[str, str]) -> str | None:
        key, expected = item
        loader = fmt_images[key]
        try:  # the fmt store's loaders read bytes with .read(); in-memory ones when called
            data = loader.read() if hasattr(loader, "read") else loader()
        except Exception as exc:  # a vanished or unreadable file
            return f"{key} (unreadable: {type(exc).__name__})"
        if not isinstance(data, bytes) or hashlib.sha256(data).hexdigest() != expected:
            return f"{key} (sha256 differs from formatting's)"
        try:
            imaging.decode_image(data)
        except imaging.ImageDecodeError as exc:
            return f"{key} ({exc.reason})"
        return None

    items = list(zip(dataset_index["image_key"], dataset_index["fmt_sha256"], strict=True))
    with ThreadPoolExecutor(max_workers=4, thread_name_prefix="fmt-check") as pool:
        bad = [b for b in pool.map(damaged, items, chunksize=64) if b]
    if bad:
        raise RefusedInput(
            f"refusing to train: {len(bad)} of {len(items)} formatted images are damaged or "
            f"differ from what formatting wrote (first: {'; '.join(bad[:3])}); run "
            "`kedro run --pipelines formatting,curation,validation`"
        )


def task_views(p: TrainingParams, task: dict[str, Any] | None) -> TrainingParams:
    """``p`` with the extra views of the training images limited to the edits under which
    the task's images keep their label (``task.label_preserving_edits``): no mirror rows
    and no flips when the task leaves the mirror out (a mirrored digit is not the digit),
    no turned rows unless it lists the three quarter turns (a 6 turned is a 9), and every
    ``probe.extra_views`` among them (a one-line error otherwise). ``task`` None: ``p`` as
    it is."""
    if task is None:
        return p
    from plants_mlops.model.behaviour import QUARTER_TURNS

    keeps = parse(TaskParams, task, "task").label_preserving_edits
    if p.probe.turns and not set(QUARTER_TURNS) <= set(keeps):
        log.info("the task's label-preserving edits leave out quarter turns: no turned rows")
        p = p.model_copy(update={"probe": p.probe.model_copy(update={"turns": False})})
    other = [view for view in p.probe.extra_views if view not in keeps]
    if other:
        raise UserFacingError(
            f"params:training.probe.extra_views: {other} are not among the task's "
            f"label_preserving_edits {list(keeps)} (conf/<env>/task.yml): training on them "
            "would teach the label to images the edit changed"
        )
    if "mirror" in keeps or not (p.probe.hflip or p.augment.hflip):
        return p
    log.info("the task's label-preserving edits leave out the mirror: no mirrored training images")
    return p.model_copy(
        update={
            "probe": p.probe.model_copy(update={"hflip": False}),
            "augment": p.augment.model_copy(update={"hflip": False}),
        }
    )


def fingerprint_labels(dataset_fingerprint: dict) -> tuple[str, ...]:
    """The task's labels as the dataset fingerprint recorded them (class order)."""
    labels = dataset_fingerprint.get("labels")
    if not labels:
        raise ValueError(
            "the dataset fingerprint records no labels (written before the task file "
            "existed): run `kedro run --pipelines formatting,curation,validation`"
        )
    return tuple(labels)


def train_model(
    dataset_index: pd.DataFrame,
    fmt_images: dict,
    params: dict[str, Any],
    dataset_fingerprint: dict,
    task: dict[str, Any] | None = None,
) -> tuple[bytes, dict]:
    """Fit on the train split, early-stop on val; returns (checkpoint bytes, history). The
    head's classes are the labels the dataset fingerprint records (the task's, in order);
    with ``task`` (``params:task``; the pipeline passes it) the training images' views are
    the task's (:func:`task_views`)."""
    from plants_mlops.model.data import load_subset
    from plants_mlops.model.export import checkpoint_bytes
    from plants_mlops.model.train import train

    p = task_views(parse(TrainingParams, params, "training"), task)
    if p.mlflow.enabled:
        tracking.ensure_reachable(tracking.tracking_uri(p.mlflow.tracking_uri))
    labels = fingerprint_labels(dataset_fingerprint)
    t0 = time.perf_counter()
    splits = load_subset(dataset_index, fmt_images, labels, ("train", "val"), p)
    resize_size = splits["train"].images[0].width
    result = train(splits, p, labels)
    history = {
        "config": _config(p),
        "labels": list(labels),
        "epochs": result.history,
        "best_epoch": result.best_epoch,
        "epochs_run": len(result.history),
        "device": result.device,
        "train_seconds": result.train_seconds,
        "images_per_second": result.images_per_second,
        "wall_seconds": time.perf_counter() - t0,
        "resize_size": resize_size,
        "mean": list(result.mean),
        "std": list(result.std),
        "split_sizes": {k: len(v) for k, v in splits.items()},
        "val_metrics": result.val_metrics,
        "calibration": result.calibration,
    }
    if result.probe_C is not None:
        history["probe_C"] = result.probe_C
    ckpt = checkpoint_bytes(
        result.model,
        _config(p),
        {
            "resize_size": resize_size,
            "mean": list(result.mean),
            "std": list(result.std),
            "best_epoch": result.best_epoch,
            "temperature": result.calibration["temperature"],
            "labels": list(labels),
        },
    )
    return ckpt, history


def export_serving_model(model_checkpoint: bytes, params: dict[str, Any]) -> bytes:
    """The checkpoint as an ONNX graph with the serving contract's input/outputs (checked:
    a graph that breaks the contract fails here, not in the API)."""
    from plants_mlops.model import artifact
    from plants_mlops.model.export import load_checkpoint, onnx_bytes

    p = parse(TrainingParams, params, "training")
    model, cfg, meta = load_checkpoint(model_checkpoint)
    data = onnx_bytes(model, int(cfg["image_size"]), opset=p.onnx_opset)
    artifact.check_contract(
        artifact.open_session(data, threads=1),
        artifact.ServingMeta(
            labels=tuple(meta["labels"]),
            image_size=int(cfg["image_size"]),
            resize_size=int(meta["resize_size"]),
            mean=tuple(meta["mean"]),
            std=tuple(meta["std"]),
        ),
    )
    return data


def _serving_meta(training_history: dict, **fields):
    """The serving metadata that the training history fixes (preprocessing, temperature)."""
    from plants_mlops.model import artifact

    cfg = training_history["config"]
    return artifact.ServingMeta(
        labels=tuple(training_history["labels"]),
        image_size=int(cfg["image_size"]),
        resize_size=int(training_history["resize_size"]),
        mean=tuple(training_history["mean"]),
        std=tuple(training_history["std"]),
        architecture=cfg["architecture"],
        temperature=(training_history.get("calibration") or {}).get("temperature", 1.0),
        **fields,
    )


def choose_serving_precision(
    float_serving_model: bytes,
    training_history: dict,
    dataset_index: pd.DataFrame,
    fmt_images: dict,
    params: dict[str, Any],
) -> tuple[bytes, dict]:
    """The model the API will serve: the float export, or its static int8 version when that
    keeps the validation macro F1 (and, in ``auto``, is faster here). Returns (serving
    model, the record of the choice: precision, reason, F1 and latency of both)."""
    from plants_mlops.model import quantize
    from plants_mlops.model.data import load_subset

    p = parse(TrainingParams, params, "training")
    policy = p.serving_precision
    meta = _serving_meta(training_history)
    if policy.mode == quantize.FP32:  # nothing to calibrate or validate
        return quantize.choose_precision(float_serving_model, meta, (), (), np.array([]), policy)
    splits = load_subset(dataset_index, fmt_images, meta.labels, ("train", "val"), p)
    train, val = splits["train"], splits["val"]
    rng = np.random.default_rng(p.seed)
    picked = rng.choice(len(train), size=min(policy.calibration_images, len(train)), replace=False)
    calibration = [train.images[int(i)] for i in sorted(picked)]
    model, record = quantize.choose_precision(
        float_serving_model,
        meta,
        calibration,
        val.images,
        val.labels,
        policy,
    )
    log.info("serving precision: %s (%s)", record["precision"], record["reason"])
    return model, record


def attach_ood_detector(
    precision_model: bytes,
    training_history: dict,
    dataset_index: pd.DataFrame,
    fmt_images: dict,
    params: dict[str, Any],
    task: dict[str, Any] | None = None,
) -> tuple[bytes, dict]:
    """Out-of-distribution detection for the model that will serve (``model/ood.py``):
    the train split's embeddings (with the views the probe was fitted on: mirrors, turns,
    ``probe.extra_views``) through that very model fit the
    detector, the val split's scores and (knn) the train images' scores with each image
    left out of the reference choose the threshold (at most ``ood.max_flag_rate`` of each
    flagged), and the detector is appended to the graph as the output
    ``ood_score``. Returns (the serving model, the detector's summary: ``serving_meta.ood``;
    empty when ``ood.enabled`` is false)."""
    from plants_mlops.model import behaviour, ood
    from plants_mlops.model.artifact import ServingArtifact
    from plants_mlops.model.data import load_subset

    p = task_views(parse(TrainingParams, params, "training"), task)
    cfg = p.ood
    if not cfg.enabled:
        return precision_model, {}
    t0 = time.perf_counter()
    model = ServingArtifact.from_bytes(precision_model, _serving_meta(training_history), 1)
    splits = load_subset(dataset_index, fmt_images, model.meta.labels, ("train", "val"), p)
    train, val = splits["train"], splits["val"]
    views = [model.predict_images(train.images).embeddings]
    # the views the probe was fitted on count as in distribution: a turned lawn photo is
    # a lawn photo for a task that lists the turns (docs/behaviour.md)
    edits = (["mirror"] if p.probe.hflip else []) + behaviour.probe_views(p.probe)
    for name in edits:
        edited = behaviour.EditedImages(train.images, behaviour.EDITS[name])
        views.append(model.predict_images(edited).embeddings)
    stacked = np.stack(views, axis=1)
    detector = ood.fit(
        stacked,
        train.labels,
        method=cfg.method,
        rank=cfg.rank,
        k=cfg.k,
        max_reference=cfg.max_reference,
        seed=p.seed,
    )
    val_scores = detector.score(model.predict_images(val.images).embeddings)
    held_out = detector.held_out_scores(stacked)  # None for mahalanobis
    threshold = ood.threshold_for(val_scores, cfg.max_flag_rate, held_out)
    summary = ood.summary(detector, threshold, val_scores, cfg.max_flag_rate, held_out)
    served = ood.attach(precision_model, detector)
    train_rate = (
        ""
        if summary.train_flag_rate is None
        else f" and {100 * summary.train_flag_rate:.1f} % of {summary.train_images} "
        "training images (each left out of the reference)"
    )
    log.info(
        "OOD detection: %s, threshold %.4f flags %.1f %% of %d validation images%s "
        "(limit %.1f %%), %.1f s",
        summary.method,
        threshold,
        100 * summary.val_flag_rate,
        summary.val_images,
        train_rate,
        100 * cfg.max_flag_rate,
        time.perf_counter() - t0,
    )
    return served, summary.model_dump(mode="json")


def log_training_run(
    model_checkpoint: bytes,
    serving_model: bytes,
    training_history: dict,
    dataset_index: pd.DataFrame,
    fmt_images: dict,
    dataset_fingerprint: dict,
    params: dict[str, Any],
    serving_precision: dict | None = None,
    ood_detector: dict | None = None,
) -> tuple[dict, dict, dict]:
    """Test the ONNX model on the test split (serving preprocessing) and log the run:
    params, per-epoch metrics, fingerprint and split sizes, git commit, figures, and the
    model (``model/artifact.py``: ONNX flavour, signature, input example, serving meta).

    ``serving_precision`` is the record of :func:`choose_serving_precision` (none: the
    model is the float export); ``ood_detector`` the summary of :func:`attach_ood_detector`
    (none or empty: no detector).

    Returns (serving_meta, training_report, training_summary).
    """
    from plants_mlops.model import artifact
    from plants_mlops.model.data import load_subset
    from plants_mlops.model.metrics import classification_metrics, scalar_metrics

    p = parse(TrainingParams, params, "training")
    cfg = training_history["config"]
    fingerprint = (dataset_fingerprint or {}).get("fingerprint")
    precision = serving_precision or {"precision": "fp32", "reason": "float export"}
    meta = _serving_meta(
        training_history,
        dataset_fingerprint=fingerprint,
        model_sha256=hashlib.sha256(serving_model).hexdigest(),
        created_at=dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        precision=precision["precision"],
        ood=ood_detector or None,
    )
    test = load_subset(dataset_index, fmt_images, meta.labels, ("test",), p)["test"]
    served = artifact.ServingArtifact.from_bytes(serving_model, meta)
    proba = served.predict_images(test.images).probabilities
    y_test = test.labels
    metrics = classification_metrics(y_test, proba, meta.labels)
    meta = meta.model_copy(update={"test_metrics": scalar_metrics(metrics)})
    split_sizes = {s: int((dataset_index["split"] == s).sum()) for s in SPLITS}
    used_sizes = {**training_history["split_sizes"], "test": int(len(y_test))}
    report = {
        "strategy": cfg.get("strategy", "finetune"),
        "architecture": cfg["architecture"],
        "image_size": cfg["image_size"],
        "labels": list(meta.labels),
        "dataset_fingerprint": fingerprint,
        "split_sizes": split_sizes,
        "split_sizes_used": used_sizes,
        "best_epoch": training_history["best_epoch"],
        "epochs_run": training_history["epochs_run"],
        "probe_C": training_history.get("probe_C"),
        "device": training_history["device"],
        "train_seconds": training_history["train_seconds"],
        "images_per_second": training_history["images_per_second"],
        "model_size_bytes": len(serving_model),
        "serving_precision": precision,
        "ood": meta.ood.model_dump(mode="json") if meta.ood else None,
        "checkpoint_size_bytes": len(model_checkpoint),
        "val_metrics": scalar_metrics(training_history.get("val_metrics") or {}),
        "calibration": scalar_metrics(training_history.get("calibration") or {}),
        "test_metrics": meta.test_metrics,
        "confusion_matrix": metrics["confusion_matrix"],
        "git_commit": tracking.git_commit(),
        "mlflow_run_id": None,
        "model_id": None,
        "model_uri": None,
        "artifact_location": None,
    }
    if p.mlflow.enabled:
        report.update(
            _log_run(
                p,
                meta,
                serving_model,
                training_history,
                report,
                dataset_fingerprint,
                (y_test, proba, metrics),
            )
        )
        meta = meta.model_copy(update={"mlflow_run_id": report["mlflow_run_id"]})
        log.info(
            "MLflow run %s: test f1_macro=%.4f accuracy=%.4f, model %s",
            report["mlflow_run_id"],
            metrics["f1_macro"],
            metrics["accuracy"],
            report["model_uri"],
        )
    summary = StageSummary(
        stage="training",
        counts={f"{k}_images": v for k, v in used_sizes.items()},
        dataset_fingerprint=fingerprint,
        mlflow_run_id=report["mlflow_run_id"],
        metrics={f"test_{k}": v for k, v in meta.test_metrics.items()},
        outputs=["serving_model", "model_checkpoint", "training_report"],
    )
    return meta.to_dict(), report, summary.to_json()


def _log_run(
    p: TrainingParams,
    meta,
    serving_model: bytes,
    history: dict,
    report: dict,
    fingerprint_doc: dict | None,
    tested: tuple[np.ndarray, np.ndarray, dict[str, Any]],
) -> dict[str, Any]:
    """Everything about the run into MLflow through one explicit client.

    ``tested`` is (labels, probabilities, metrics) of the test split, computed once by the caller.
    """
    from plants_mlops.model import artifact
    from plants_mlops.model.metrics import confusion_matrix_png, curves_png, scalar_metrics

    y_test, proba, test = tested
    cl = tracking.client(tracking.tracking_uri(p.mlflow.tracking_uri))
    cfg = history["config"]
    with tracking.open_run(cl, p.mlflow.experiment, run_name=p.mlflow.run_name) as run:
        meta = meta.model_copy(update={"mlflow_run_id": run.run_id})
        run.log_params(_flat_params(cfg))
        run.log_params({f"split_size_{k}": v for k, v in report["split_sizes"].items()})
        run.set_tags(
            {
                "dataset_fingerprint": meta.dataset_fingerprint or "unknown",
                "git_commit": report["git_commit"] or "unknown",
                "architecture": cfg["architecture"],
                "training_strategy": cfg.get("strategy", "finetune"),
                "device": history["device"],
                "serving_precision": meta.precision,
                "plants.stage": "training",
            }
        )
        precision = report["serving_precision"]
        run.log_metrics(
            {
                f"serving/{k}": float(v)
                for k, v in precision.items()
                if isinstance(v, int | float) and not isinstance(v, bool)
            }
        )
        run.log_dict(precision, "serving/precision.json")
        for row in history["epochs"]:
            run.log_metrics(
                {f"epoch/{k}": float(v) for k, v in row.items() if k != "epoch"},
                step=int(row["epoch"]),
            )
        # Grouped by prefix ("group/name"): the MLflow UI draws one section of charts per group.
        run.log_metrics(scalar_metrics(test, "test/"))
        run.log_metrics(scalar_metrics(history.get("val_metrics") or {}, "best_val/"))
        run.log_metrics(scalar_metrics(history.get("calibration") or {}, "calibration/"))
        run.log_metrics(
            {
                "training/model_size_mb": len(serving_model) / 1e6,
                "training/train_seconds": history["train_seconds"],
                "training/train_images_per_second": history["images_per_second"],
                "training/best_epoch": history["best_epoch"],
            }
        )
        run.log_dict(fingerprint_doc or {}, "dataset/dataset_fingerprint.json")
        run.log_dict(history, "training/history.json")
        run.log_png(
            confusion_matrix_png(test["confusion_matrix"], meta.labels, "Test confusion matrix"),
            "figures/confusion_matrix.png",
        )
        for name, png in curves_png(y_test, proba, meta.labels).items():
            run.log_png(png, f"figures/{name}")
        logged = artifact.log_serving_model(cl, run.run_id, serving_model, meta)
        run.log_dict(meta.to_dict(), f"serving/{artifact.META_FILE}")
    return {
        "mlflow_run_id": logged.run_id,
        "model_id": logged.model_id,
        "model_uri": logged.model_uri,
        "artifact_location": logged.artifact_location,
        "tracking_uri": cl.tracking_uri,
        "experiment_id": run.experiment_id,
    }


def _flat_params(cfg: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in cfg.items():
        if isinstance(v, dict):
            out.update(_flat_params(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = "null" if v is None else v
    return out
