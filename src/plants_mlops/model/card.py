"""The model card of a registered version: what it is for, what it was trained on, how well
it does (with confidence intervals and per slice), how it behaves, where it came from.

:func:`build` gathers the figures from what the pipeline already wrote (training and
evaluation reports, the registry's decision and the version's tags, the serving meta, the
dataset fingerprint and index, the curation decisions the formatting report applied and
those in force now, the behaviour report) plus the test-split predictions it is given;
:func:`markdown` and :func:`html` render the same sections. Whatever a version lacks (no
behaviour step, no OOD detector, no source URLs in the index) is said in the card, never
left out silently.
"""

from __future__ import annotations

import html as html_lib
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlparse

import numpy as np
import pandas as pd

from plants_mlops import reports


@dataclass
class Section:
    title: str
    text: list[str] = field(default_factory=list)
    tables: list[tuple[list[str], list[list[Any]]]] = field(default_factory=list)


@dataclass
class Card:
    title: str
    sections: list[Section]
    figures: dict[str, Any]  # the headline numbers, machine-readable (model_card.json)


# --------------------------------------------------------------------------- statistics


def macro_f1(y_true: np.ndarray, y_pred: np.ndarray, n_classes: int) -> np.ndarray:
    """Macro F1 along the last axis (works on [B, N] bootstrap resamples at once); a class
    absent from both truth and prediction counts as F1 0, as scikit-learn's default."""
    f1 = []
    for k in range(n_classes):
        t, p = y_true == k, y_pred == k
        tp = (t & p).sum(-1)
        denom = t.sum(-1) + p.sum(-1)
        f1.append(np.where(denom > 0, 2 * tp / np.maximum(denom, 1), 0.0))
    return np.mean(f1, axis=0)


def bootstrap_intervals(
    y_true: np.ndarray,
    y_pred: np.ndarray,
    labels: Sequence[str],
    *,
    resamples: int,
    confidence: float,
    seed: int,
) -> dict[str, dict[str, float]]:
    """Percentile bootstrap intervals of accuracy, macro F1 and each class's recall
    (``recall_<label>``), over ``resamples`` draws of the test images with replacement."""
    y_true, y_pred = np.asarray(y_true), np.asarray(y_pred)
    n_classes = len(labels)
    n = len(y_true)
    if n == 0:
        return {}
    idx = np.random.default_rng(seed).integers(0, n, size=(resamples, n))
    yt, yp = y_true[idx], y_pred[idx]
    lo, hi = (1 - confidence) / 2 * 100, (1 + confidence) / 2 * 100
    draws = {"accuracy": (yt == yp).mean(-1), "f1_macro": macro_f1(yt, yp, n_classes)}
    point = {
        "accuracy": float((y_true == y_pred).mean()),
        "f1_macro": float(macro_f1(y_true, y_pred, n_classes)),
    }
    for k, label in enumerate(labels):
        mask = yt == k
        with np.errstate(invalid="ignore", divide="ignore"):
            recall = ((yp == k) & mask).sum(-1) / mask.sum(-1)
        draws[f"recall_{label}"] = recall[np.isfinite(recall)]
        total = (y_true == k).sum()
        point[f"recall_{label}"] = (
            float(((y_pred == k) & (y_true == k)).sum() / total) if total else 0.0
        )
    return {
        name: {
            "value": point[name],
            "low": float(np.percentile(d, lo)) if len(d) else float("nan"),
            "high": float(np.percentile(d, hi)) if len(d) else float("nan"),
        }
        for name, d in draws.items()
    }


def _bucket(values: pd.Series, edges: Sequence[float], names: Sequence[str]) -> pd.Series:
    return pd.cut(values, [-np.inf, *edges, np.inf], labels=list(names), right=False)


