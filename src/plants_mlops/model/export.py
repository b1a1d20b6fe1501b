"""From torch to files: the checkpoint and the ONNX export of the serving model (bytes, so
that the Kedro catalog can store them anywhere fsspec reaches). Loading and running the
ONNX model is ``model/artifact.py``'s job.

The exported graph answers ``logits`` and ``embedding`` (the serving contract) and
``class_maps``: the linear head applied to each cell of the backbone's last feature map
(class activation maps). With a linear head on average-pooled features,
``logits = head(mean over cells of f) = mean over cells of head(f)``, so the maps are an
exact decomposition of the logits over the image's regions; the API's ``/explain`` reads
them from the same graph (and int8 file) that predicts, with no second model to keep in
step. On the default Lite0 @160 the extra output is a [5 x 5 x 1280] @ [1280 x K] product.
"""

from __future__ import annotations

import io
from collections.abc import Mapping
from typing import Any

import torch
from torch import nn

from plants_mlops.contracts import (
    ONNX_INPUT,
    ONNX_OUTPUT_CLASS_MAPS,
    ONNX_OUTPUT_EMBEDDING,
    ONNX_OUTPUT_LOGITS,
)
from plants_mlops.model.architectures import (
    PlantsNet,
    build_model,
    cell_embeddings,
    split_backbone,
)


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


class ExplainedNet(nn.Module):
    """``PlantsNet`` with a third output: ``(logits, embedding, class_maps)``, the first two
    computed exactly as ``PlantsNet.forward`` does (in eval mode), ``class_maps``
    [N, K, h, w] the head applied to the embedding of every single cell of the feature map
    (the neck run on a 1 x 1 map: the cell's own features)."""

    def __init__(self, model: PlantsNet) -> None:
        super().__init__()
        self.trunk, self.neck = split_backbone(model.backbone)
        self.head = model.head

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        fmap = self.trunk(x)
        embedding = self.neck(fmap)
        maps = self.head(cell_embeddings(self.neck, fmap)).permute(0, 3, 1, 2)
        return self.head(embedding), embedding, maps


def _to_onnx(module: nn.Module, image_size: int, outputs: list[str], opset: int) -> bytes:
    """``module`` exported with the legacy TorchScript-based exporter (``dynamo=False``: the
    dynamo path needs onnxscript), its input and every output with a dynamic batch axis."""
    buf = io.BytesIO()
    torch.onnx.export(
        module.eval(),
        (torch.zeros(1, 3, image_size, image_size),),
        buf,
        input_names=[ONNX_INPUT],
        output_names=outputs,
        dynamic_axes={name: {0: "batch"} for name in (ONNX_INPUT, *outputs)},
        opset_version=opset,
        dynamo=False,
    )
    return buf.getvalue()


def onnx_bytes(model: PlantsNet, image_size: int, opset: int = 17) -> bytes:
    """Export ``ExplainedNet(model)``: the serving graph."""
    model = model.to("cpu", memory_format=torch.contiguous_format).eval()
    outputs = [ONNX_OUTPUT_LOGITS, ONNX_OUTPUT_EMBEDDING, ONNX_OUTPUT_CLASS_MAPS]
    return _to_onnx(ExplainedNet(model), image_size, outputs, opset)


def backbone_onnx_bytes(backbone: nn.Module, image_size: int, opset: int = 17) -> bytes:
    """Export a backbone alone (image -> ``embedding``), as the probe runs it on CPU."""
    return _to_onnx(backbone, image_size, [ONNX_OUTPUT_EMBEDDING], opset)
