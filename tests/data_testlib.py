"""Helpers shared by the data-stage tests (ingestion, formatting, validation, minio env)."""

from __future__ import annotations

import ast
import csv
import json
from pathlib import Path

import httpx
import pandas as pd
import yaml
from support.params import base_labels

from plants_mlops import db

PUBLIC_PREFIX = "https://raw.githubusercontent.com/btphan95/greenr-airflow/refs/heads/master/data/"
FAULTS = ("missing", "flaky", "slow", "page", "truncated", "empty")
# What each fault of tests/support/http_mirror.py must end as (the reason tag of `error`).
FAULT_REASONS = {
    "missing": "http_404",
    "slow": "timeout",
    "page": "not_an_image",
    "truncated": "damaged_image",
    "empty": "empty",
}
# Thresholds that a 40-image subset can meet (the defaults expect the full 400).
SUBSET_VALIDATION = {
    "validation": {"max_missing_rate": 0.05},
    "task": {"class_balance": {"min_images_per_class": 10, "split_tolerance": 0.3}},
}


def manifest_rows(per_label: int | None = None) -> list[dict]:
    """Rows of the shipped manifest; the first ``per_label`` of each label when given."""
    rows = list(csv.DictReader(db.manifest_text().splitlines()))
    if per_label is None:
        return rows
    out = []
    for label in ("dandelion", "grass"):
        out += [r for r in rows if r["label"] == label][:per_label]
    return out


def write_csv(path: Path, rows: list[dict], columns=("url_source", "label", "sha256")) -> Path:
    with open(path, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(columns), extrasaction="ignore")
        w.writeheader()
        for r in rows:
            w.writerow({c: r.get(c, "") for c in columns})
    return path


def fault_rows(base_url: str, label: str = "dandelion") -> list[dict]:
    return [{"url_source": f"{base_url}faults/{name}.jpg", "label": label} for name in FAULTS]


def seed(db_url: str, rows: list[dict], tmp_path: Path) -> db.SeedReport:
    labels = base_labels()
    return db.seed(db.make_engine(db_url), write_csv(tmp_path / "seed.csv", rows), labels=labels)


def table(db_url: str) -> pd.DataFrame:
    return pd.DataFrame(db.load_rows(db.make_engine(db_url)))


def write_params(project_path: Path, env: str, params: dict, name="parameters_test.yml") -> None:
    """Parameters for one environment of a kedro_project copy (merged over base)."""
    (project_path / "conf" / env).mkdir(parents=True, exist_ok=True)
    (project_path / "conf" / env / name).write_text(yaml.safe_dump(params))


def mirror_params(base_url: str, **overrides) -> dict:
    """Ingestion parameters that read the public URLs from the test HTTP mirror, with
    short timeouts so the slow fault costs seconds, not minutes."""
    return {
        "ingestion": {
            "mirrors": [{"prefix": PUBLIC_PREFIX, "to": base_url}],
            "read_timeout_s": 1.0,
            "connect_timeout_s": 2.0,
            "max_attempts": 2,
            "backoff_s": 0.05,
            "progress": False,
            **overrides,
        }
    }


def mirror_counts(base_url: str) -> dict[str, int]:
    """How many times the mirror served each path (its /counts route)."""
    return ast.literal_eval(httpx.get(f"{base_url}counts", timeout=5).text)


def sample_path(row: dict) -> str:
    """The mirror path of a manifest row (``/dandelion/00000000.jpg``)."""
    return "/" + row["url_source"][len(PUBLIC_PREFIX) :]


def read_json(path: Path) -> dict:
    return json.loads(Path(path).read_text())