def slice_columns(index: pd.DataFrame, p) -> dict[str, pd.Series | str]:
    """Per test image, the slice it falls in for each slicing (or why it cannot be sliced)."""
    out: dict[str, pd.Series | str] = {}
    if {"orig_width", "orig_height"} <= set(index.columns):
        w, h = index["orig_width"].astype(float), index["orig_height"].astype(float)
        edges = list(p.short_side_px)
        names = [f"< {edges[0]} px"]
        names += [f"{a}-{b - 1} px" for a, b in zip(edges, edges[1:], strict=False)]
        names += [f">= {edges[-1]} px"]
        out["image size (shorter side)"] = _bucket(np.minimum(w, h), edges, names)
        a, b = p.aspect_ratio
        out["aspect ratio (w / h)"] = _bucket(
            w / h, [a, b], [f"portrait (< {a})", "about square", f"landscape (>= {b})"]
        )
    else:
        out["image size (shorter side)"] = "the index records no original sizes"
        out["aspect ratio (w / h)"] = "the index records no original sizes"
    if "brightness" in index.columns:
        a, b = p.brightness
        out["brightness"] = _bucket(
            index["brightness"].astype(float),
            [a, b],
            [f"dark (< {a})", "middle", f"bright (>= {b})"],
        )
    else:
        out["brightness"] = "the index records no brightness"
    if "url_source" in index.columns:
        hosts = index["url_source"].map(lambda u: urlparse(str(u)).hostname or "(no host)")
        top = hosts.value_counts().index[: p.max_hosts]
        out["source host"] = hosts.where(hosts.isin(top), "(other hosts)")
    else:
        out["source host"] = "the index records no source URLs"
    return out


def _present_f1(y_true: np.ndarray, y_pred: np.ndarray) -> float:
    """Macro F1 over the labels present in the slice (truth or prediction): a slice of one
    label is not halved for the labels it does not hold."""
    present = np.union1d(y_true, y_pred)
    remap = {int(k): i for i, k in enumerate(present)}
    yt, yp = (np.array([remap[int(v)] for v in a]) for a in (y_true, y_pred))
    return float(macro_f1(yt, yp, len(present)))


def slice_table(
    test: pd.DataFrame, y_true: np.ndarray, y_pred: np.ndarray, n_classes: int, p
) -> list[list[Any]]:
    """Rows ``[slicing, slice, images, accuracy, macro F1]`` over the test split."""
    rows = []
    for slicing, groups in slice_columns(test, p).items():
        if isinstance(groups, str):
            rows.append([slicing, f"not sliced: {groups}", None, None, None])
            continue
        # buckets in their own order (small to large), hosts by how many images they gave
        order = groups.cat.categories if hasattr(groups, "cat") else groups.value_counts().index
        for name in [n for n in order if (groups == n).any()]:
            mask = (groups == name).to_numpy()
            yt, yp = y_true[mask], y_pred[mask]
            rows.append(
                [
                    slicing,
                    name if mask.sum() >= p.min_slice_images else f"{name} (few images)",
                    int(mask.sum()),
                    float((yt == yp).mean()),
                    _present_f1(yt, yp),
                ]
            )
    return rows


# --------------------------------------------------------------------------- the card


def _interval(ci: dict[str, float]) -> str:
    return f"{ci['value']:.4f} [{ci['low']:.4f}, {ci['high']:.4f}]"


