"""End to end through the real ``kedro run`` CLI: the data pipelines, then training,
evaluation and registry on the embedded SQLite MLflow store, then ``plants-mlops registry``."""

from __future__ import annotations

import json
import os
import subprocess

import pytest
from support import servers

# A quick model (small CNN, 64 px, a stratified subset) and a gate it can pass.
TRAIN = {
    "training.architecture": "small_cnn",
    "training.weights": "null",
    "training.image_size": 64,
    "training.epochs": 4,
    "training.batch_size": 16,
    "training.max_images_per_split": 60,
    "training.quiet": "true",
}
GATE = {"registry.gate.min_f1": 0.0, "registry.gate.require_beat_baseline": "false"}


@pytest.mark.slow
def test_data_then_model_pipelines_end_with_a_listed_champion(kedro_project):
    kedro_project.run("data")
    for pipeline in ("training", "evaluation", "registry"):
        kedro_project.run(pipeline, params={**TRAIN, **GATE})

    data = kedro_project.path / "data"
    for name in ("model.onnx", "model_checkpoint.pt", "serving_meta.json"):
        assert (data / "06_models" / name).stat().st_size > 0
    summary = json.loads((data / "08_reporting" / "training_summary.json").read_text())
    fingerprint = json.loads((data / "03_primary" / "dataset_fingerprint.json").read_text())
    assert summary["dataset_fingerprint"] == fingerprint["fingerprint"]
    assert summary["mlflow_run_id"] and summary["model_uri"].startswith("models:/")
    meta = json.loads((data / "06_models" / "serving_meta.json").read_text())
    assert meta["mlflow_run_id"] == summary["mlflow_run_id"]
    assert meta["resize_size"] == 160 and meta["image_size"] == 64

    report = json.loads((data / "08_reporting" / "evaluation_report.json").read_text())
    assert report["mlflow_run_id"] == summary["mlflow_run_id"]
    assert report["champion"] == {"version": None}
    assert set(report["baselines"]) == {"majority_class", "colour_histogram_logreg"}
    assert report["model"]["n"] == summary["split_sizes_used"]["test"]

    decision = json.loads((data / "08_reporting" / "registry_decision.json").read_text())
    assert decision["verdict"] == "pass"
    assert decision["champion"] == decision["model_version"] == "1"

    listed = subprocess.run(
        [str(servers.VENV_BIN / "plants-mlops"), "registry", "list", "--json"],
        cwd=kedro_project.path,
        env=os.environ.copy(),
        capture_output=True,
        text=True,
        timeout=300,
        check=True,
    )
    rows = json.loads(listed.stdout)
    assert [(r["version"], r["aliases"], r["verdict"]) for r in rows] == [
        ("1", ["champion"], "pass")
    ]
