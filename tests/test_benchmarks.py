"""The model benchmarks run end to end on a small pool (the figures themselves are
recorded in docs/benchmarks.md and docs/model.md, never asserted here)."""

from __future__ import annotations

import hashlib
import json
import sys
from pathlib import Path

import pytest
from support.params import task_params

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


def test_bench_serving_opens_a_relative_sqlite_store_and_builds_the_int8_model(
    benchmarks, tmp_path, monkeypatch
):
    import bench_serving
    from product_model import untrained_product_model

    # the server runs in a temporary folder: a relative store must not name a new empty one
    monkeypatch.chdir(tmp_path)
    assert bench_serving.absolute_sqlite("sqlite:///data/mlflow.db") == (
        f"sqlite:///{tmp_path / 'data' / 'mlflow.db'}"
    )
    for uri in ("sqlite:////abs/mlflow.db", "http://mlflow:5000", None):
        assert bench_serving.absolute_sqlite(uri) == uri

    onnx, meta = untrained_product_model("small_cnn", 64, 160)
    int8, int8_meta, why = bench_serving.serving_precision(onnx, meta, "int8")
    assert int8 != onnx and int8_meta.precision == "int8" and why == "int8 (asked)"
    assert bench_serving.serving_precision(onnx, meta, "fp32")[:2] == (onnx, meta)


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
    assert bench_model_cv.main([*argv, "--static-int8", "--invariance"]) == 0
    saved = json.loads(out.read_text())
    assert saved["pool_size"] == len(index) - 3 and saved["excluded"] == 3
    result = saved["results"]["small_cnn_64"]
    assert [f["fold"] for f in result["folds"]] == [0, 1, 2]
    assert sum(f["n_test"] for f in result["folds"]) == result["n_total"] == len(index) - 3
    lo, hi = result["f1_macro_ci95"]
    assert lo <= result["f1_macro_mean"] <= hi
    assert "f1_macro_tta_mean" in result and result["model_mb"] > 0
    assert result["onnx_batch1_latency_p50_ms"] > 0
    # every fold's model also scored as the static int8 model training would serve
    assert all(0 <= f["static_int8_agreement"] <= 1 for f in result["folds"])
    q = result["static_int8"]
    assert q["f1_diff_vs_fp32_ci95"][0] == pytest.approx(
        q["f1_macro_mean"] - q["onnx_fp32_f1_macro_mean"]
    )
    thresholds = [row["threshold"] for row in result["confidence_calibrated"]]
    assert thresholds == sorted(thresholds) and 0.75 in thresholds
    # labels kept under each of the task's edits, over every held-out image
    assert list(result["invariance"]) == task_params()["label_preserving_edits"]
    assert all(0 <= v <= 1 for v in result["invariance"].values())
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


def _saved_run(
    path: Path,
    name: str,
    fold_f1: list[float],
    seed: int = 42,
    strategy: str | None = None,
    invariance: dict[str, float] | None = None,
) -> str:
    """A bench_model_cv ``--json`` file holding one candidate with these fold F1s (runs
    saved before the linear probe have no ``strategy``: fine-tuning)."""
    n = len(fold_f1)
    result = {
        **({"strategy": strategy} if strategy else {}),
        "folds": [{"fold": k, "f1_macro": f1} for k, f1 in enumerate(fold_f1)],
        "f1_macro_mean": sum(fold_f1) / n,
        "f1_macro_ci95": [min(fold_f1), max(fold_f1)],
        "errors_total": 3,
        "n_total": 60,
        "ece_mean": 0.05,
        "ece_calibrated_mean": 0.04,
        "temperature_mean": 1.0,
        "model_mb": 13.5,
        "onnx_batch1_latency_p50_ms": 3.0,
        "fit_seconds_mean": 10.0,
        **({"invariance": invariance} if invariance else {}),
    }
    header = {"pool": "p", "pool_size": 60, "excluded": 0, "exclude_ids": None, "folds": n}
    header |= {"val_fraction": 0.15, "seed": seed, "epochs": 12}
    path.write_text(json.dumps({**header, "results": {name: result}}))
    return str(path)


def test_saved_runs_over_the_same_folds_are_compared_fold_by_fold(benchmarks, tmp_path, capsys):
    import bench_model_cv

    default = _saved_run(tmp_path / "default.json", "lite0_128", [0.9, 1.0, 0.8])
    other = _saved_run(tmp_path / "other.json", "lite0_192", [0.95, 1.0, 0.85])
    assert bench_model_cv.main(["--from-json", f"{default},{other}"]) == 0
    rows = [line for line in capsys.readouterr().out.splitlines() if line.startswith("| lite0_192")]
    assert len(rows) == 1 and "| +0.0333 [" in rows[0]

    reseeded = _saved_run(tmp_path / "reseeded.json", "lite0_192", [0.95, 1.0, 0.85], seed=7)
    with pytest.raises(SystemExit):
        bench_model_cv.main(["--from-json", f"{default},{reseeded}"])
    err = capsys.readouterr().err
    assert "other folds" in err and "['seed']" in err
    with pytest.raises(ValueError, match="in an earlier file too"):
        bench_model_cv.load_saved([default, default])


