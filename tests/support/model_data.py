"""A small dataset in the layout of the data pipelines' outputs (docs/contracts.md), built
from samples/plants with the shared imaging functions (``plants_mlops.model.devdata``).
Model tests use it to run the training/evaluation/registry nodes in-process without first
running ingestion and formatting."""

from __future__ import annotations

from pathlib import Path

from plants_mlops.model.devdata import DevDataset as ModelData
from plants_mlops.model.devdata import from_folder

SAMPLES = Path(__file__).resolve().parents[2] / "samples" / "plants"

__all__ = ["ModelData", "build"]


def build(per_label: int = 60, size: int = 160) -> ModelData:
    """``per_label`` images of each label, split roughly 60/20/20 (enough val/test images
    for the metrics to mean something on a small subset)."""
    return from_folder(SAMPLES, per_label=per_label, size=size, fractions=(0.6, 0.2))
