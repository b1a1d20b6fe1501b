"""Behaviour nodes: how the serving model behaves beyond its test accuracy.

On the test split, through the serving path (``ServingArtifact``):

- **invariance**: for each of the task's label-preserving edits
  (``task.label_preserving_edits``, names in ``model/behaviour.EDITS``), the share of test
  images whose label does not change;
- **minimum functionality**: the share of the shipped clear cases labelled right;
- **out-of-distribution detection**: the share of non-plant images flagged, reported on
  the held-out photos (``behaviour.REPORT_PHOTOS``: never used to choose the detector)
  and, for information, on the set it was tuned on; and the share of the test split
  flagged (false flags).

The registry gate reads ``behaviour_report.metrics`` (``registry.gate.behaviour``).
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from plants_mlops.model import tracking
from plants_mlops.params import BehaviourParams, TaskParams, parse
from plants_mlops.summaries import StageSummary

log = logging.getLogger(__name__)


def _flags(model, images: dict) -> tuple[float | None, list[str]]:
    """(share of ``images`` flagged out of distribution, the names not flagged); (None,
    every name) for a model without a detector."""
    if not images:
        return None, []
    pred = model.predict_images(list(images.values()))
    if pred.out_of_distribution is None:
        return None, list(images)
    missed = [n for n, f in zip(images, pred.out_of_distribution, strict=True) if not f]
    return float(pred.out_of_distribution.mean()), missed


def measure_behaviour(
    serving_model: bytes,
    serving_meta: dict,
    dataset_index: pd.DataFrame,
    fmt_images: dict,
    params: dict[str, Any],
    task: dict[str, Any],
) -> dict:
    """Every behaviour figure of the serving model (see the module docstring); the edits
    are ``task.label_preserving_edits`` (a name that is no edit is refused when the task
    file is read)."""
    from plants_mlops.model import behaviour
    from plants_mlops.model.artifact import ServingArtifact
    from plants_mlops.model.data import load_subset

    p = parse(BehaviourParams, params, "behaviour")
    task_params = parse(TaskParams, task, "task")
    edits = task_params.label_preserving_edits
    model = ServingArtifact.from_bytes(serving_model, serving_meta)
    labels = tuple(model.meta.labels)
    test = load_subset(dataset_index, fmt_images, labels, ("test",), p.subset)["test"]
    base = model.predict_images(test.images)
    base_labels = base.probabilities.argmax(axis=1)
    invariance, edited_flags = {}, {}
    for name in edits:
        edited = model.predict_images(behaviour.EditedImages(test.images, behaviour.EDITS[name]))
        invariance[name] = float((edited.probabilities.argmax(axis=1) == base_labels).mean())
        if edited.out_of_distribution is not None:  # photos the task says keep their label
            edited_flags[name] = float(edited.out_of_distribution.mean())

    folder = task_params.clear_cases
    names, clear, clear_y = behaviour.clear_cases(Path(folder), labels) if folder else ([], [], [])
    if not names:  # a task of its own ships its clear cases, or has none measured
        log.warning(
            "behaviour: no clear cases for the labels %s (task.clear_cases: %s): minimum "
            "functionality not measured",
            list(labels),
            folder,
        )
    clear_pred = model.predict_images(clear).probabilities.argmax(axis=1) if names else None
    right = clear_pred == clear_y if names else np.zeros(0, dtype=bool)
    wrong = [n for n, ok in zip(names, right, strict=True) if not ok]

    report_flagged, report_missed = _flags(model, behaviour.report_set())
    tune = behaviour.tune_set(p.generated_size)
    tune_flagged, tune_missed = _flags(model, tune)
    false_flags = (
        float(base.out_of_distribution.mean()) if base.out_of_distribution is not None else None
    )
    others = [v for k, v in invariance.items() if k != "mirror"]
    figures = {
        "test_images": len(test),
        "invariance": invariance,
        "minimum_functionality": {
            "cases": len(names),
            "accuracy": float(right.mean()) if names else None,
            "wrong": wrong,
        },
        "ood": {
            "detector": model.meta.ood.model_dump(mode="json") if model.meta.ood else None,
            "report_images": len(behaviour.REPORT_PHOTOS),
            "report_flagged": report_flagged,
            "report_missed": report_missed,
            "held_out_for_reporting": sorted(behaviour.REPORT_PHOTOS),
            "tune_images": len(tune),
            "tune_flagged": tune_flagged,
            "tune_missed": tune_missed,
            "test_false_flags": false_flags,
            "edited_false_flags": edited_flags if false_flags is not None else None,
        },
    }
    figures["metrics"] = behaviour.BehaviourMetrics.model_validate(
        {
            "invariance_min": min(others) if others else None,
            "invariance_mirror": invariance.get("mirror"),
            **{f"invariance_{k}": v for k, v in invariance.items()},
            "functionality": figures["minimum_functionality"]["accuracy"],
            "ood_flagged": report_flagged,
            "ood_tune_flagged": tune_flagged,
            "false_flags": false_flags,
        }
    ).model_dump()
    log.info(
        "behaviour: invariance %s; clear cases %d/%d; OOD flagged %s of %d held-out photos; "
        "test false flags %s",
        ", ".join(f"{k} {v:.3f}" for k, v in invariance.items()),
        len(names) - len(wrong),
        len(names),
        "-" if report_flagged is None else f"{report_flagged:.3f}",
        len(behaviour.REPORT_PHOTOS),
        "-" if false_flags is None else f"{false_flags:.3f}",
    )
    return figures


def report_behaviour(
    behaviour_figures: dict, training_report: dict, params: dict[str, Any]
) -> tuple[dict, dict]:
    """The behaviour report (also logged to the training run: ``behaviour_*`` metrics and
    ``behaviour/behaviour_report.json``) and the stage summary."""
    p = parse(BehaviourParams, params, "behaviour")
    run_id = training_report.get("mlflow_run_id")
    report = {
        "mlflow_run_id": run_id,
        "dataset_fingerprint": training_report.get("dataset_fingerprint"),
        **behaviour_figures,
    }
    numbers = {k: float(v) for k, v in report["metrics"].items() if v is not None}
    if run_id and p.mlflow.log_to_run:
        cl = tracking.client(tracking.tracking_uri(p.mlflow.tracking_uri))
        with tracking.open_run(cl, "behaviour", run_id=run_id) as run:
            run.log_metrics({f"behaviour_{k}": v for k, v in numbers.items()})
            run.log_dict(report, "behaviour/behaviour_report.json")
    summary = StageSummary(
        stage="behaviour",
        counts={
            "test_images": int(report["test_images"]),
            "clear_cases": int(report["minimum_functionality"]["cases"]),
            "ood_report_images": int(report["ood"]["report_images"]),
        },
        dataset_fingerprint=report["dataset_fingerprint"],
        mlflow_run_id=run_id,
        metrics=numbers,
        outputs=["behaviour_report"],
    )
    return report, summary.to_json()
