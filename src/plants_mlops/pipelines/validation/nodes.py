"""Validation: Pandera schemas (row rules) and dataset rules (counts, balance, splits).

``validate_data`` never raises: it returns the report, which the catalog saves to
08_reporting. ``enforce_validation`` then stops the run when a rule failed, naming the rule,
the dataset and the failing rows.
"""

from __future__ import annotations

import logging
from typing import Any

import pandas as pd
import pandera.pandas as pa

from plants_mlops import contracts
from plants_mlops.db import STATUSES, utcnow
from plants_mlops.params import (
    FormattingParams,
    TaskParams,
    ValidationParams,
    parse,
    task_labels,
)

log = logging.getLogger(__name__)

HEX64 = r"^[0-9a-f]{64}$"
UNIT_STATS = ("brightness", "contrast", "mean_r", "mean_g", "mean_b")


class DataValidationError(Exception):
    """The data broke a validation rule; the message names the rule and the failing rows."""


def plants_data_schema(labels: tuple[str, ...]) -> pa.DataFrameSchema:
    ok = contracts.STATUS_OK
    return pa.DataFrameSchema(
        {
            "id": pa.Column(int, unique=True),
            "url_source": pa.Column(str, unique=True, nullable=False),
            "label": pa.Column(str, pa.Check.isin(labels, error="label_set")),
            "status": pa.Column(str, pa.Check.isin(STATUSES, error="status_set")),
            "sha256": pa.Column(
                str, pa.Check.str_matches(HEX64, error="sha256_hex"), nullable=True
            ),
            "url_s3": pa.Column(str, nullable=True),
            "error": pa.Column(str, nullable=True),
        },
        checks=[
            pa.Check(
                lambda df: (df["status"] != ok) | (df["sha256"].notna() & df["url_s3"].notna()),
                name="ok_rows_have_sha256_and_url_s3",
                element_wise=False,
            ),
            pa.Check(
                lambda df: (df["status"] != contracts.STATUS_FAILED) | df["error"].notna(),
                name="failed_rows_have_a_reason",
            ),
        ],
        name="plants_data",
        coerce=False,
    )


def fmt_index_schema(
    image_size: int, min_source_side: int, labels: tuple[str, ...]
) -> pa.DataFrameSchema:
    stats = {
        c: pa.Column(float, pa.Check.in_range(0.0, 1.0, error=f"{c}_in_unit_range"))
        for c in UNIT_STATS
    }
    return pa.DataFrameSchema(
        {
            "sha256": pa.Column(str, pa.Check.str_matches(HEX64, error="sha256_hex")),
            "label": pa.Column(str, pa.Check.isin(labels, error="label_set")),
            "image_key": pa.Column(str, unique=True),
            "source_id": pa.Column(int),
            "url_source": pa.Column(str),
            "width": pa.Column(float, pa.Check.eq(image_size, error="fmt_size")),
            "height": pa.Column(float, pa.Check.eq(image_size, error="fmt_size")),
            **stats,
            "sharpness": pa.Column(float, pa.Check.ge(0.0, error="sharpness_non_negative")),
            "orig_width": pa.Column(float, pa.Check.ge(min_source_side, error="min_source_side")),
            "orig_height": pa.Column(float, pa.Check.ge(min_source_side, error="min_source_side")),
        },
        checks=[
            pa.Check(
                lambda df: df["image_key"] == df["label"] + "/" + df["sha256"],
                name="image_key_is_label_slash_sha256",
            )
        ],
        name="fmt_index",
        strict=False,
    )


def dataset_index_schema(
    image_size: int, min_source_side: int, labels: tuple[str, ...]
) -> pa.DataFrameSchema:
    base = fmt_index_schema(image_size, min_source_side, labels)
    return pa.DataFrameSchema(
        {
            **base.columns,
            "sha256": pa.Column(str, pa.Check.str_matches(HEX64, error="sha256_hex"), unique=True),
            "split": pa.Column(str, pa.Check.isin(contracts.SPLITS, error="split_set")),
        },
        checks=base.checks,
        name="dataset_index",
    )


def _row_ids(df: pd.DataFrame, index_values, id_column: str) -> list:
    ids = []
    for i in index_values:
        if i in df.index and id_column in df.columns:
            ids.append(_py(df.loc[i, id_column]))
        elif i is not None and not (isinstance(i, float) and pd.isna(i)):
            ids.append(_py(i))
    return ids


def _py(v):
    return v.item() if hasattr(v, "item") else v


