"""A small dataset in the layout of the data pipelines' outputs (docs/contracts.md), built
from samples/plants with the shared imaging functions (``plants_mlops.model.devdata``).
Model tests use it to run the training/evaluation/registry nodes in-process without first
running ingestion and formatting."""

from __future__ import annotations

from pathlib import Path

from plants_mlops.model.devdata import DevDataset as ModelData
from plants_mlops.model.devdata import from_folder

SAMPLES = Path(__file__).resolve().parents[2] / "samples" / "plants"

__all__ = ["SMALL_MODEL", "ModelData", "Trained", "build", "small_cnn_params"]


def build(per_label: int = 60, size: int = 160) -> ModelData:
    """``per_label`` images of each label, split roughly 60/20/20 (enough val/test images
    for the metrics to mean something on a small subset)."""
    return from_folder(SAMPLES, per_label=per_label, size=size, fractions=(0.6, 0.2))


def small_cnn_params(**overrides) -> dict:
    """``params:training`` for a quick CPU model (small_cnn, random weights, 64 px, fine-tuned
    for its epochs, no MLflow logging) with ``overrides`` merged in."""
    from support.params import stage_params

    base = {
        "strategy": "finetune",
        "architecture": "small_cnn",
        "weights": None,
        "image_size": 64,
        "batch_size": 16,
        "device": "cpu",
        "quiet": True,
        "mlflow": {"enabled": False},  # the fit itself needs no server; logging does
    }
    return stage_params("training", **{**base, **overrides})


# conftest's ``small_model``: six epochs of AdamW, enough to beat a never-trained model.
SMALL_MODEL = small_cnn_params(
    epochs=6,
    optimizer={"name": "adamw", "lr": 0.003},
    early_stopping={"patience": 6},
    augment={"crop_scale": [0.7, 1.0], "hflip": True},
    seed=3,
)


class Trained:
    """A model trained and exported by the training nodes, in process, on ``data``."""

    def __init__(self, data: ModelData, params: dict) -> None:
        from plants_mlops.pipelines.training.nodes import export_serving_model, train_model

        self.data = data
        self.checkpoint, self.history = train_model(
            data.dataset_index, data.fmt_images, params, data.dataset_fingerprint
        )
        self.onnx = export_serving_model(self.checkpoint, params)