KEPT_1, KEPT_2 = {"mirror": 1.0, "blur": 0.9}, {"mirror": 0.9, "blur": 0.8}


def test_repeated_cv_pairs_each_seed_with_the_default_cut_the_same_way(
    benchmarks, tmp_path, capsys
):
    import bench_model_cv

    files = [
        _saved_run(tmp_path / "d1.json", "lite0_128", [0.9, 1.0], seed=1),
        _saved_run(tmp_path / "d2.json", "lite0_128", [0.9, 0.9], seed=2),
        _saved_run(tmp_path / "c1.json", "lite0_224", [1.0, 1.0], seed=1, invariance=KEPT_1),
        _saved_run(tmp_path / "c2.json", "lite0_224", [0.9, 0.8], seed=2, invariance=KEPT_2),
    ]
    curated = json.loads(Path(files[0]).read_text()) | {"excluded": 3, "pool_size": 57}
    (tmp_path / "k1.json").write_text(json.dumps(curated))
    runs = bench_model_cv.repeated_runs([*files, str(tmp_path / "k1.json")])
    summary = bench_model_cv.repeated_summary(runs, "lite0_128 12ep")
    cand = summary["lite0_224 12ep"]
    assert cand["seeds"] == [1, 2] and cand["folds"] == 4
    assert cand["f1_macro_mean"] == pytest.approx(0.925)
    # seed 1: 1.0 - 0.95 = +0.05, seed 2: 0.85 - 0.90 = -0.05
    pair = cand["paired_vs_default"]
    assert pair["seeds"] == [1, 2] and (pair["better"], pair["worse"]) == (1, 1)
    assert pair["diff_ci95"][0] == pytest.approx(0.0) and pair["diff_ci95"][1] < -0.05
    assert "paired_vs_default" not in summary["lite0_128 12ep"]
    # a pool with images left out is other folds: reported on its own, never paired
    assert "paired_vs_default" not in summary["lite0_128 12ep -3 excluded"]
    assert summary["lite0_128 12ep -3 excluded"]["n_total"] == 60

    assert bench_model_cv.main(["--repeated", str(tmp_path / "[cd]*.json")]) == 0
    out = capsys.readouterr().out
    assert "| lite0_224 12ep | 1-2 | 4 | 0.9250 [" in out and "| 1 / 1 |" in out
    # labels kept under each edit, pooled over every held-out prediction of both seeds
    assert cand["invariance"] == pytest.approx({"mirror": 0.95, "blur": 0.85})
    assert "invariance" not in summary["lite0_128 12ep"]
    assert "| lite0_224 12ep | 0.950 | 0.850 |" in out
    with pytest.raises(ValueError, match="seed 1 is in an earlier file too"):
        bench_model_cv.repeated_runs([files[0], files[0]])
    assert bench_model_cv._ranges([1, 2, 3, 5, 42]) == "1-3, 5, 42"


def test_repeated_cv_pairs_with_the_probe_default_or_the_baseline_asked_for(
    benchmarks, tmp_path, capsys
):
    import bench_model_cv

    for seed, (probe, tuned) in {
        1: ([1.0, 0.9], [0.9, 0.9]),
        2: ([0.95, 0.95], [0.9, 0.8]),
    }.items():
        _saved_run(tmp_path / f"p{seed}.json", "lite0_160_probe", probe, seed, "linear_probe")
        _saved_run(tmp_path / f"f{seed}.json", "lite0_128", tuned, seed)
    pattern = str(tmp_path / "*.json")
    # the probe has no epoch budget in its label; it is the default, so the reference
    assert bench_model_cv.main(["--repeated", pattern]) == 0
    out = capsys.readouterr().out
    assert "| lite0_160_probe | 1-2 | 4 | 0.9500 [" in out
    assert "| lite0_128 12ep | 1-2 | 4 | 0.8750 [" in out and "| 0 / 2 |" in out
    # --baseline: the former default as the reference instead
    assert bench_model_cv.main(["--repeated", pattern, "--baseline", "lite0_128"]) == 0
    rows = [line for line in capsys.readouterr().out.splitlines() if "lite0_160_probe" in line]
    assert len(rows) == 1 and "| +0.0750 [" in rows[0] and "| 2 / 0 |" in rows[0]
    assert bench_model_cv.baseline_of({"lite0_128": 1}) == "lite0_128"  # runs before the probe
    assert bench_model_cv.baseline_of({"lite0_224": 1}) is None


