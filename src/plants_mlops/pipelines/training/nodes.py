"""Training nodes: fit the classifier, export the ONNX serving model, log the MLflow run.

The MLflow tracking store is checked before the (long) fit, so an unreachable server
fails the run in seconds; the checkpoint and ONNX model are saved by the catalog before
the logging node runs, so a tracking server dying at the end loses no trained model.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import logging
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from plants_mlops.contracts import LABELS, ONNX_INPUT, SPLITS
from plants_mlops.model import tracking

log = logging.getLogger(__name__)

# What a training run records as its configuration (checkpoint + MLflow params).
CONFIG_KEYS = (
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
    "seed",
    "device",
    "max_images_per_split",
)


def _config(params: dict[str, Any]) -> dict[str, Any]:
    return {k: params.get(k) for k in CONFIG_KEYS}


def require_valid_data(
    validation_passed: dict, dataset_fingerprint: dict, dataset_index: pd.DataFrame
) -> pd.DataFrame:
    """Refuse to train on a dataset that has not passed validation; pass the index through.

    ``validation_passed`` is written by the validation pipeline only when every check
    passed, with the fingerprint of the dataset it checked: taking it as an input orders
    training after validation in a full ``kedro run``, and ``--pipelines training`` alone
    refuses data that changed (or failed) since the last successful validation.
    """
    validated = validation_passed.get("dataset_fingerprint")
    current = dataset_fingerprint.get("fingerprint")
    if not validation_passed.get("passed") or validated != current:
        raise ValueError(
            f"refusing to train: dataset {str(current)[:12]} has not passed validation "
            f"(last validated: {str(validated)[:12]}); run `kedro run --pipelines validation`"
        )
    return dataset_index


def train_model(
    dataset_index: pd.DataFrame, fmt_images: dict, params: dict[str, Any]
) -> tuple[bytes, dict]:
    """Fit on the train split, early-stop on val; returns (checkpoint bytes, history)."""
    from plants_mlops.model.data import load_splits
    from plants_mlops.model.export import checkpoint_bytes
    from plants_mlops.model.train import train

    if params.get("mlflow", {}).get("enabled", True):
        tracking.ensure_reachable(
            tracking.tracking_uri(params.get("mlflow", {}).get("tracking_uri"))
        )
    t0 = time.perf_counter()
    splits = load_splits(
        dataset_index,
        fmt_images,
        ("train", "val"),
        max_per_split=params.get("max_images_per_split"),
        seed=int(params.get("seed", 42)),
    )
    resize_size = splits["train"].images[0].width
    result = train(splits, params)
    history = {
        "config": _config(params),
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
    }
    ckpt = checkpoint_bytes(
        result.model,
        _config(params),
        {
            "resize_size": resize_size,
            "mean": list(result.mean),
            "std": list(result.std),
            "best_epoch": result.best_epoch,
        },
    )
    return ckpt, history


def export_serving_model(model_checkpoint: bytes, params: dict[str, Any]) -> bytes:
    """The checkpoint as an ONNX graph with the serving contract's input/outputs."""
    from plants_mlops.model.export import (
        check_serving_model,
        load_checkpoint,
        onnx_bytes,
        onnx_session,
    )

    model, cfg, _ = load_checkpoint(model_checkpoint)
    data = onnx_bytes(model, int(cfg["image_size"]), opset=int(params.get("onnx_opset", 17)))
    check_serving_model(onnx_session(data), int(cfg["image_size"]))
    return data


def _test_predictions(
    serving_model: bytes, meta: dict, dataset_index: pd.DataFrame, fmt_images: dict, params: dict
) -> tuple[np.ndarray, np.ndarray]:
    from plants_mlops.model.data import load_splits
    from plants_mlops.model.export import onnx_predict_proba, onnx_session

    test = load_splits(
        dataset_index,
        fmt_images,
        ("test",),
        max_per_split=params.get("max_images_per_split"),
        seed=int(params.get("seed", 42)),
    )["test"]
    return test.labels, onnx_predict_proba(onnx_session(serving_model), test.images, meta)


