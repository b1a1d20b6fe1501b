"""The model card of a registered version: written, logged to MLflow, linked, and naming its
figures (in-process nodes against the session's real MLflow server)."""

from __future__ import annotations

import json
import os
import re
import uuid
from pathlib import Path

import mlflow
import numpy as np
import pandas as pd
import pytest
from mlflow import MlflowClient
from support import model_data
from support.params import stage_params
from test_registry import lifecycle, run_cli

from plants_mlops.contracts import ALIAS_CHAMPION
from plants_mlops.model import card, registry
from plants_mlops.pipelines.registry.card import write_model_card

DECISIONS = pd.DataFrame(
    [
        {
            "id": 1,
            "row_id": 17,
            "action": "exclude",
            "label": None,
            "reason": "a drawing, not a photo",
            "decided_by": "reviewer",
            "decided_at": "2026-12-01T10:00:00",
        }
    ]
)


@pytest.fixture
def model_name() -> str:
    return f"plants-card-{uuid.uuid4().hex[:8]}"


def formatting_report(fingerprint: str, decisions: pd.DataFrame) -> dict:
    """What the formatting run that built the dataset ``fingerprint`` records: the
    decisions it applied (``pipelines/curation/decisions.py``)."""
    from plants_mlops.pipelines.curation.decisions import apply_decisions

    rows = pd.DataFrame({"id": decisions["row_id"], "label": "dandelion", "sha256": "0" * 64})
    return {
        "dataset_fingerprint": fingerprint,
        "decisions_applied": apply_decisions({}, rows, decisions)[2],
    }


def _card(
    trained: model_data.Trained,
    summary,
    report,
    decision,
    behaviour=None,
    *,
    formatted=None,
    in_force=DECISIONS,
):
    """The node's card; ``formatted``: the formatting report (default: the dataset was
    formatted with ``DECISIONS`` applied); ``in_force``: the decisions recorded now."""
    d = trained.data
    if formatted is None:
        formatted = formatting_report(d.dataset_fingerprint["fingerprint"], DECISIONS)
    client = MlflowClient(os.environ["MLFLOW_TRACKING_URI"])
    name, version = decision["model_name"], decision["model_version"]
    meta = registry.verify_loadable(client, version, name).to_dict()
    return write_model_card(
        decision,
        summary,
        report,
        trained.onnx,
        meta,
        d.dataset_index,
        d.fmt_images,
        d.dataset_fingerprint,
        formatted,
        in_force,
        behaviour,
        stage_params("model_card", bootstrap={"resamples": 300}),
        stage_params("registry", model_name=decision["model_name"]),
        stage_params("task"),
    )


