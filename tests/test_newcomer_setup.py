"""What a fresh checkout does without being asked: no telemetry, and `make clean-data`
leaves nothing that points at deleted data."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

from kedro_telemetry.plugin import _check_for_telemetry_consent

ROOT = Path(__file__).resolve().parents[1]


def test_kedro_telemetry_is_declined_by_the_project_itself(monkeypatch):
    for name in ("KEDRO_DISABLE_TELEMETRY", "DO_NOT_TRACK"):
        monkeypatch.delenv(name, raising=False)
    assert _check_for_telemetry_consent(ROOT) is False


def test_clean_data_removes_the_layers_the_stores_and_mlruns(tmp_path):
    shutil.copy(ROOT / "Makefile", tmp_path / "Makefile")
    kept = tmp_path / "data/01_raw/.gitkeep"
    gone = [
        tmp_path / "data/01_raw/dandelion/ab.jpg",
        tmp_path / "data/mlflow.db",
        tmp_path / "data/zenml/config.yaml",
        tmp_path / "mlruns/0/meta.yaml",
        tmp_path / "mlartifacts/1/model.onnx",
    ]
    for path in (kept, *gone):
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text("x")
    subprocess.run(["make", "-s", "clean-data"], cwd=tmp_path, check=True, timeout=60)
    assert kept.exists()
    assert [p for p in gone if p.exists()] == []
    assert not (tmp_path / "mlruns").exists()
