"""From torch to files: the checkpoint and the ONNX export of the serving model (bytes, so
that the Kedro catalog can store them anywhere fsspec reaches). Loading and running the
ONNX model is ``model/artifact.py``'s job."""

from __future__ import annotations

import io
from collections.abc import Mapping
from typing import Any

import torch

from plants_mlops.contracts import (
    ONNX_INPUT,
    ONNX_OUTPUT_EMBEDDING,
    ONNX_OUTPUT_LOGITS,
)
from plants_mlops.model.architectures import PlantsNet, build_model


def checkpoint_bytes(model: PlantsNet, config: Mapping[str, Any], meta: Mapping[str, Any]) -> bytes:
    buf = io.BytesIO()
    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    torch.save({"state_dict": state, "config": dict(config), "meta": dict(meta)}, buf)
    return buf.getvalue()


def load_checkpoint(data: bytes) -> tuple[PlantsNet, dict, dict]:
    """Rebuild the model of a checkpoint (no pretrained weights needed: all are stored)."""
    ckpt = torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
    cfg = ckpt["config"]
    model = build_model(
        cfg["architecture"],
        n_classes=int(ckpt["state_dict"]["head.weight"].shape[0]),
        image_size=int(cfg["image_size"]),
        weights=None,
        dropout=float(cfg.get("dropout") or 0.0),
        bn_momentum=cfg.get("bn_momentum"),
    )
    model.load_state_dict(ckpt["state_dict"])
    return model.eval(), cfg, ckpt["meta"]


def onnx_bytes(model: PlantsNet, image_size: int, opset: int = 17) -> bytes:
    """Export with the legacy TorchScript-based exporter (``dynamo=False``: the dynamo path
    needs onnxscript) and a dynamic batch axis."""
    model = model.to("cpu", memory_format=torch.contiguous_format).eval()
    example = torch.zeros(1, 3, image_size, image_size)
    buf = io.BytesIO()
    torch.onnx.export(
        model,
        (example,),
        buf,
        input_names=[ONNX_INPUT],
        output_names=[ONNX_OUTPUT_LOGITS, ONNX_OUTPUT_EMBEDDING],
        dynamic_axes={
            ONNX_INPUT: {0: "batch"},
            ONNX_OUTPUT_LOGITS: {0: "batch"},
            ONNX_OUTPUT_EMBEDDING: {0: "batch"},
        },
        opset_version=opset,
        dynamo=False,
    )
    return buf.getvalue()
