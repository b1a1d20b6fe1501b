"""Evaluation nodes in process: the exported ONNX model, the two baselines and the current
champion on the same test split, then one report (JSON, HTML page, typed stage summary).

A small model (small_cnn, 64 px, random weights) small_model on a small dataset built from the
samples; MLflow is a real store (SQLite in a temp folder) with real registered versions.
"""

from __future__ import annotations

import pytest
from support import model_data
from support.champion import register_champion, unique_model_name
from support.params import base_labels, deep_merge, stage_params

from plants_mlops.contracts import ALIAS_CHAMPION
from plants_mlops.model import registry, tracking
from plants_mlops.pipelines.evaluation.nodes import (
    compile_report,
    evaluate_baselines,
    evaluate_candidate,
    evaluate_champion,
)
from plants_mlops.pipelines.registry.nodes import register_and_gate
from plants_mlops.pipelines.training.nodes import log_training_run
from plants_mlops.summaries import StageSummary

LABELS = base_labels()  # the shipped task's (conf/base/task.yml)

SUBSET = {"max_images_per_split": None, "seed": 0}


@pytest.fixture(scope="module")
def store(tmp_path_factory) -> str:
    """A real MLflow tracking store (SQLite) for this module."""
    return f"sqlite:///{tmp_path_factory.mktemp('mlflow') / 'mlflow.db'}"


@pytest.fixture(scope="module")
def logged(small_model, store) -> tuple[dict, dict]:
    """(serving_meta, training_report) of the small_model model's MLflow run."""
    d = small_model.data
    params = deep_merge(
        model_data.SMALL_MODEL, {"mlflow": {"enabled": True, "tracking_uri": store}}
    )
    meta, report, _ = log_training_run(
        small_model.checkpoint,
        small_model.onnx,
        small_model.history,
        d.dataset_index,
        d.fmt_images,
        d.dataset_fingerprint,
        params,
    )
    return meta, report


def eval_params(store: str, model_name: str, log_to_run: bool = False, **overrides) -> dict:
    return stage_params(
        "evaluation",
        model_name=model_name,
        subset=SUBSET,
        mlflow={"tracking_uri": store, "log_to_run": log_to_run},
        **overrides,
    )


def n_test(small_data: model_data.ModelData) -> int:
    return int((small_data.dataset_index["split"] == "test").sum())


def test_candidate_metrics_are_measured_on_every_test_image(small_model, logged, small_data):
    metrics = evaluate_candidate(
        small_model.onnx, logged[0], small_data.dataset_index, small_data.fmt_images, SUBSET
    )
    assert metrics["n"] == n_test(small_data) > 0
    assert sum(map(sum, metrics["confusion_matrix"])) == metrics["n"]
    for key in ("accuracy", "precision_macro", "recall_macro", "f1_macro", "roc_auc"):
        assert 0.0 <= metrics[key] <= 1.0, key


def test_a_subset_caps_the_test_images_evaluated(small_model, logged, small_data):
    capped = {"max_images_per_split": 5, "seed": 0}
    metrics = evaluate_candidate(
        small_model.onnx, logged[0], small_data.dataset_index, small_data.fmt_images, capped
    )
    assert metrics["n"] == 5


def test_baselines_use_the_train_majority_and_a_colour_histogram_on_the_test_split(small_data):
    baselines = evaluate_baselines(
        {"labels": list(LABELS)},
        small_data.dataset_index,
        small_data.fmt_images,
        stage_params("evaluation")["baselines"],
        SUBSET,
    )
    assert set(baselines) == {"majority_class", "colour_histogram_logreg"}
    train_labels = small_data.dataset_index.loc[
        small_data.dataset_index["split"] == "train", "label"
    ]
    majority = baselines["majority_class"]
    assert majority["label"] == train_labels.value_counts().idxmax()
    assert majority["n"] == baselines["colour_histogram_logreg"]["n"] == n_test(small_data)
    assert baselines["colour_histogram_logreg"]["bins"] == 4
    # the majority baseline predicts one class: its macro F1 cannot beat 0.5 on two
    assert majority["f1_macro"] <= 0.5


def test_without_a_champion_the_comparison_is_empty_and_can_be_switched_off(
    logged, small_data, store
):
    name = unique_model_name("plants-eval-none")
    champion = evaluate_champion(
        logged[0], small_data.dataset_index, small_data.fmt_images, eval_params(store, name), SUBSET
    )
    assert champion == {"version": None}
    off = evaluate_champion(
        logged[0],
        small_data.dataset_index,
        small_data.fmt_images,
        eval_params(store, name, compare_champion=False),
        SUBSET,
    )
    assert off == {"version": None, "skipped": "compare_champion is false"}


def test_the_champion_is_measured_on_the_same_test_split(logged, small_data, store):
    name = unique_model_name("plants-eval-champion")
    reg = register_champion(store, name=name)
    champion = evaluate_champion(
        logged[0], small_data.dataset_index, small_data.fmt_images, eval_params(store, name), SUBSET
    )
    assert champion["version"] == reg.version and champion["run_id"] == reg.run_id
    assert champion["architecture"] == "tiny-cnn"
    assert champion["n"] == n_test(small_data)
    assert 0.0 <= champion["f1_macro"] <= 1.0
    assert "error" not in champion and "note" not in champion


def _inputs(small_model, logged, small_data, store, champion_name):
    meta, training_report = logged
    candidate = evaluate_candidate(
        small_model.onnx, meta, small_data.dataset_index, small_data.fmt_images, SUBSET
    )
    baselines = evaluate_baselines(
        {"labels": list(LABELS)},
        small_data.dataset_index,
        small_data.fmt_images,
        stage_params("evaluation")["baselines"],
        SUBSET,
    )
    champion = evaluate_champion(
        meta,
        small_data.dataset_index,
        small_data.fmt_images,
        eval_params(store, champion_name),
        SUBSET,
    )
    return candidate, baselines, champion, training_report


