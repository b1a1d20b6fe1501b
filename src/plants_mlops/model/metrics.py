"""Classification metrics and the figures logged with every run (PNG bytes)."""

from __future__ import annotations

import io
from collections.abc import Sequence

import numpy as np
from sklearn import metrics as skm


def classification_metrics(y_true: np.ndarray, proba: np.ndarray, labels: Sequence[str]) -> dict:
    """Accuracy, per-class and macro precision/recall/F1, ROC-AUC and the K x K confusion
    matrix.

    ``proba`` is [N, K] class probabilities over ``labels`` (class index = position). With
    two classes ``roc_auc`` is the AUC of ``labels[1]`` as positive class; with more it is
    the one-vs-rest macro AUC over the classes present, and ``roc_auc_<label>`` each class's
    own. Flat scalar keys (``accuracy``, ``f1_macro``, ...) are what MLflow logs.
    """
    y_true = np.asarray(y_true)
    proba = np.asarray(proba, dtype=np.float64)
    labels = list(labels)
    if proba.ndim != 2 or proba.shape[1] != len(labels):
        raise ValueError(f"probabilities of shape {proba.shape} for {len(labels)} labels")
    y_pred = proba.argmax(axis=1)
    classes = list(range(len(labels)))
    precision, recall, f1, support = skm.precision_recall_fscore_support(
        y_true, y_pred, labels=classes, zero_division=0
    )
    per_class_auc = _one_vs_rest_auc(y_true, proba)
    out: dict = {
        "n": int(len(y_true)),
        "accuracy": float(skm.accuracy_score(y_true, y_pred)),
        "precision_macro": float(precision.mean()),
        "recall_macro": float(recall.mean()),
        "f1_macro": float(f1.mean()),
        "roc_auc": _roc_auc(per_class_auc, len(labels)),
    }
    for i, label in enumerate(labels):
        out[f"precision_{label}"] = float(precision[i])
        out[f"recall_{label}"] = float(recall[i])
        out[f"f1_{label}"] = float(f1[i])
        out[f"support_{label}"] = int(support[i])
        if len(labels) > 2 and per_class_auc[i] is not None:
            out[f"roc_auc_{label}"] = per_class_auc[i]
    out["confusion_matrix"] = skm.confusion_matrix(y_true, y_pred, labels=classes).tolist()
    return out


def _one_vs_rest_auc(y_true: np.ndarray, proba: np.ndarray) -> list[float | None]:
    """Each class's ROC-AUC against the rest (None where the split holds no image of the
    class, or only images of it: undefined)."""
    out: list[float | None] = []
    for k in range(proba.shape[1]):
        positive = y_true == k
        if positive.all() or not positive.any():
            out.append(None)
        else:
            out.append(float(skm.roc_auc_score(positive, proba[:, k])))
    return out


def _roc_auc(per_class: list[float | None], n_classes: int) -> float | None:
    if n_classes == 2:
        return per_class[1]  # the AUC of class 1 against class 0
    present = [a for a in per_class if a is not None]
    return float(np.mean(present)) if present else None


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


def confusion_matrix_png(
    matrix: list[list[int]], labels: Sequence[str], title: str = "Confusion matrix"
) -> bytes:
    """The K x K confusion matrix (rows true, columns predicted) as a PNG."""
    import matplotlib

    matrix_np = np.asarray(matrix)
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    k = len(labels)
    side = max(4.0, 0.5 * k + 1.5)
    fig, ax = plt.subplots(figsize=(side, side))
    ax.imshow(matrix_np, cmap="Blues")
    ax.set_xticks(range(k), labels, rotation=45 if k > 4 else 0, ha="right" if k > 4 else "center")
    ax.set_yticks(range(k), labels)
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