def schema_checks(
    df: pd.DataFrame, schema: pa.DataFrameSchema, id_column: str, max_rows: int
) -> list[dict[str, Any]]:
    """Run a schema lazily; one report entry per (column, rule), with the failing rows."""
    try:
        # inplace: nothing is coerced, so pandera's own copy of the frame was only memory
        schema.validate(df, lazy=True, inplace=True)
        return [
            _check(schema.name, f"{schema.name}_schema", True, f"{len(df)} rows match the schema")
        ]
    except pa.errors.SchemaErrors as err:
        cases = err.failure_cases
    entries = []
    for check, group in cases.groupby("check", sort=True):
        columns = sorted({c for c in group["column"].dropna().unique() if c})
        failing = _row_ids(df, group["index"].dropna().unique().tolist(), id_column)
        examples = [_py(v) for v in group.drop_duplicates("index")["failure_case"].head(5)]
        where = f"column {columns[0]}" if len(columns) == 1 else "rows"
        n = len(failing) or len(group)
        entries.append(
            _check(
                schema.name,
                str(check),
                False,
                f"{where}: {n} failing (e.g. {examples})",
                failing[:max_rows],
                n_failing=n,
            )
        )
    return entries


def _check(dataset, rule, passed, detail, failing_rows=None, n_failing=0) -> dict[str, Any]:
    return {
        "dataset": dataset,
        "rule": rule,
        "passed": bool(passed),
        "detail": detail,
        "n_failing": int(n_failing),
        "failing_rows": failing_rows or [],
    }


def dataset_rules(index: pd.DataFrame, task: TaskParams, split: dict) -> list[dict[str, Any]]:
    """Rules on the whole dataset index: class sizes, balance, split proportions (overall
    and per class), with the task's thresholds (``task.class_balance``)."""
    checks = []
    labels, rules = task.labels, task.class_balance
    counts = {lab: int((index["label"] == lab).sum()) for lab in labels}
    minimum = rules.min_images_per_class
    short = [lab for lab, n in counts.items() if n < minimum]
    checks.append(
        _check(
            "dataset_index",
            "min_images_per_class",
            not short,
            f"images per class {counts}; minimum {minimum}",
            short,
            len(short),
        )
    )
    ratio = min(counts.values()) / max(max(counts.values()), 1)
    min_ratio = rules.min_class_ratio
    checks.append(
        _check(
            "dataset_index",
            "class_balance",
            ratio >= min_ratio,
            f"smallest/largest class = {ratio:.3f}; minimum {min_ratio}",
            [] if ratio >= min_ratio else [min(counts, key=counts.get)],
        )
    )
    n = max(len(index), 1)
    tol = rules.split_tolerance
    off = {}
    for s in contracts.SPLITS:
        share = float((index["split"] == s).sum()) / n
        if abs(share - float(split[s])) > tol:
            off[s] = round(share, 3)
    shares = {s: round(float((index["split"] == s).sum()) / n, 3) for s in contracts.SPLITS}
    checks.append(
        _check(
            "dataset_index",
            "split_proportions",
            not off,
            f"split shares {shares}; expected {{{', '.join(f'{s}: {split[s]}' for s in contracts.SPLITS)}}} +/- {tol}",
            sorted(off),
            len(off),
        )
    )
    checks.append(per_class_split_rule(index, split, tol, labels))
    empty = [
        f"{s}/{lab}"
        for s in contracts.SPLITS
        for lab in labels
        if not ((index["split"] == s) & (index["label"] == lab)).any()
    ]
    checks.append(
        _check(
            "dataset_index",
            "every_split_has_every_class",
            not empty,
            "empty split/class cells: " + (", ".join(empty) or "none"),
            empty,
            len(empty),
        )
    )
    return checks


def per_class_split_rule(
    index: pd.DataFrame, split: dict, tolerance: float, labels: tuple[str, ...]
) -> dict[str, Any]:
    """Each class's own train/val/test shares within bounds of the expected ones.

    The overall shares can be right while one class sits mostly in one split (near-duplicate
    joining moved a group of look-alikes together). A class of n images split at random has
    a share with standard deviation sqrt(p (1 - p) / n), so the bound is the larger of
    ``split_tolerance`` and three of those: small classes are not failed for chance."""
    off, shares = [], {}
    for lab in labels:
        of_class = index["split"][index["label"] == lab]
        n = len(of_class)
        if n == 0:
            continue  # min_images_per_class and every_split_has_every_class say it
        shares[lab] = {}
        for s in contracts.SPLITS:
            p = float(split[s])
            share = float((of_class == s).sum()) / n
            shares[lab][s] = round(share, 3)
            bound = max(tolerance, 3 * (p * (1 - p) / n) ** 0.5)
            if abs(share - p) > bound:
                off.append(f"{lab}/{s}: {share:.3f} (expected {p} +/- {bound:.3f}, n={n})")
    return _check(
        "dataset_index",
        "split_proportions_per_class",
        not off,
        "per-class split shares "
        + ("within bounds" if not off else "off: " + "; ".join(off[:10]))
        + f"; shares {shares}",
        off,
        len(off),
    )


