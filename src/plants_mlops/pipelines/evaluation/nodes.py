"""Evaluation nodes: the new ONNX serving model, two baselines and the current champion,
all on the same test split, through the serving preprocessing."""

from __future__ import annotations

import logging
from typing import Any

import numpy as np
import pandas as pd

from plants_mlops.contracts import ALIAS_CHAMPION
from plants_mlops.model import tracking
from plants_mlops.params import Baselines, EvaluationParams, EvaluationSubset, parse
from plants_mlops.summaries import StageSummary

log = logging.getLogger(__name__)


def _splits(dataset_index, fmt_images, labels, names, subset: EvaluationSubset):
    from plants_mlops.model.data import load_subset

    return load_subset(dataset_index, fmt_images, labels, names, subset)


def evaluate_candidate(
    serving_model: bytes,
    serving_meta: dict,
    dataset_index: pd.DataFrame,
    fmt_images: dict,
    subset: dict[str, Any],
) -> dict:
    """Metrics of the exported ONNX model on the test split (its served, i.e. calibrated,
    probabilities), with the expected calibration error before (plain softmax) and after
    the model's temperature: ``ece_uncalibrated``, ``ece`` and ``temperature``."""
    from plants_mlops.model.artifact import ServingArtifact, softmax
    from plants_mlops.model.metrics import classification_metrics, expected_calibration_error

    subset = parse(EvaluationSubset, subset, "evaluation.subset")
    model = ServingArtifact.from_bytes(serving_model, serving_meta)
    labels = model.meta.labels
    test = _splits(dataset_index, fmt_images, labels, ("test",), subset)["test"]
    pred = model.predict_images(test.images)
    out = classification_metrics(test.labels, pred.probabilities, labels)
    out["labels"] = list(labels)
    out["temperature"] = float(model.meta.temperature)
    out["ece"] = expected_calibration_error(test.labels, pred.probabilities)
    out["ece_uncalibrated"] = expected_calibration_error(test.labels, softmax(pred.logits))
    # what the report's figures are drawn from (not part of the JSON report)
    out["predictions"] = {
        "labels": np.asarray(test.labels).tolist(),
        "probabilities": np.asarray(pred.probabilities, dtype=np.float64).tolist(),
    }
    return out


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
    serving_meta: dict,
    dataset_index: pd.DataFrame,
    fmt_images: dict,
    params: dict[str, Any],
    subset: dict[str, Any],
) -> dict:
    """Majority class (of the train split) and a colour-histogram logistic regression
    (multinomial for more than two classes), over the model's labels."""
    params = parse(Baselines, params, "evaluation.baselines")
    subset = parse(EvaluationSubset, subset, "evaluation.subset")
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    from plants_mlops.model.metrics import classification_metrics

    labels = tuple(serving_meta["labels"])
    splits = _splits(dataset_index, fmt_images, labels, ("train", "test"), subset)
    train, test = splits["train"], splits["test"]
    counts = np.bincount(train.labels, minlength=len(labels))
    majority = np.zeros((len(test), len(labels)))
    majority[:, int(counts.argmax())] = 1.0
    bins = params.histogram_bins
    clf = make_pipeline(StandardScaler(), LogisticRegression(C=params.C, max_iter=2000))
    clf.fit(colour_histogram(train.images, bins), train.labels)
    proba = class_probabilities(clf, colour_histogram(test.images, bins), len(labels))
    return {
        "majority_class": {
            "label": labels[int(counts.argmax())],
            **classification_metrics(test.labels, majority, labels),
        },
        "colour_histogram_logreg": {
            "bins": bins,
            **classification_metrics(test.labels, proba, labels),
        },
    }


