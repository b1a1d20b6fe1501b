"""The model benchmarks run end to end on a small pool (the figures themselves are
recorded in docs/benchmarks.md and docs/model.md, never asserted here)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SAMPLES = ROOT / "samples" / "plants"


@pytest.fixture(scope="module")
def benchmarks():
    sys.path.insert(0, str(ROOT / "benchmarks"))
    yield
    sys.path.remove(str(ROOT / "benchmarks"))


def _small_pool(tmp_path: Path, per_label: int = 30) -> Path:
    for label in ("dandelion", "grass"):
        (tmp_path / label).mkdir(parents=True)
        for src in sorted((SAMPLES / label).glob("*.jpg"))[:per_label]:
            (tmp_path / label / src.name).write_bytes(src.read_bytes())
    return tmp_path


def test_bench_training_runs_and_writes_its_figures(benchmarks, tmp_path):
    import bench_training

    out = tmp_path / "figures.json"
    argv = ["--quick", "--epochs", "1", "--threads", "1", "--data", "samples", "--json-out"]
    assert bench_training.main([*argv, str(out)]) == 0
    figures = json.loads(out.read_text())
    assert figures["architecture"] == "small_cnn" and figures["epochs_run"] == 1
    assert figures["onnx_batch1_latency_p50_ms_1_thread"] > 0
    assert figures["model_size_mb"] > 0 and 0 <= figures["test_f1_macro"] <= 1
    assert figures["temperature"] > 0


def test_bench_model_cv_scores_every_fold_and_honours_exclude_ids(benchmarks, tmp_path):
    import bench_model_cv

    pool = _small_pool(tmp_path / "pool")
    from plants_mlops.model.devdata import from_folder

    index = from_folder(pool).dataset_index
    dropped = list(index["image_key"][:2]) + [index["sha256"].iloc[2]]
    exclude = tmp_path / "top.json"
    exclude.write_text(json.dumps({"images": [{"image_key": k} for k in dropped]}))
    out = tmp_path / "cv.json"
    argv = ["--candidates", "small_cnn_64", "--folds", "3", "--epochs", "1", "--threads", "1"]
    argv += ["--pool", str(pool), "--exclude-ids", str(exclude), "--json", str(out)]
    assert bench_model_cv.main(argv) == 0
    saved = json.loads(out.read_text())
    assert saved["pool_size"] == len(index) - 3 and saved["excluded"] == 3
    result = saved["results"]["small_cnn_64"]
    assert [f["fold"] for f in result["folds"]] == [0, 1, 2]
    assert sum(f["n_test"] for f in result["folds"]) == result["n_total"] == len(index) - 3
    lo, hi = result["f1_macro_ci95"]
    assert lo <= result["f1_macro_mean"] <= hi
    assert "f1_macro_tta_mean" in result and result["model_mb"] > 0
    assert result["onnx_batch1_latency_p50_ms"] > 0
    thresholds = [row["threshold"] for row in result["confidence_calibrated"]]
    assert thresholds == sorted(thresholds) and 0.75 in thresholds
    assert bench_model_cv.main(["--from-json", str(out)]) == 0


def test_a_review_verdict_file_excludes_only_the_items_judged_to_be_excluded(benchmarks, tmp_path):
    import bench_model_cv

    verdicts = {
        "exclude_row_ids": [7],
        "items": [
            {"row_id": 7, "image_key": "grass/" + "a" * 64, "verdict": "off-topic"},
            {"row_id": 9, "image_key": "dandelion/" + "b" * 64, "verdict": "fine"},
        ],
    }
    path = tmp_path / "top20.json"
    path.write_text(json.dumps(verdicts))
    assert bench_model_cv._excluded(str(path)) == {"grass/" + "a" * 64, "a" * 64}