def build(
    *,
    name: str,
    version: str,
    tags: dict[str, str],
    decision: dict,
    training_report: dict,
    evaluation_report: dict,
    serving_meta: dict,
    fingerprint: dict,
    test: pd.DataFrame,
    y_true: np.ndarray,
    y_pred: np.ndarray,
    formatting_report: dict | None,
    decisions: pd.DataFrame | None,
    behaviour: dict | None,
    task,
    p,
) -> Card:
    """The card of ``name`` version ``version`` (``test``: the test split's index rows, in
    the order of ``y_true`` / ``y_pred``; ``formatting_report``: the formatting run's,
    whose ``decisions_applied`` are listed when it built this version's dataset;
    ``decisions``: the curation decisions in force now; ``task``: ``params.TaskParams``;
    ``p``: ``params.ModelCardParams``, whose texts take the task's ``{description}``,
    ``{labels}`` and ``{title}``)."""
    labels = list(serving_meta["labels"])
    k = len(labels)
    run_id = training_report.get("mlflow_run_id")
    words = {"description": task.description, "title": task.title, "labels": ", ".join(labels)}
    sections = [
        Section(
            "Intended use",
            [p.intended_use.strip().format(**words)],
            [(["out of scope"], [[line.format(**words)] for line in p.out_of_scope])],
        ),
        _data_section(
            fingerprint,
            training_report.get("dataset_fingerprint") or fingerprint.get("fingerprint"),
            formatting_report,
            decisions,
        ),
    ]
    ci = bootstrap_intervals(
        y_true,
        y_pred,
        labels,
        resamples=p.bootstrap.resamples,
        confidence=p.bootstrap.confidence,
        seed=p.bootstrap.seed,
    )
    metrics = evaluation_report.get("metrics") or {}
    conf = f"{p.bootstrap.confidence:.0%}"
    metric_rows = [["accuracy", _interval(ci["accuracy"])], ["macro F1", _interval(ci["f1_macro"])]]
    metric_rows += [[f"recall {lab}", _interval(ci[f"recall_{lab}"])] for lab in labels]
    metric_rows += [["ROC-AUC", metrics.get("roc_auc")]]
    baseline = evaluation_report.get("best_baseline_f1_macro")
    sections.append(
        Section(
            "Metrics (test split)",
            [
                f"{len(y_true)} test images, through the serving preprocessing and the served "
                f"ONNX model. Intervals: {conf} percentile bootstrap over "
                f"{p.bootstrap.resamples} resamples of the test images (seed "
                f"{p.bootstrap.seed}). Best baseline macro F1: "
                f"{'-' if baseline is None else f'{baseline:.4f}'}.",
            ],
            [(["metric", f"value [{conf} interval]"], metric_rows)],
        )
    )
    sections.append(
        Section(
            "Per-slice metrics (test split)",
            [
                "Slices of the test split by the original image's shorter side and aspect "
                "ratio, the formatted image's brightness and the host the image came from. "
                f"A slice with fewer than {p.slices.min_slice_images} images says so: its figures "
                "are anecdotes, not estimates."
            ],
            [
                (
                    ["slicing", "slice", "images", "accuracy", "macro F1 (labels present)"],
                    slice_table(test, y_true, y_pred, k, p.slices),
                )
            ],
        )
    )
    behaviour_figures = _behaviour_section(behaviour, run_id, sections)
    ood = serving_meta.get("ood")
    sections.append(_ood_section(ood, behaviour if behaviour_figures else None))
    calibration = evaluation_report.get("calibration") or {}
    sections.append(
        Section(
            "Calibration",
            [
                "Probabilities are softmax(logits / T), T fitted on the validation split "
                "(docs/model.md, *Calibration*); ECE: expected calibration error of the "
                "top-class confidence on the test split, 10 bins."
            ],
            [
                (
                    ["temperature T", "ECE (served)", "ECE (plain softmax)"],
                    [
                        [
                            calibration.get("temperature", serving_meta.get("temperature")),
                            calibration.get("ece"),
                            calibration.get("ece_uncalibrated"),
                        ]
                    ],
                )
            ],
        )
    )
    size_mb = _num(tags.get("gate.model_mb"))
    latency = _num(tags.get("gate.latency_p50_ms"))
    sections.append(
        Section(
            "Size and latency",
            [
                "Measured by the registry on the registered file: batch-1 ONNX Runtime p50 "
                f"over {tags.get('gate.latency_runs', '?')} runs on "
                f"{tags.get('gate.latency_threads', '?')} thread(s)."
            ],
            [
                (
                    ["serving file", "precision", "size (MB)", "batch-1 p50 (ms)"],
                    [
                        [
                            "model.onnx",
                            serving_meta.get("precision", "fp32"),
                            size_mb,
                            latency,
                        ]
                    ],
                )
            ],
        )
    )
    sections.append(_lineage_section(name, version, tags, decision, training_report, serving_meta))
    figures = {
        "model_name": name,
        "model_version": version,
        "mlflow_run_id": run_id,
        "test_images": int(len(y_true)),
        "intervals": ci,
        "model_mb": size_mb,
        "latency_p50_ms": latency,
        "ood_threshold": None if not ood else ood.get("threshold"),
        "behaviour": behaviour_figures,
        "verdict": tags.get("verdict"),
    }
    return Card(f"Model card: {name} version {version} ({task.title})", sections, figures)