def test_bench_int8_quantizes_and_compares_with_the_float_model(benchmarks, tmp_path):
    import bench_int8

    out = tmp_path / "int8.json"
    argv = ["--model-dir", str(tmp_path / "no-model"), "--project", str(tmp_path)]
    argv += ["--architecture", "small_cnn", "--image-size", "64", "--resize-size", "64"]
    argv += ["--calibration", "8", "--runs", "20", "--json", str(out)]
    assert bench_int8.main(argv) == 0
    figures = json.loads(out.read_text())
    assert figures["mode"] == "untrained head" and figures["calibration_images"] == 8
    fp32, int8 = figures["models"]["float"], figures["models"]["int8"]
    assert int8["size_mb"] < fp32["size_mb"]  # int8 weights
    assert int8["batch1_p50_ms"] > 0 and fp32["batch8_p50_ms"] > 0
    assert 0 <= int8["samples_f1_macro"] <= 1 and 0 <= figures["agreement"]["samples"] <= 1


def test_bench_serving_compares_with_the_mean_of_the_floors_around_the_http_load(benchmarks):
    """The floor is measured before and after the HTTP load; the ratios use the mean of the
    two per batch size, and the best batch of those means (not the best of either run)."""
    import bench_serving

    before = {
        "lat": [0.002, 0.003],
        "cores": 2,
        "rates": {1: 1000.0, 2: 1100.0, 4: 900.0},
        "best": 2,
        "cpu_ms": {1: 2.0, 2: 1.8, 4: 2.2},
    }
    after = {
        "lat": [0.004],
        "cores": 2,
        "rates": {1: 1000.0, 2: 700.0, 4: 1000.0},
        "best": 4,
        "cpu_ms": {1: 2.0, 2: 2.6, 4: 1.8},
    }
    floor = bench_serving.bracket_floors(before, after)
    assert floor["rates"] == {1: 1000.0, 2: 900.0, 4: 950.0}
    assert floor["best"] == 1  # the best mean, though each run alone had another best
    assert floor["cpu_ms"] == pytest.approx({1: 2.0, 2: 2.2, 4: 2.0})
    assert floor["lat"] == [0.002, 0.003, 0.004] and floor["cores"] == 2
    assert floor["bracket"] == (1100.0, 1000.0)


def test_bench_int8_measures_a_trained_model_whose_meta_names_its_ood_detector(
    benchmarks, tmp_path
):
    """After `make demo`, data/06_models holds the float export (no detector yet) beside a
    serving meta that names the detector the served graph carries: the benchmark measures
    the float export against its int8 version (it refused to open it)."""
    import bench_int8
    from product_model import untrained_product_model

    from plants_mlops.model import behaviour
    from plants_mlops.model.devdata import from_folder

    project = tmp_path / "project"
    raw = _small_pool(project / "data" / "01_raw", per_label=12)
    for path in raw.glob("*/*.jpg"):  # the raw layer names files by their sha256
        path.rename(path.with_name(f"{hashlib.sha256(path.read_bytes()).hexdigest()}.jpg"))
    index = from_folder(raw, fractions=(0.5, 0.25)).dataset_index
    (project / "data" / "03_primary").mkdir(parents=True)
    index.to_parquet(project / "data" / "03_primary" / "dataset_index.parquet")
    models = project / "data" / "06_models"
    models.mkdir()
    onnx, meta = untrained_product_model("small_cnn", 64, 160)
    (models / "model_fp32.onnx").write_bytes(onnx)
    ood = {"method": "knn", "threshold": 0.5, "max_flag_rate": 0.05, "val_flag_rate": 0.04}
    ood |= {"val_images": 6, "train_images": 12, "k": 2, "views": 1, "output": "ood_score"}
    (models / "serving_meta.json").write_text(json.dumps({**meta.to_dict(), "ood": ood}))

    out = tmp_path / "int8.json"
    argv = ["--model-dir", str(models), "--project", str(project), "--runs", "5"]
    assert bench_int8.main([*argv, "--calibration", "4", "--json", str(out)]) == 0
    figures = json.loads(out.read_text())
    assert figures["mode"] == "trained" and figures["calibration_images"] == 4
    changed, compared = figures["edited_changed"]
    evaluated = int((index["split"] != "train").sum())  # val and test, under every edit
    assert compared == len(behaviour.EDITS) * evaluated
    assert 0 <= changed <= compared and set(figures["agreement"]) == {"val", "test", "edited"}


def test_bench_behaviour_scores_the_default_recipe_on_a_small_pool(benchmarks, tmp_path):
    """`make bench` runs it: the product's nodes end to end, with the test F1 over the
    task's labels (it called the metrics without them)."""
    import bench_behaviour

    out = tmp_path / "behaviour.json"
    pool = _small_pool(tmp_path / "pool", per_label=20)
    assert (
        bench_behaviour.main(["--pool", str(pool), "--variants", "default", "--json", str(out)])
        == 0
    )
    (row,) = json.loads(out.read_text())
    assert row["variant"] == "default" and 0 <= row["test_f1_macro"] <= 1
    assert row["precision"] in ("fp32", "int8") and row["model_mb"] > 0
    assert {"invariance_mirror", "ood_flagged", "false_flags"} <= set(row)
