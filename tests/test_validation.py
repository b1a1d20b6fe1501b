"""Validation: Pandera schemas and dataset rules; a failure stops the run with a named rule."""

from __future__ import annotations

import hashlib

import pandas as pd
import pytest
from data_testlib import read_json
from support.params import deep_merge, stage_params, task_params

from plants_mlops import imaging
from plants_mlops.pipelines.validation.nodes import (
    DataValidationError,
    enforce_validation,
    validate_data,
)

# A dozen images: small classes, loose split shares, a few missing rows are fine.
PARAMS = stage_params("validation", max_missing_rate=0.2)
TASK = task_params(class_balance={"min_images_per_class": 3, "split_tolerance": 0.5})
FORMATTING = stage_params(
    "formatting", image_size=160, split={"train": 0.7, "val": 0.15, "test": 0.15}
)


def _good(n_per_label=6):
    """A consistent (plants_data, fmt_index, dataset_index) triple."""
    table, fmt = [], []
    splits = ["train", "train", "train", "train", "val", "test"]
    for li, label in enumerate(TASK["labels"]):
        for i in range(n_per_label):
            sha = hashlib.sha256(f"{label}{i}".encode()).hexdigest()
            rid = li * n_per_label + i + 1
            table.append(
                {
                    "id": rid,
                    "url_source": f"https://x/{label}/{i}.jpg",
                    "label": label,
                    "url_s3": f"data/01_raw/{label}/{sha}.jpg",
                    "sha256": sha,
                    "status": "ok",
                    "error": None,
                }
            )
            fmt.append(
                {
                    "sha256": sha,
                    "label": label,
                    "image_key": f"{label}/{sha}",
                    "source_id": rid,
                    "url_source": f"https://x/{label}/{i}.jpg",
                    **{c: 0.4 for c in imaging.STAT_COLUMNS},
                    "width": 160.0,
                    "height": 160.0,
                    "orig_width": 300.0,
                    "orig_height": 200.0,
                    "split": splits[i % len(splits)],
                }
            )
    dataset = pd.DataFrame(fmt)
    return pd.DataFrame(table), dataset.drop(columns="split"), dataset


def _failed(report):
    return {(c["dataset"], c["rule"]): c for c in report["checks"] if not c["passed"]}


def test_consistent_data_passes_every_check():
    report = validate_data(*_good(), PARAMS, FORMATTING, TASK)
    assert report["passed"] is True and not _failed(report)
    assert enforce_validation(report, {"fingerprint": "abc"})["passed"] is True
    rules = {c["rule"] for c in report["checks"]}
    assert {"min_images_per_class", "class_balance", "split_proportions", "missing_rate"} <= rules


def test_row_rules_name_the_failing_rows():
    table, fmt, dataset = _good()
    fmt.loc[0, "label"] = "cat"  # label set
    fmt.loc[1, "width"] = 128.0  # size
    dataset.loc[2, "sha256"] = dataset.loc[3, "sha256"]  # uniqueness
    table.loc[4, "status"] = "failed"  # failed without a reason
    report = validate_data(table, fmt, dataset, PARAMS, FORMATTING, TASK)
    failed = _failed(report)
    assert failed[("fmt_index", "label_set")]["failing_rows"] == [fmt.loc[0, "image_key"]]
    assert failed[("fmt_index", "fmt_size")]["failing_rows"] == [fmt.loc[1, "image_key"]]
    assert set(failed[("dataset_index", "field_uniqueness")]["failing_rows"]) == {
        dataset.loc[2, "image_key"],
        dataset.loc[3, "image_key"],
    }
    assert failed[("plants_data", "failed_rows_have_a_reason")]["failing_rows"] == [5]
    with pytest.raises(DataValidationError, match="rule label_set on fmt_index"):
        enforce_validation(report)