def _num(value: str | None) -> float | None:
    try:
        return float(value) if value is not None else None
    except ValueError:
        return None


def _data_section(
    fingerprint: dict,
    trained_on: str | None,
    formatting_report: dict | None,
    decisions: pd.DataFrame | None,
) -> Section:
    per_split_label = fingerprint.get("per_split_label") or {}
    rows = [
        [split, *(counts.get(lab, 0) for lab in sorted(fingerprint.get("per_label") or {}))]
        for split, counts in sorted(per_split_label.items())
    ]
    labels = sorted(fingerprint.get("per_label") or {})
    text = [
        f"Dataset fingerprint {fingerprint.get('fingerprint')}: "
        f"{fingerprint.get('n_images', '?')} images, "
        + ", ".join(f"{lab} {n}" for lab, n in sorted((fingerprint.get("per_label") or {}).items()))
        + f"; formatted at {fingerprint.get('image_size', '?')} px. The split of an image is "
        "a hash of its content: adding images never moves one."
    ]
    tables = [(["split", *labels], rows)] if rows else []
    # the decisions in the version's data: what the formatting run that built it applied,
    # not what the database holds now (recorded since, they wait for a formatting run)
    report = formatting_report or {}
    applied = report.get("decisions_applied")
    formatted = report.get("dataset_fingerprint")
    if applied is None or formatted != trained_on:
        text.append(
            "Curation decisions applied: not known (the formatting report is for dataset "
            f"{formatted or '?'}, not this version's {trained_on or '?'})."
        )
        return Section("Data", text, tables)
    if not applied:
        text.append("Curation decisions applied: none (no image excluded or relabelled).")
    else:
        counts = Counter(a["action"] for a in applied)
        text.append(
            "Curation decisions applied (plants-mlops data exclude/relabel): "
            + ", ".join(f"{n} {action}" for action, n in sorted(counts.items()))
            + "."
        )
        shown = sorted(applied, key=lambda a: int(a["row_id"]))[:50]
        tables.append(
            (
                ["row", "action", "label", "reason", "by", "when"],
                [
                    [
                        a["row_id"],
                        a["action"],
                        a.get("to"),
                        a.get("reason"),
                        a.get("decided_by"),
                        a.get("decided_at"),
                    ]
                    for a in shown
                ],
            )
        )
    waiting = _decisions_since(applied, decisions)
    if waiting:
        text.append(
            f"{waiting} curation decision{'s' if waiting > 1 else ''} recorded since "
            "(plants-mlops data exclude/relabel/restore) "
            f"{'are' if waiting > 1 else 'is'} not in this version's data: "
            f"{'they wait' if waiting > 1 else 'it waits'} for a formatting run and a retrain."
        )
    return Section("Data", text, tables)


def _decisions_since(applied: list[dict], in_force: pd.DataFrame | None) -> int:
    """How many rows' decision in force differs from the one formatting applied (a new
    exclude or relabel, or a restore). A decision applied to copies of its image counts
    once, under the row it named (``decided_on``)."""
    was = {int(a.get("decided_on", a["row_id"])): (a["action"], a.get("to")) for a in applied}
    now = {
        int(d["row_id"]): (d["action"], d["label"] if d["action"] == "relabel" else None)
        for d in ([] if in_force is None else in_force.to_dict(orient="records"))
    }
    return sum(was.get(row) != now.get(row) for row in was.keys() | now.keys())


def _behaviour_section(behaviour: dict | None, run_id: str | None, sections: list) -> dict | None:
    if not behaviour or behaviour.get("mlflow_run_id") != run_id:
        why = (
            "no behaviour report"
            if not behaviour
            else f"the behaviour report is for run {behaviour.get('mlflow_run_id')}, not this one"
        )
        sections.append(
            Section(
                "Behaviour",
                [
                    f"Not measured for this version ({why}): invariance and minimum "
                    "functionality are unknown."
                ],
            )
        )
        return None
    invariance = behaviour.get("invariance") or {}
    functionality = behaviour.get("minimum_functionality") or {}
    sections.append(
        Section(
            "Behaviour",
            [
                f"Invariance: the share of the {behaviour.get('test_images', '?')} test "
                "images whose label does not change under each edit. Minimum functionality: "
                f"{functionality.get('cases', '?')} shipped clear cases, "
                f"accuracy {_fmt(functionality.get('accuracy'))}."
            ],
            [(["edit", "labels unchanged"], [[e, v] for e, v in invariance.items()])],
        )
    )
    return {
        "invariance": invariance,
        "functionality": functionality.get("accuracy"),
        **{k: v for k, v in (behaviour.get("metrics") or {}).items() if v is not None},
    }