def test_a_champion_that_is_this_very_run_says_so(small_model, logged, small_data, store):
    meta, training_report = logged
    name = unique_model_name("plants-eval-self")
    report = compile_report(
        *_inputs(small_model, logged, small_data, store, name), eval_params(store, name)
    )[0]
    gate = {"min_f1": 0.0, "require_beat_baseline": False}
    register_and_gate(
        training_report,
        report,
        stage_params("registry", model_name=name, gate=gate, mlflow={"tracking_uri": store}),
    )
    cl = tracking.client(store)
    assert registry.alias_version(cl, ALIAS_CHAMPION, name) is not None
    champion = evaluate_champion(
        meta, small_data.dataset_index, small_data.fmt_images, eval_params(store, name), SUBSET
    )
    assert champion["note"] == "the champion is this very run's model"
    assert champion["run_id"] == training_report["mlflow_run_id"]


def test_a_champion_that_fails_to_load_gives_an_error_not_a_failed_evaluation(
    logged, small_data, store
):
    name = unique_model_name("plants-eval-broken")
    reg = register_champion(store, name=name, broken=True)
    champion = evaluate_champion(
        logged[0], small_data.dataset_index, small_data.fmt_images, eval_params(store, name), SUBSET
    )
    assert champion["version"] == reg.version
    assert "serving contract" in champion["error"]
    assert "f1_macro" not in champion


def test_the_report_json_html_and_summary_agree_and_the_run_gets_eval_metrics(
    small_model, logged, small_data, store
):
    name = unique_model_name("plants-eval-report")
    reg = register_champion(store, name=name)
    candidate, baselines, champion, training_report = _inputs(
        small_model, logged, small_data, store, name
    )
    params = eval_params(store, name, log_to_run=True)
    report, html, summary = compile_report(candidate, baselines, champion, training_report, params)

    # JSON
    assert report["mlflow_run_id"] == training_report["mlflow_run_id"]
    assert report["dataset_fingerprint"] == small_data.dataset_fingerprint["fingerprint"]
    assert report["test_size"] == candidate["n"] == n_test(small_data)
    # the candidate's test predictions draw the figures; the JSON keeps the metrics
    assert "predictions" not in report["model"]
    assert report["model"] == {k: v for k, v in candidate.items() if k != "predictions"}
    assert report["baselines"] == baselines
    assert report["champion"] == champion and champion["version"] == reg.version
    assert report["best_baseline_f1_macro"] == max(b["f1_macro"] for b in baselines.values())
    assert report["metrics"] == {
        k: candidate[k]
        for k in ("accuracy", "precision_macro", "recall_macro", "f1_macro", "roc_auc")
    }

    # HTML: the metrics table has a row per model, the champion's included
    assert html.startswith("<!doctype html>") and "<h1>Evaluation report</h1>" in html
    assert "<th>f1_macro</th>" in html
    for row in (
        "this model",
        "baseline: majority_class",
        "baseline: colour_histogram_logreg",
        f"champion v{reg.version}",
    ):
        assert f"<td>{row}</td>" in html, row
    assert f"<td>{candidate['f1_macro']:.4f}</td>" in html
    assert f"{n_test(small_data)} test images" in html
    # the figures, inlined: no one has to open MLflow to see them
    for alt in ("confusion matrix", "roc curve", "pr curve", "calibration"):
        assert f'<img alt="{alt}" src="data:image/png;base64,' in html, alt

    # typed summary: evaluation registers nothing; it names the champion it compared with
    typed = StageSummary.model_validate(summary)
    assert typed.stage == "evaluation"
    assert typed.model_version is None
    assert typed.champion_version == reg.version
    assert typed.mlflow_run_id == training_report["mlflow_run_id"]
    assert typed.counts == {"test_images": n_test(small_data)}
    assert typed.metrics["test_f1_macro"] == pytest.approx(candidate["f1_macro"])
    assert typed.metrics["champion_f1_macro"] == pytest.approx(champion["f1_macro"])
    assert typed.metrics["best_baseline_f1_macro"] == pytest.approx(
        report["best_baseline_f1_macro"]
    )

    # the training run got the eval_*, baseline_* and champion_* metrics and the report
    cl = tracking.client(store)
    run = cl.get_run(training_report["mlflow_run_id"])
    assert run.data.metrics["eval/f1_macro"] == pytest.approx(candidate["f1_macro"])
    assert "baseline_majority_class/f1_macro" in run.data.metrics
    assert run.data.metrics["champion/f1_macro"] == pytest.approx(champion["f1_macro"])
    artifacts = {a.path for a in cl.list_artifacts(run.info.run_id, "evaluation")}
    assert "evaluation/evaluation_report.json" in artifacts
    figures = {a.path for a in cl.list_artifacts(run.info.run_id, "figures")}
    assert {f"figures/eval_{n}.png" for n in ("roc_curve", "pr_curve", "calibration")} <= figures


def test_a_report_with_a_broken_champion_names_the_error_and_has_no_champion_row(
    small_model, logged, small_data, store
):
    name = unique_model_name("plants-eval-broken-report")
    register_champion(store, name=name, broken=True)
    candidate, baselines, champion, training_report = _inputs(
        small_model, logged, small_data, store, name
    )
    report, html, summary = compile_report(
        candidate, baselines, champion, training_report, eval_params(store, name)
    )
    assert report["champion"]["error"]
    assert "champion v" not in html and "serving contract" in html
    typed = StageSummary.model_validate(summary)
    assert typed.model_version is None and typed.champion_version == champion["version"]
    assert "champion_f1_macro" not in typed.metrics