def test_the_registered_champion_has_a_card_that_names_its_figures(
    small_model, mlflow_tracking_uri, monkeypatch, model_name, capsys, tmp_path
):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", mlflow_tracking_uri)
    summary, report, decision = lifecycle(small_model, model_name)
    assert decision["aliases"] == [ALIAS_CHAMPION]
    md, page, figures = _card(small_model, summary, report, decision)

    assert md.startswith(f"# Model card: {model_name} version 1 (Dandelion or grass?)")
    assert "Labels: dandelion, grass." in md and "none of dandelion, grass" in md
    sections = re.findall(r"^## (.+)$", md, flags=re.M)
    assert sections == [
        "Intended use",
        "Data",
        "Metrics (test split)",
        "Per-slice metrics (test split)",
        "Behaviour",
        "Out-of-distribution detection",
        "Calibration",
        "Size and latency",
        "Lineage",
    ]
    # metrics with intervals, equal to the evaluation's point figures
    f1 = figures["intervals"]["f1_macro"]
    assert f1["value"] == pytest.approx(report["metrics"]["f1_macro"])
    assert f1["low"] <= f1["value"] <= f1["high"] and f1["low"] < f1["high"]
    assert f"| macro F1 | {f1['value']:.4f} [{f1['low']:.4f}, {f1['high']:.4f}] |" in md
    # data: fingerprint, counts per label, the curation decision applied
    fingerprint = small_model.data.dataset_fingerprint
    assert fingerprint["fingerprint"] in md and "1 exclude" in md and "a drawing" in md
    for label, n in fingerprint["per_label"].items():
        assert f"{label} {n}" in md
    # slices: brightness from the index; what the sample index lacks is said, not dropped
    assert "| brightness | middle" in md
    assert "not sliced: the index records no source URLs" in md
    # what this version lacks is said
    assert "Not measured for this version (no behaviour report)" in md
    assert "no out-of-distribution detector" in md
    # size and latency are the registry's measurements of the registered file
    measured = decision["serving_model"]
    assert figures["model_mb"] == pytest.approx(measured["model_mb"], abs=1e-3)
    assert figures["latency_p50_ms"] == pytest.approx(measured["latency_p50_ms"], abs=1e-3)
    assert summary["mlflow_run_id"] in md and summary["git_commit"] in md
    assert "<h2>Lineage</h2>" in page and "<table>" in page

    # logged with the version and linked from it, and from `registry list`
    client = MlflowClient(mlflow_tracking_uri, registry_uri=mlflow_tracking_uri)
    tags = client.get_model_version(model_name, decision["model_version"]).tags
    assert tags["model_card"] == figures["links"]["model_card"]
    logged = mlflow.artifacts.download_artifacts(tags["model_card"], dst_path=str(tmp_path))
    assert Path(logged).read_text() == page
    rc, out, _ = run_cli(capsys, mlflow_tracking_uri, model_name, "list", "--json")
    assert rc == 0 and json.loads(out)[0]["model_card"] == tags["model_card"]
    rc, out, _ = run_cli(capsys, mlflow_tracking_uri, model_name, "list")
    assert f"model card: {tags['model_card']}" in out


def test_the_card_shows_the_behaviour_figures_of_its_own_run_only(
    small_model, mlflow_tracking_uri, monkeypatch, model_name
):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", mlflow_tracking_uri)
    summary, report, decision = lifecycle(small_model, model_name)
    behaviour = {
        "mlflow_run_id": summary["mlflow_run_id"],
        "test_images": 20,
        "invariance": {"mirror": 0.95, "rotate90": 0.85},
        "minimum_functionality": {"cases": 6, "accuracy": 0.8333},
        "metrics": {"invariance_min": 0.85, "invariance_mirror": 0.95},
    }
    md, _, figures = _card(small_model, summary, report, decision, behaviour)
    assert "| mirror | 0.9500 |" in md and "| rotate90 | 0.8500 |" in md
    assert "6 shipped clear cases, accuracy 0.8333" in md
    assert figures["behaviour"]["invariance_mirror"] == 0.95
    stale = {**behaviour, "mlflow_run_id": "another-run"}
    md, _, figures = _card(small_model, summary, report, decision, stale)
    assert "the behaviour report is for run another-run, not this one" in md
    assert figures["behaviour"] is None


def test_the_card_lists_the_decisions_of_the_dataset_the_version_was_trained_on(
    small_model, mlflow_tracking_uri, monkeypatch, model_name
):
    """Decisions recorded (or restored) after the formatting run are not in the version's
    data: the card lists what that formatting run applied and counts the rest as waiting."""
    monkeypatch.setenv("MLFLOW_TRACKING_URI", mlflow_tracking_uri)
    summary, report, decision = lifecycle(small_model, model_name)
    fingerprint = small_model.data.dataset_fingerprint["fingerprint"]
    none_applied = formatting_report(fingerprint, DECISIONS.iloc[:0])

    # excluded after formatting: row 17 is still in the data
    md = _card(small_model, summary, report, decision, formatted=none_applied)[0]
    assert "Curation decisions applied: none" in md and "a drawing" not in md
    assert "1 curation decision recorded since" in md and "waits for a formatting run" in md
    # applied by formatting, restored since: still in the data
    md = _card(small_model, summary, report, decision, in_force=DECISIONS.iloc[:0])[0]
    assert "Curation decisions applied (plants-mlops data exclude/relabel): 1 exclude." in md
    assert "| 17 | exclude | - | a drawing, not a photo | reviewer | 2026-12-01T10:00:00 |" in md
    assert "1 curation decision recorded since" in md
    # in force and applied: nothing waits
    md = _card(small_model, summary, report, decision)[0]
    assert "1 exclude" in md and "recorded since" not in md
    # a formatting report of another dataset says nothing about this version's
    other = formatting_report("f" * 64, DECISIONS)
    md = _card(small_model, summary, report, decision, formatted=other)[0]
    assert (
        f"Curation decisions applied: not known (the formatting report is for dataset {'f' * 64}"
        in md
    )
    assert "a drawing" not in md