def curves_png(y_true: np.ndarray, proba: np.ndarray, labels: Sequence[str]) -> dict[str, bytes]:
    """ROC and precision-recall curves: for two classes those of ``labels[1]`` as positive
    class; for more, one curve per class against the rest on each plot (a class the split
    lacks, or holds alone, is left out). Empty when the split holds a single class."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    y_true = np.asarray(y_true)
    proba = np.asarray(proba)
    if len(np.unique(y_true)) < 2:
        return {}
    labels = list(labels)
    if len(labels) == 2:
        curves = [(labels[1], y_true == 1, proba[:, 1])]
        suffix = f" ({labels[1]} positive)"
    else:
        curves = [
            (label, y_true == k, proba[:, k])
            for k, label in enumerate(labels)
            if (y_true == k).any() and not (y_true == k).all()
        ]
        suffix = " (each class vs the rest)"
    big = len(curves) > 2
    fig, ax = plt.subplots(figsize=(5, 5) if big else (4, 4))
    for label, positive, score in curves:
        fpr, tpr, _ = skm.roc_curve(positive, score)
        name = f"{label}: AUC {skm.auc(fpr, tpr):.3f}" if big else f"AUC = {skm.auc(fpr, tpr):.3f}"
        ax.plot(fpr, tpr, label=name)
    ax.plot([0, 1], [0, 1], "--", color="grey")
    ax.set_xlabel("false positive rate")
    ax.set_ylabel("true positive rate")
    ax.set_title(f"ROC{suffix}")
    ax.legend(loc="lower right", fontsize="small" if big else None)
    roc = _png(fig)
    fig, ax = plt.subplots(figsize=(5, 5) if big else (4, 4))
    for label, positive, score in curves:
        prec, rec, _ = skm.precision_recall_curve(positive, score)
        ap = skm.average_precision_score(positive, score)
        ax.plot(rec, prec, label=f"{label}: AP {ap:.3f}" if big else f"AP = {ap:.3f}")
    ax.set_xlabel("recall")
    ax.set_ylabel("precision")
    ax.set_title(f"Precision-recall{suffix}")
    ax.legend(loc="lower left", fontsize="small" if big else None)
    return {"roc_curve.png": roc, "pr_curve.png": _png(fig)}


def calibration_png(y_true: np.ndarray, proba: np.ndarray, n_bins: int = 10) -> bytes:
    """Reliability diagram of the top-class confidence: per confidence bin, the share of
    correct predictions against the mean confidence (the diagonal is perfect calibration);
    the bars below show how many images each bin holds."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    proba = np.asarray(proba, dtype=np.float64)
    confidence = proba.max(axis=1)
    correct = (proba.argmax(axis=1) == np.asarray(y_true)).astype(np.float64)
    bins = np.clip(np.ceil(confidence * n_bins).astype(int) - 1, 0, n_bins - 1)
    used = [b for b in range(n_bins) if (bins == b).any()]
    fig, (ax, counts) = plt.subplots(
        2, 1, figsize=(4, 5), gridspec_kw={"height_ratios": [3, 1]}, sharex=True
    )
    ax.plot([0, 1], [0, 1], "--", color="grey")
    ax.plot(
        [confidence[bins == b].mean() for b in used],
        [correct[bins == b].mean() for b in used],
        "o-",
        label=f"ECE = {expected_calibration_error(y_true, proba, n_bins):.3f}",
    )
    ax.set_ylabel("share correct")
    ax.set_title("Calibration (top-class confidence)")
    ax.legend(loc="upper left")
    counts.hist(confidence, bins=n_bins, range=(0, 1), color="#8aa")
    counts.set_xlabel("confidence")
    counts.set_ylabel("images")
    return _png(fig)


def evaluation_figures(
    y_true: np.ndarray, proba: np.ndarray, matrix: list[list[int]], labels: Sequence[str]
) -> dict[str, bytes]:
    """The figures of a test-split evaluation, by file name: the confusion matrix, the ROC
    and precision-recall curves (two classes present) and the calibration diagram."""
    figures = {
        "confusion_matrix.png": confusion_matrix_png(matrix, labels, "ONNX model, test split")
    }
    figures.update(curves_png(np.asarray(y_true), np.asarray(proba), labels))
    if len(y_true):
        figures["calibration.png"] = calibration_png(y_true, proba)
    return figures


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