def log_training_run(
    model_checkpoint: bytes,
    serving_model: bytes,
    training_history: dict,
    dataset_index: pd.DataFrame,
    fmt_images: dict,
    dataset_fingerprint: dict,
    params: dict[str, Any],
) -> tuple[dict, dict]:
    """Test the ONNX model on the test split (serving preprocessing) and log the run:
    params, per-epoch metrics, fingerprint and split sizes, git commit, figures, and the
    model (ONNX flavour, signature + input example, ``serving_meta.json``).

    Returns (serving_meta, training_summary).
    """
    from plants_mlops.model.metrics import (
        classification_metrics,
        confusion_matrix_png,
        curves_png,
        scalar_metrics,
    )

    cfg = training_history["config"]
    fingerprint = (dataset_fingerprint or {}).get("fingerprint")
    meta = {
        "labels": list(LABELS),
        "image_size": int(cfg["image_size"]),
        "resize_size": int(training_history["resize_size"]),
        "mean": training_history["mean"],
        "std": training_history["std"],
        "architecture": cfg["architecture"],
        "dataset_fingerprint": fingerprint,
        "model_sha256": hashlib.sha256(serving_model).hexdigest(),
        "created_at": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
    }
    y_test, proba = _test_predictions(serving_model, meta, dataset_index, fmt_images, params)
    test = classification_metrics(y_test, proba)
    meta["test_metrics"] = scalar_metrics(test)
    split_sizes = {s: int((dataset_index["split"] == s).sum()) for s in SPLITS}
    used_sizes = {**training_history["split_sizes"], "test": int(len(y_test))}
    summary = {
        "architecture": cfg["architecture"],
        "image_size": cfg["image_size"],
        "dataset_fingerprint": fingerprint,
        "split_sizes": split_sizes,
        "split_sizes_used": used_sizes,
        "best_epoch": training_history["best_epoch"],
        "epochs_run": training_history["epochs_run"],
        "device": training_history["device"],
        "train_seconds": training_history["train_seconds"],
        "images_per_second": training_history["images_per_second"],
        "model_size_bytes": len(serving_model),
        "checkpoint_size_bytes": len(model_checkpoint),
        "val_metrics": scalar_metrics(training_history.get("val_metrics") or {}),
        "test_metrics": meta["test_metrics"],
        "confusion_matrix": test["confusion_matrix"],
        "git_commit": tracking.git_commit(),
        "mlflow_run_id": None,
        "model_uri": None,
    }
    mlflow_cfg = params.get("mlflow") or {}
    if not mlflow_cfg.get("enabled", True):
        meta["mlflow_run_id"] = None
        return meta, summary

    import mlflow
    import onnx
    from mlflow.models import infer_signature

    uri = tracking.configure(mlflow_cfg.get("tracking_uri"))
    with tracking.run(
        mlflow_cfg.get("experiment", "plants-classifier"), uri, run_name=mlflow_cfg.get("run_name")
    ) as run:
        run_id = run.info.run_id
        meta["mlflow_run_id"] = run_id
        mlflow.log_params(_flat_params(cfg))
        mlflow.log_params({f"split_size_{k}": v for k, v in split_sizes.items()})
        mlflow.set_tags(
            {
                "dataset_fingerprint": fingerprint or "unknown",
                "git_commit": summary["git_commit"] or "unknown",
                "architecture": cfg["architecture"],
                "device": training_history["device"],
                "plants.stage": "training",
            }
        )
        for row in training_history["epochs"]:
            mlflow.log_metrics(
                {k: float(v) for k, v in row.items() if k != "epoch"}, step=int(row["epoch"])
            )
        mlflow.log_metrics(scalar_metrics(test, "test_"))
        mlflow.log_metrics(scalar_metrics(training_history.get("val_metrics") or {}, "best_val_"))
        mlflow.log_metrics(
            {
                "model_size_mb": len(serving_model) / 1e6,
                "train_seconds": training_history["train_seconds"],
                "train_images_per_second": training_history["images_per_second"],
                "best_epoch": training_history["best_epoch"],
            }
        )
        mlflow.log_dict(dataset_fingerprint or {}, "dataset/dataset_fingerprint.json")
        mlflow.log_dict(training_history, "training/history.json")
        mlflow.log_image(
            _png_image(confusion_matrix_png(test["confusion_matrix"], "Test confusion matrix")),
            "figures/confusion_matrix.png",
        )
        for name, png in curves_png(y_test, proba).items():
            mlflow.log_image(_png_image(png), f"figures/{name}")

        example = np.zeros((1, 3, meta["image_size"], meta["image_size"]), dtype=np.float32)
        from plants_mlops.model.export import onnx_session

        outputs = onnx_session(serving_model).run(None, {ONNX_INPUT: example})
        signature = infer_signature(
            {ONNX_INPUT: example}, {"logits": outputs[0], "embedding": outputs[1]}
        )
        info = mlflow.onnx.log_model(
            onnx.load_from_string(serving_model),
            name="model",
            signature=signature,
            input_example={ONNX_INPUT: example},
            metadata=meta,
            save_as_external_data=False,
            onnx_execution_providers=["CPUExecutionProvider"],
        )
        with tempfile.TemporaryDirectory() as tmp:
            meta_path = Path(tmp) / "serving_meta.json"
            meta_path.write_text(json.dumps(meta, indent=2, sort_keys=True))
            mlflow.MlflowClient().log_model_artifact(info.model_id, str(meta_path))
            mlflow.log_artifact(str(meta_path), "serving")
    summary.update(
        mlflow_run_id=run_id,
        model_uri=info.model_uri,
        model_id=info.model_id,
        tracking_uri=uri,
        experiment_id=run.info.experiment_id,
    )
    log.info(
        "MLflow run %s: test f1_macro=%.4f accuracy=%.4f, model %s",
        run_id,
        test["f1_macro"],
        test["accuracy"],
        info.model_uri,
    )
    return meta, summary


def _png_image(png: bytes):
    import io

    from PIL import Image

    return Image.open(io.BytesIO(png))


def _flat_params(cfg: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in cfg.items():
        if isinstance(v, dict):
            out.update(_flat_params(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = "null" if v is None else v
    return out
