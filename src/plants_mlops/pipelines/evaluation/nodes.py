"""Evaluation nodes: the new ONNX serving model, two baselines and the current champion,
all on the same test split, through the serving preprocessing."""

from __future__ import annotations

import logging
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from plants_mlops.contracts import ALIAS_CHAMPION, LABELS, REGISTERED_MODEL_NAME
from plants_mlops.model import tracking

log = logging.getLogger(__name__)


def _splits(dataset_index, fmt_images, names, subset: dict[str, Any]):
    from plants_mlops.model.data import load_splits

    return load_splits(
        dataset_index,
        fmt_images,
        names,
        max_per_split=subset.get("max_images_per_split"),
        seed=int(subset.get("seed") or 42),
    )


def evaluate_candidate(
    serving_model: bytes,
    serving_meta: dict,
    dataset_index: pd.DataFrame,
    fmt_images: dict,
    subset: dict[str, Any],
) -> dict:
    """Metrics of the exported ONNX model on the test split."""
    from plants_mlops.model.export import onnx_predict_proba, onnx_session
    from plants_mlops.model.metrics import classification_metrics

    test = _splits(dataset_index, fmt_images, ("test",), subset)["test"]
    proba = onnx_predict_proba(onnx_session(serving_model), test.images, serving_meta)
    return classification_metrics(test.labels, proba)


def colour_histogram(images, bins: int) -> np.ndarray:
    """Normalised joint RGB histogram (bins^3 features) per image."""
    feats = []
    for img in images:
        arr = np.asarray(img, dtype=np.uint8).reshape(-1, 3) // (256 // bins)
        idx = (arr[:, 0].astype(np.int64) * bins + arr[:, 1]) * bins + arr[:, 2]
        hist = np.bincount(idx, minlength=bins**3).astype(np.float64)
        feats.append(hist / hist.sum())
    return np.stack(feats)


def evaluate_baselines(
    dataset_index: pd.DataFrame, fmt_images: dict, params: dict[str, Any], subset: dict[str, Any]
) -> dict:
    """Majority class (of the train split) and a colour-histogram logistic regression."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    from plants_mlops.model.metrics import classification_metrics

    splits = _splits(dataset_index, fmt_images, ("train", "test"), subset)
    train, test = splits["train"], splits["test"]
    counts = np.bincount(train.labels, minlength=len(LABELS))
    majority = np.zeros((len(test), len(LABELS)))
    majority[:, int(counts.argmax())] = 1.0
    bins = int(params.get("histogram_bins", 4))
    clf = make_pipeline(
        StandardScaler(), LogisticRegression(C=float(params.get("C", 1.0)), max_iter=2000)
    )
    clf.fit(colour_histogram(train.images, bins), train.labels)
    proba = clf.predict_proba(colour_histogram(test.images, bins))
    return {
        "majority_class": {
            "label": LABELS[int(counts.argmax())],
            **classification_metrics(test.labels, majority),
        },
        "colour_histogram_logreg": {"bins": bins, **classification_metrics(test.labels, proba)},
    }


def evaluate_champion(
    serving_meta: dict,
    dataset_index: pd.DataFrame,
    fmt_images: dict,
    params: dict[str, Any],
    subset: dict[str, Any],
) -> dict:
    """The registry's current champion on the same test split.

    ``{"version": None}`` when there is no champion yet; ``{"error": ...}`` when the champion
    cannot be loaded (the gate then skips the comparison and says so). An unreachable
    tracking server is an error: no fair gate without it.
    """
    if not params.get("compare_champion", True):
        return {"version": None, "skipped": "compare_champion is false"}
    from plants_mlops.model import registry
    from plants_mlops.model.export import onnx_predict_proba
    from plants_mlops.model.metrics import classification_metrics

    name = params.get("model_name") or REGISTERED_MODEL_NAME
    cl = registry.client((params.get("mlflow") or {}).get("tracking_uri"))
    version = registry.alias_version(cl, ALIAS_CHAMPION, name)
    if version is None:
        return {"version": None}
    mv = cl.get_model_version(name, version)
    out: dict[str, Any] = {"version": version, "run_id": mv.run_id}
    if mv.run_id and mv.run_id == serving_meta.get("mlflow_run_id"):
        out["note"] = "the champion is this very run's model"
    try:
        with tempfile.TemporaryDirectory(prefix="plants-champion-") as tmp:
            session, meta = registry.load_serving_model(
                registry.download_model(cl, version, Path(tmp), name)
            )
            test = _splits(dataset_index, fmt_images, ("test",), subset)["test"]
            proba = onnx_predict_proba(session, test.images, meta)
    except Exception as exc:  # a broken champion must not block evaluating the candidate
        log.warning("champion version %s could not be evaluated: %s", version, exc)
        out["error"] = f"{type(exc).__name__}: {exc}"
        return out
    out["architecture"] = meta.get("architecture")
    out.update(classification_metrics(test.labels, proba))
    return out


def compile_report(
    candidate: dict, baselines: dict, champion: dict, training_summary: dict, params: dict[str, Any]
) -> dict:
    """One JSON report; also logged to the training run (``eval_*`` metrics + the JSON)."""
    from plants_mlops.model.metrics import confusion_matrix_png, scalar_metrics

    best_baseline = max(baselines.values(), key=lambda m: m["f1_macro"])
    report = {
        "mlflow_run_id": training_summary.get("mlflow_run_id"),
        "dataset_fingerprint": training_summary.get("dataset_fingerprint"),
        "test_size": candidate["n"],
        "model": candidate,
        "baselines": baselines,
        "best_baseline_f1_macro": best_baseline["f1_macro"],
        "champion": champion,
        "metrics": {
            k: candidate[k]
            for k in ("accuracy", "precision_macro", "recall_macro", "f1_macro", "roc_auc")
        },
    }
    run_id = training_summary.get("mlflow_run_id")
    if run_id and (params.get("mlflow") or {}).get("log_to_run", True):
        import mlflow

        uri = tracking.configure((params.get("mlflow") or {}).get("tracking_uri"))
        with tracking.run("plants-classifier", uri, run_id=run_id):
            mlflow.log_metrics(scalar_metrics(candidate, "eval_"))
            for name, m in baselines.items():
                mlflow.log_metrics(scalar_metrics(m, f"baseline_{name}_"))
            if champion.get("f1_macro") is not None:
                mlflow.log_metrics(scalar_metrics(champion, "champion_"))
            mlflow.log_dict(report, "evaluation/evaluation_report.json")
            from plants_mlops.pipelines.training.nodes import _png_image

            mlflow.log_image(
                _png_image(
                    confusion_matrix_png(candidate["confusion_matrix"], "ONNX model, test split")
                ),
                "figures/eval_confusion_matrix.png",
            )
    log.info(
        "evaluation: model f1=%.4f, best baseline f1=%.4f, champion %s",
        candidate["f1_macro"],
        best_baseline["f1_macro"],
        f"v{champion['version']} f1={champion['f1_macro']:.4f}"
        if champion.get("f1_macro") is not None
        else champion.get("version") or "none",
    )
    return report