def formatted_keys(fmt_index: pd.DataFrame) -> pd.DataFrame:
    """The distinct ``(label, sha256)`` of the fmt index: all the missing-rate rule needs of it."""
    return fmt_index[["label", "sha256"]].drop_duplicates().reset_index(drop=True)


def missing_rate_rule(
    plants_data: pd.DataFrame, formatted: pd.DataFrame, params: ValidationParams
) -> dict[str, Any]:
    """A table row whose image did not make it into the fmt index (failed, pending, or ok
    without a formatted image) is missing; fails above ``max_missing_rate``."""
    # by a join on the two columns, not a set of 100,000 Python tuples (~25 MB)
    found = plants_data[["label", "sha256"]].merge(
        formatted.assign(_formatted=True), how="left", on=["label", "sha256"]
    )
    missing = plants_data[found["_formatted"].isna().to_numpy()]
    rate = len(missing) / max(len(plants_data), 1)
    max_rate = params.max_missing_rate
    reasons = missing["error"].fillna(missing["status"]).str.split(":").str[0].value_counts()
    return _check(
        "plants_data",
        "missing_rate",
        rate <= max_rate,
        f"{len(missing)} of {len(plants_data)} rows have no formatted image ({rate:.1%}; "
        f"maximum {max_rate:.1%}); reasons {reasons.to_dict()}",
        [int(i) for i in missing["id"].head(params.max_failing_rows_listed)],
        len(missing),
    )


def leakage_rule(dataset_index: pd.DataFrame, near_duplicates: dict[str, Any]) -> dict[str, Any]:
    """Fails when a near-duplicate pair (curation) straddles test and train/val, naming it."""
    pairs = near_duplicates.get("pairs", [])
    # the splits of the paired images only (not a dict of every image: ~40 MB at 100,000)
    paired = dataset_index["image_key"].isin({k for q in pairs for k in (q["a"], q["b"])})
    rows = dataset_index.loc[paired, ["image_key", "split"]]
    split_of = dict(zip(rows["image_key"], rows["split"], strict=True))
    leaks = []
    for q in pairs:
        if q["a"] in split_of and q["b"] in split_of:
            splits = {split_of[q["a"]], split_of[q["b"]]}
            if "test" in splits and len(splits) == 2:
                leaks.append(
                    f"{q['a']} ({split_of[q['a']]}) ~ {q['b']} ({split_of[q['b']]}), "
                    f"phash distance {q['distance']}"
                )
    return _check(
        "dataset_index",
        "near_duplicates_straddle_test",
        not leaks,
        f"{len(leaks)} near-duplicate pairs (phash distance <= "
        f"{near_duplicates.get('max_distance')}) straddle test and train/val"
        + (": " + "; ".join(leaks[:5]) if leaks else ""),
        leaks,
        len(leaks),
    )


# Validation runs as one node per dataset, each holding one dataset (the table, the fmt
# index, the dataset index: ~40 MB each at 100,000 rows), then a node that assembles the
# report from their checks; ``validate_data`` runs the same functions in one call.


def check_fmt_index(
    fmt_index: pd.DataFrame, params: dict, formatting: dict, task: dict
) -> tuple[dict[str, Any], pd.DataFrame]:
    """The fmt index's schema checks, and its ``formatted_keys`` for the table's
    missing-rate rule."""
    p = parse(ValidationParams, params, "validation")
    fmt = parse(FormattingParams, formatting, "formatting")
    schema = fmt_index_schema(fmt.image_size, p.min_source_side, task_labels(task))
    checks = {
        "n_rows": len(fmt_index),
        "checks": schema_checks(fmt_index, schema, "image_key", p.max_failing_rows_listed),
    }
    return checks, formatted_keys(fmt_index)


def check_table(
    plants_data: pd.DataFrame, formatted: pd.DataFrame, params: dict, task: dict
) -> dict[str, Any]:
    """The ``plants_data`` table's schema checks and its missing-rate rule."""
    p = parse(ValidationParams, params, "validation")
    pdata = plants_data.copy(deep=False)  # a new id column, the others shared
    pdata["id"] = pdata["id"].astype("int64")
    return {
        "n_rows": len(plants_data),
        "checks": schema_checks(
            pdata, plants_data_schema(task_labels(task)), "id", p.max_failing_rows_listed
        ),
        "missing_rate": missing_rate_rule(pdata, formatted, p),
    }