def class_probabilities(clf, features: np.ndarray, n_classes: int) -> np.ndarray:
    """``clf.predict_proba`` as [N, n_classes] columns in class order: a class the training
    split lacked (the fitted model never saw it) gets probability 0."""
    proba = np.zeros((len(features), n_classes))
    proba[:, clf.classes_] = clf.predict_proba(features)
    return proba


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
    p = parse(EvaluationParams, params, "evaluation")
    subset = parse(EvaluationSubset, subset, "evaluation.subset")
    if not p.compare_champion:
        return {"version": None, "skipped": "compare_champion is false"}
    from plants_mlops.model import artifact, registry
    from plants_mlops.model.metrics import classification_metrics

    name = p.model_name
    cl = tracking.client(tracking.tracking_uri(p.mlflow.tracking_uri))
    version = registry.alias_version(cl, ALIAS_CHAMPION, name)
    if version is None:
        return {"version": None}
    mv = cl.get_model_version(name, version)
    out: dict[str, Any] = {"version": version, "run_id": mv.run_id}
    if mv.run_id and mv.run_id == serving_meta.get("mlflow_run_id"):
        out["note"] = "the champion is this very run's model"
    labels = tuple(serving_meta["labels"])
    try:
        champion = artifact.load_version(cl, name, version)
        if tuple(champion.meta.labels) != labels:
            raise ValueError(
                f"the champion answers {list(champion.meta.labels)}, this model "
                f"{list(labels)}: not comparable on one test split"
            )
        test = _splits(dataset_index, fmt_images, labels, ("test",), subset)["test"]
        proba = champion.predict_images(test.images).probabilities
    except Exception as exc:  # a broken champion must not block evaluating the candidate
        log.warning("champion version %s could not be evaluated: %s", version, exc)
        out["error"] = f"{type(exc).__name__}: {exc}"
        return out
    out["architecture"] = champion.meta.architecture
    out.update(classification_metrics(test.labels, proba, labels))
    return out


def compile_report(
    candidate: dict, baselines: dict, champion: dict, training_report: dict, params: dict[str, Any]
) -> tuple[dict, str, dict]:
    """One JSON report (also logged to the training run: ``eval_*`` metrics + the JSON), its
    HTML page and the stage summary."""
    from plants_mlops.model.metrics import evaluation_figures, scalar_metrics

    p = parse(EvaluationParams, params, "evaluation")
    predictions = candidate.get("predictions") or {"labels": [], "probabilities": []}
    candidate = {k: v for k, v in candidate.items() if k != "predictions"}
    figures = evaluation_figures(
        np.asarray(predictions["labels"], dtype=np.int64),
        np.asarray(predictions["probabilities"], dtype=np.float64).reshape(
            len(predictions["labels"]), -1
        ),
        candidate["confusion_matrix"],
        candidate["labels"],
    )
    best_baseline = max(baselines.values(), key=lambda m: m["f1_macro"])
    run_id = training_report.get("mlflow_run_id")
    report = {
        "mlflow_run_id": run_id,
        "dataset_fingerprint": training_report.get("dataset_fingerprint"),
        "test_size": candidate["n"],
        "model": candidate,
        "baselines": baselines,
        "best_baseline_f1_macro": best_baseline["f1_macro"],
        "champion": champion,
        "metrics": {
            k: candidate[k]
            for k in ("accuracy", "precision_macro", "recall_macro", "f1_macro", "roc_auc")
        },
        "calibration": {k: candidate.get(k) for k in ("temperature", "ece_uncalibrated", "ece")},
    }
    if run_id and p.mlflow.log_to_run:
        cl = tracking.client(tracking.tracking_uri(p.mlflow.tracking_uri))
        with tracking.open_run(cl, p.model_name, run_id=run_id) as run:
            run.log_metrics(scalar_metrics(candidate, "eval/"))
            for name, m in baselines.items():
                run.log_metrics(scalar_metrics(m, f"baseline_{name}/"))
            if champion.get("f1_macro") is not None:
                run.log_metrics(scalar_metrics(champion, "champion/"))
            run.log_dict(report, "evaluation/evaluation_report.json")
            for name, png in figures.items():
                run.log_png(png, f"figures/eval_{name}")
    log.info(
        "evaluation: model f1=%.4f, best baseline f1=%.4f, champion %s",
        candidate["f1_macro"],
        best_baseline["f1_macro"],
        f"v{champion['version']} f1={champion['f1_macro']:.4f}"
        if champion.get("f1_macro") is not None
        else champion.get("version") or "none",
    )
    metrics = {f"test_{k}": float(v) for k, v in report["metrics"].items()}
    metrics["best_baseline_f1_macro"] = float(best_baseline["f1_macro"])
    for key, value in report["calibration"].items():
        if value is not None:
            metrics[f"test_{key}"] = float(value)
    if champion.get("f1_macro") is not None:
        metrics["champion_f1_macro"] = float(champion["f1_macro"])
    summary = StageSummary(
        stage="evaluation",
        counts={"test_images": int(candidate["n"])},
        dataset_fingerprint=report["dataset_fingerprint"],
        mlflow_run_id=run_id,
        champion_version=champion.get("version"),
        metrics=metrics,
        outputs=["evaluation_report", "evaluation_report_html"],
    )
    from plants_mlops.reports import evaluation_html

    return report, evaluation_html(report, figures), summary.to_json()
