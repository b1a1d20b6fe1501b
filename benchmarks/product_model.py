"""The product architecture with its ImageNet weights and an untrained head: the compute of
the real champion, for benchmarks that need a serving model without training one."""

from __future__ import annotations

from pathlib import Path

from plants_mlops import task
from plants_mlops.model import artifact

# The shipped task's labels (conf/base/task.yml): the product model answers them.
LABELS = task.load(conf=Path(__file__).resolve().parents[1] / "conf").labels

CONF = Path(__file__).resolve().parents[1] / "conf" / "base"


def stage_defaults(stage: str) -> dict:
    """``params:<stage>`` as ``conf/base/parameters_<stage>.yml`` ships it."""
    import yaml

    return yaml.safe_load((CONF / f"parameters_{stage}.yml").read_text())[stage]


def product_defaults() -> dict:
    """The product model's shape from the project's parameters: ``architecture`` and
    ``image_size`` (parameters_training.yml), ``resize_size`` (the formatting size the API
    square-resizes to first, parameters_formatting.yml)."""
    training, formatting = stage_defaults("training"), stage_defaults("formatting")
    return {
        "architecture": training["architecture"],
        "image_size": int(training["image_size"]),
        "resize_size": int(formatting["image_size"]),
    }


def untrained_product_model(
    architecture: str, image_size: int, resize_size: int, run_id: str | None = None
) -> tuple[bytes, artifact.ServingMeta]:
    """(ONNX bytes under the serving contract, its serving meta)."""
    from plants_mlops.model.architectures import LITE_VARIANTS, SPECS, build_model
    from plants_mlops.model.export import onnx_bytes

    weights = "imagenet" if architecture in LITE_VARIANTS else None
    model = build_model(
        architecture, n_classes=len(LABELS), image_size=image_size, weights=weights
    ).eval()
    spec = SPECS[architecture]
    meta = artifact.ServingMeta(
        labels=LABELS,
        image_size=image_size,
        resize_size=resize_size,
        mean=spec.mean,
        std=spec.std,
        architecture=architecture,
        mlflow_run_id=run_id,
    )
    return onnx_bytes(model, image_size), meta