def test_bootstrap_intervals_cover_the_point_figure_and_narrow_with_more_images():
    rng = np.random.default_rng(0)
    widths = []
    for n in (40, 400):
        y = rng.integers(0, 2, n)
        pred = np.where(rng.random(n) < 0.9, y, 1 - y)  # about 90 % right
        ci = card.bootstrap_intervals(y, pred, "ab", resamples=500, confidence=0.95, seed=0)
        for name in ("accuracy", "f1_macro", "recall_a", "recall_b"):
            assert ci[name]["low"] <= ci[name]["value"] <= ci[name]["high"], name
        assert ci["accuracy"]["value"] == pytest.approx((y == pred).mean())
        widths.append(ci["accuracy"]["high"] - ci["accuracy"]["low"])
    assert widths[1] < widths[0] / 2
    perfect = card.bootstrap_intervals(y, y, "ab", resamples=100, confidence=0.95, seed=0)
    assert perfect["f1_macro"] == {"value": 1.0, "low": 1.0, "high": 1.0}


def test_slices_come_in_bucket_order_and_score_only_the_labels_they_hold():
    from plants_mlops.params import ModelCardParams, parse

    p = parse(ModelCardParams, stage_params("model_card"), "model_card").slices
    test = pd.DataFrame(
        {
            "orig_width": [2000, 300, 100, 120],
            "orig_height": [1500, 300, 100, 100],
            "brightness": [0.5, 0.5, 0.2, 0.9],
            "url_source": ["https://a.example/1", "https://b.example/2", "https://a.example/3", ""],
        }
    )
    y, pred = np.array([0, 1, 1, 1]), np.array([0, 1, 1, 0])
    rows = card.slice_table(test, y, pred, 2, p)
    sizes = [r[1] for r in rows if r[0] == "image size (shorter side)"]
    assert sizes == ["< 256 px (few images)", "256-511 px (few images)", ">= 1024 px (few images)"]
    hosts = [(r[1], r[2]) for r in rows if r[0] == "source host"]
    assert hosts[0] == ("a.example (few images)", 2)  # the most images first
    assert sorted(hosts[1:]) == [("(no host) (few images)", 1), ("b.example (few images)", 1)]
    one_label = next(r for r in rows if r[1].startswith("256-511"))
    assert one_label[3:] == [1.0, 1.0]  # one grass image, right: F1 1, not halved


def test_a_decision_applied_to_copies_of_its_image_is_not_counted_as_waiting():
    """Formatting applies a decision to every row with the image's bytes; the copies must
    not read as decisions recorded since the version's data."""
    import pandas as pd

    from plants_mlops.model.card import _decisions_since

    applied = [
        {"row_id": 1, "action": "exclude", "decided_on": 1},
        {"row_id": 7, "action": "exclude", "decided_on": 1},
    ]
    in_force = pd.DataFrame([{"row_id": 1, "action": "exclude", "label": None}])
    assert _decisions_since(applied, in_force) == 0
    assert _decisions_since(applied, in_force.iloc[:0]) == 1  # restored since
