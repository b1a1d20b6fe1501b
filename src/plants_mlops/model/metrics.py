"""Classification metrics and the figures logged with every run (PNG bytes)."""

from __future__ import annotations

import io

import numpy as np
from sklearn import metrics as skm

from plants_mlops.contracts import LABELS


def classification_metrics(y_true: np.ndarray, proba: np.ndarray) -> dict:
    """Accuracy, per-class and macro precision/recall/F1, ROC-AUC and the confusion matrix.

    ``proba`` is [N, len(LABELS)] class probabilities; the positive class for ROC-AUC is
    ``LABELS[1]``. Flat scalar keys (``accuracy``, ``f1_macro``, ...) are what MLflow logs.
    """
    y_true = np.asarray(y_true)
    proba = np.asarray(proba, dtype=np.float64)
    y_pred = proba.argmax(axis=1)
    classes = list(range(len(LABELS)))
    precision, recall, f1, support = skm.precision_recall_fscore_support(
        y_true, y_pred, labels=classes, zero_division=0
    )
    out: dict = {
        "n": int(len(y_true)),
        "accuracy": float(skm.accuracy_score(y_true, y_pred)),
        "precision_macro": float(precision.mean()),
        "recall_macro": float(recall.mean()),
        "f1_macro": float(f1.mean()),
        "roc_auc": _roc_auc(y_true, proba[:, 1]),
    }
    for i, label in enumerate(LABELS):
        out[f"precision_{label}"] = float(precision[i])
        out[f"recall_{label}"] = float(recall[i])
        out[f"f1_{label}"] = float(f1[i])
        out[f"support_{label}"] = int(support[i])
    out["confusion_matrix"] = skm.confusion_matrix(y_true, y_pred, labels=classes).tolist()
    return out


def _roc_auc(y_true: np.ndarray, score: np.ndarray) -> float | None:
    if len(np.unique(y_true)) < 2:
        return None  # undefined with one class present
    return float(skm.roc_auc_score(y_true, score))


def scalar_metrics(metrics: dict, prefix: str = "") -> dict[str, float]:
    """The numeric scalars of ``metrics`` (what ``mlflow.log_metrics`` accepts)."""
    return {
        f"{prefix}{k}": float(v)
        for k, v in metrics.items()
        if isinstance(v, int | float) and not isinstance(v, bool) and v is not None
    }


def _png(fig) -> bytes:
    import matplotlib.pyplot as plt

    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100, bbox_inches="tight")
    plt.close(fig)
    return buf.getvalue()


def confusion_matrix_png(matrix: list[list[int]], title: str = "Confusion matrix") -> bytes:
    import matplotlib

    matrix_np = np.asarray(matrix)
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(4, 4))
    ax.imshow(matrix_np, cmap="Blues")
    ax.set_xticks(range(len(LABELS)), LABELS)
    ax.set_yticks(range(len(LABELS)), LABELS)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title(title)
    for (i, j), v in np.ndenumerate(matrix_np):
        ax.text(
            j,
            i,
            str(v),
            ha="center",
            va="center",
            color="white" if v > matrix_np.max() / 2 else "black",
        )
    return _png(fig)


def curves_png(y_true: np.ndarray, proba: np.ndarray) -> dict[str, bytes]:
    """ROC and precision-recall curves for ``LABELS[1]`` as positive class (empty when the
    split holds a single class, where neither curve is defined)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    if len(np.unique(y_true)) < 2:
        return {}
    score = np.asarray(proba)[:, 1]
    fpr, tpr, _ = skm.roc_curve(y_true, score)
    fig, ax = plt.subplots(figsize=(4, 4))
    ax.plot(fpr, tpr, label=f"AUC = {skm.auc(fpr, tpr):.3f}")
    ax.plot([0, 1], [0, 1], "--", color="grey")
    ax.set_xlabel("false positive rate")
    ax.set_ylabel("true positive rate")
    ax.set_title(f"ROC ({LABELS[1]} positive)")
    ax.legend(loc="lower right")
    roc = _png(fig)
    prec, rec, _ = skm.precision_recall_curve(y_true, score)
    fig, ax = plt.subplots(figsize=(4, 4))
    ax.plot(rec, prec, label=f"AP = {skm.average_precision_score(y_true, score):.3f}")
    ax.set_xlabel("recall")
    ax.set_ylabel("precision")
    ax.set_title(f"Precision-recall ({LABELS[1]} positive)")
    ax.legend(loc="lower left")
    return {"roc_curve.png": roc, "pr_curve.png": _png(fig)}


def expected_calibration_error(y_true: np.ndarray, proba: np.ndarray, n_bins: int = 10) -> float:
    """Expected calibration error of the top-class confidence: the images are put in
    ``n_bins`` equal-width confidence bins and the gap |accuracy - mean confidence| of each
    bin is averaged, weighted by the bin's share of images (0 = perfectly calibrated)."""
    y_true = np.asarray(y_true)
    proba = np.asarray(proba, dtype=np.float64)
    if len(y_true) == 0:
        raise ValueError("expected_calibration_error needs at least one prediction")
    confidence = proba.max(axis=1)
    correct = (proba.argmax(axis=1) == y_true).astype(np.float64)
    # Bin i holds confidences in (i/n, (i+1)/n]; a confidence of exactly 0 joins bin 0.
    bins = np.clip(np.ceil(confidence * n_bins).astype(int) - 1, 0, n_bins - 1)
    ece = 0.0
    for b in range(n_bins):
        mask = bins == b
        if mask.any():
            ece += mask.mean() * abs(correct[mask].mean() - confidence[mask].mean())
    return float(ece)