def check_dataset_index(
    dataset_index: pd.DataFrame,
    params: dict,
    formatting: dict,
    task: dict,
    near_duplicates: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """The dataset index's schema checks, its rules (classes, balance, splits) and, when
    curation's near-duplicate pairs are given, the leakage rule."""
    p = parse(ValidationParams, params, "validation")
    fmt = parse(FormattingParams, formatting, "formatting")
    t = parse(TaskParams, task, "task")
    schema = dataset_index_schema(fmt.image_size, p.min_source_side, t.labels)
    return {
        "n_rows": len(dataset_index),
        "class_balance": t.class_balance.model_dump(),
        "checks": schema_checks(dataset_index, schema, "image_key", p.max_failing_rows_listed),
        "rules": dataset_rules(dataset_index, t, fmt.split.model_dump()),
        "leakage": None
        if near_duplicates is None
        else leakage_rule(dataset_index, near_duplicates),
    }


def assemble_report(
    table: dict[str, Any],
    fmt_index: dict[str, Any],
    dataset_index: dict[str, Any],
    params: dict,
    formatting: dict,
) -> dict[str, Any]:
    """The validation report from the per-dataset checks (never raises for bad data)."""
    p = parse(ValidationParams, params, "validation")
    fmt = parse(FormattingParams, formatting, "formatting")
    split = fmt.split.model_dump()
    checks = (
        table["checks"]
        + fmt_index["checks"]
        + dataset_index["checks"]
        + dataset_index["rules"]
        + [table["missing_rate"]]
        + ([dataset_index["leakage"]] if dataset_index["leakage"] is not None else [])
    )
    report = {
        "passed": all(c["passed"] for c in checks),
        "checked_at": utcnow().isoformat(),
        "n_rows": {
            "plants_data": table["n_rows"],
            "fmt_index": fmt_index["n_rows"],
            "dataset_index": dataset_index["n_rows"],
        },
        "thresholds": {
            **p.model_dump(),
            **dataset_index["class_balance"],
            "image_size": fmt.image_size,
            "split": split,
        },
        "checks": checks,
    }
    failed = [c for c in checks if not c["passed"]]
    log.info(
        "validation: %d checks, %d failed%s",
        len(checks),
        len(failed),
        "" if not failed else ": " + ", ".join(f"{c['dataset']}.{c['rule']}" for c in failed),
    )
    return report


def validate_data(
    plants_data: pd.DataFrame,
    fmt_index: pd.DataFrame,
    dataset_index: pd.DataFrame,
    params: dict,
    formatting: dict,
    task: dict,
    near_duplicates: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Every check on every dataset; returns the report (never raises for bad data)."""
    fmt_checks, formatted = check_fmt_index(fmt_index, params, formatting, task)
    return assemble_report(
        check_table(plants_data, formatted, params, task),
        fmt_checks,
        check_dataset_index(dataset_index, params, formatting, task, near_duplicates),
        params,
        formatting,
    )


def validate_and_report(*checks: Any) -> tuple[dict[str, Any], str, dict[str, Any]]:
    """``assemble_report(*checks)`` with the report returned twice and rendered once: the
    JSON and HTML for 08_reporting (saved before the gate can stop the run) and, in memory,
    for the gate, so that no node reads the reporting layer to write the primary one
    (kedro-viz drops layers on such a loop)."""
    from plants_mlops.reports import validation_html

    report = assemble_report(*checks)
    return report, validation_html(report), report


def enforce_validation(
    validation_report: dict[str, Any], dataset_fingerprint: dict[str, Any] | None = None
) -> dict[str, Any]:
    """Stop the run when any check failed, naming each failing rule and its rows.

    On success returns the record training checks before it fits: which dataset
    (fingerprint) passed how many checks."""
    failed = [c for c in validation_report["checks"] if not c["passed"]]
    if not failed:
        return {
            "passed": True,
            "dataset_fingerprint": (dataset_fingerprint or {}).get("fingerprint"),
            "n_checks": len(validation_report["checks"]),
        }
    lines = [
        f"- rule {c['rule']} on {c['dataset']}: {c['detail']}; failing rows: {c['failing_rows']}"
        for c in failed
    ]
    raise DataValidationError(
        f"data validation failed ({len(failed)} of {len(validation_report['checks'])} checks; "
        "full report in 08_reporting/validation_report.json):\n" + "\n".join(lines)
    )


def summarize_validation(
    validation_passed: dict[str, Any], validation_report: dict[str, Any]
) -> dict[str, Any]:
    """The stage summary of a passing validation (a failing one stops the run first)."""
    from plants_mlops.summaries import StageSummary

    return StageSummary(
        stage="validation",
        counts={"checks": len(validation_report["checks"]), **validation_report["n_rows"]},
        dataset_fingerprint=validation_passed["dataset_fingerprint"],
        verdict="passed" if validation_passed["passed"] else "failed",
        outputs=["validation_report", "validation_report_html"],
    ).to_json()