def _ood_section(ood: dict | None, behaviour: dict | None) -> Section:
    if not ood:
        return Section(
            "Out-of-distribution detection",
            [
                "This version has no out-of-distribution detector: it answers every upload "
                "with a label, a photo of something else included."
            ],
        )
    rows = [
        ["method", ood.get("method")],
        ["threshold (ood_score above it: flagged)", ood.get("threshold")],
        ["validation images flagged", ood.get("val_flag_rate")],
        ["limit the threshold was chosen for", ood.get("max_flag_rate")],
        ["validation images", ood.get("val_images")],
        ["training images fitted on", ood.get("train_images")],
    ]
    if ood.get("train_flag_rate") is not None:
        rows.append(
            ["training images flagged, each left out of the reference", ood["train_flag_rate"]]
        )
    figures = (behaviour or {}).get("ood") or {}
    if figures:
        rows += [
            ["held-out out-of-distribution photos flagged", figures.get("report_flagged")],
            ["test images flagged (false flags)", figures.get("test_false_flags")],
        ]
        edited = figures.get("edited_false_flags") or {}
        if edited:
            shares = ", ".join(f"{name} {share:.3f}" for name, share in edited.items())
            rows.append(["test images flagged under the task's label-preserving edits", shares])
    return Section(
        "Out-of-distribution detection",
        [
            "The score is the distance of the image's embedding from the training images "
            "(model/ood.py); the threshold is chosen on the validation split and, for "
            "kNN, on the training images scored with each left out of the reference."
        ],
        [(["figure", "value"], rows)],
    )


def _lineage_section(name, version, tags, decision, training_report, serving_meta) -> Section:
    rows = [
        ["registered model", f"{name} version {version}"],
        ["gate verdict", tags.get("verdict")],
        ["gate checks", tags.get("gate.checks")],
        ["champion before registration", decision.get("previous_champion")],
        ["MLflow run", training_report.get("mlflow_run_id")],
        ["logged model", training_report.get("model_uri")],
        ["git commit", training_report.get("git_commit")],
        ["dataset fingerprint", training_report.get("dataset_fingerprint")],
        ["architecture", serving_meta.get("architecture")],
        ["training strategy", training_report.get("strategy")],
        [
            "input size",
            f"{serving_meta.get('image_size')} px (resized from {serving_meta.get('resize_size')})",
        ],
        ["labels", ", ".join(serving_meta.get("labels") or [])],
        ["created", serving_meta.get("created_at")],
    ]
    return Section("Lineage", [], [(["what", "value"], rows)])


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4f}"
    return "-" if value is None else str(value)


# --------------------------------------------------------------------------- rendering


def markdown(card: Card) -> str:
    out = [f"# {card.title}", ""]
    for s in card.sections:
        out += [f"## {s.title}", ""]
        for para in s.text:
            out += [para, ""]
        for header, rows in s.tables:
            out.append("| " + " | ".join(header) + " |")
            out.append("|" + " --- |" * len(header))
            for row in rows:
                cells = (_fmt(v).replace("|", "\\|").replace("\n", " ") for v in row)
                out.append("| " + " | ".join(cells) + " |")
            out.append("")
    return "\n".join(out)


def html(card: Card) -> str:
    parts = []
    for s in card.sections:
        parts.append(f"<h2>{html_lib.escape(s.title)}</h2>")
        parts += [f"<p>{html_lib.escape(para)}</p>" for para in s.text]
        parts += [reports.table(header, rows) for header, rows in s.tables]
    return reports.page(card.title, *parts)