def test_dataset_rules_catch_imbalance_small_classes_skewed_splits_and_missing_images():
    table, fmt, dataset = _good()
    grass = dataset["label"] == "grass"
    keep = ~grass | (dataset.groupby("label").cumcount() < 2)
    dataset = dataset[keep].assign(split="train")
    table.loc[table.index[:4], ["status", "error"]] = ["failed", "http_404: gone"]
    fmt = fmt[~fmt["sha256"].isin(table.loc[table.index[:4], "sha256"])]
    report = validate_data(
        table,
        fmt,
        dataset,
        PARAMS,
        FORMATTING,
        deep_merge(TASK, {"class_balance.split_tolerance": 0.1}),
    )
    failed = _failed(report)
    assert failed[("dataset_index", "min_images_per_class")]["failing_rows"] == ["grass"]
    assert failed[("dataset_index", "class_balance")]["failing_rows"] == ["grass"]
    assert set(failed[("dataset_index", "split_proportions")]["failing_rows"]) == {
        "train",
        "val",
        "test",
    }
    assert failed[("dataset_index", "every_split_has_every_class")]["n_failing"] == 4
    missing = failed[("plants_data", "missing_rate")]
    assert missing["failing_rows"] == [1, 2, 3, 4] and "http_404" in missing["detail"]


def test_the_pipeline_holds_one_large_dataset_per_node_and_reports_as_validate_data():
    """Each node loads at most one of the table and the two indexes (at 100,000 rows they
    are ~40 MB each: holding the three at once made validation's memory grow with N), and
    the report the pipeline assembles from its nodes is the one ``validate_data`` gives."""
    from kedro.io import DataCatalog, MemoryDataset
    from kedro.runner import SequentialRunner

    from plants_mlops.pipelines.validation.pipeline import create_pipeline

    large = {"plants_data", "fmt_index", "dataset_index"}
    pipeline = create_pipeline()
    for n in pipeline.nodes:
        assert len(large & set(n.inputs)) <= 1, (n.name, n.inputs)

    table, fmt, dataset = _good()
    table.loc[4, "status"] = "failed"  # a failing rule, so the run stops after the report
    near = {"max_distance": 8, "pairs": []}
    catalog = DataCatalog()
    for name, value in {
        "plants_data": table,
        "fmt_index": fmt,
        "dataset_index": dataset,
        "params:validation": PARAMS,
        "params:formatting": FORMATTING,
        "params:task": TASK,
        "curation_near_duplicates": near,
        "dataset_fingerprint": {"fingerprint": "abc"},
    }.items():
        catalog[name] = value
    catalog["validation_report"] = MemoryDataset()
    with pytest.raises(DataValidationError, match="failed_rows_have_a_reason"):
        SequentialRunner().run(pipeline, catalog)
    ran = catalog.load("validation_report")
    expected = validate_data(table, fmt, dataset, PARAMS, FORMATTING, TASK, near)
    assert ran["checks"] == expected["checks"] and ran["checks"]
    assert {k: v for k, v in ran.items() if k != "checked_at"} == {
        k: v for k, v in expected.items() if k != "checked_at"
    }


def test_a_failing_check_stops_the_kedro_run_and_the_report_still_lands(data_project):
    """On the full manifest's layers (200 images per class), a threshold of 250 fails."""
    proc = data_project.run(
        "validation", params={"task.class_balance.min_images_per_class": 250}, check=False
    )
    assert proc.returncode != 0
    output = proc.stdout + proc.stderr
    assert "DataValidationError" in output and "min_images_per_class" in output
    report = read_json(data_project.path / "data" / "08_reporting" / "validation_report.json")
    assert report["passed"] is False
    failed = _failed(report)
    assert set(failed) == {("dataset_index", "min_images_per_class")}
    assert sorted(failed[("dataset_index", "min_images_per_class")]["failing_rows"]) == [
        "dandelion",
        "grass",
    ]
    # With the shipped thresholds the same data passes.
    data_project.run("validation")
    assert read_json(data_project.path / "data" / "08_reporting" / "validation_report.json")[
        "passed"
    ]
