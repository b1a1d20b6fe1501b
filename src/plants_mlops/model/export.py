"""Checkpoint and ONNX serving model (bytes, so that the Kedro catalog can store them
anywhere fsspec reaches), and ONNX Runtime inference over the serving contract."""

from __future__ import annotations

import io
from collections.abc import Mapping
from typing import Any

import numpy as np
import torch

from plants_mlops import imaging
from plants_mlops.contracts import (
    LABELS,
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


def onnx_session(model: bytes | str, threads: int | None = None):
    """An ONNX Runtime CPU session (bytes or a path). Spinning is off: on 2 cores it fights
    with torch's pool."""
    import onnxruntime as ort

    opts = ort.SessionOptions()
    if threads:
        opts.intra_op_num_threads = threads
    opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
    return ort.InferenceSession(model, sess_options=opts, providers=["CPUExecutionProvider"])


def check_serving_model(session, image_size: int) -> None:
    """Run one zero image through the session and check the output contract; raises
    ValueError with what is wrong."""
    names_in = [i.name for i in session.get_inputs()]
    names_out = [o.name for o in session.get_outputs()]
    if names_in != [ONNX_INPUT] or names_out[:2] != [ONNX_OUTPUT_LOGITS, ONNX_OUTPUT_EMBEDDING]:
        raise ValueError(
            f"ONNX model has inputs {names_in} / outputs {names_out}, "
            f"expected [{ONNX_INPUT}] / [{ONNX_OUTPUT_LOGITS}, {ONNX_OUTPUT_EMBEDDING}]"
        )
    logits, emb = session.run(
        None, {ONNX_INPUT: np.zeros((2, 3, image_size, image_size), np.float32)}
    )
    if logits.shape != (2, len(LABELS)) or emb.ndim != 2 or not np.isfinite(logits).all():
        raise ValueError(f"ONNX model outputs have unexpected shapes {logits.shape}, {emb.shape}")


def onnx_predict_proba(
    session, images, meta: Mapping[str, Any], batch_size: int = 32
) -> np.ndarray:
    """Serving preprocessing (``imaging.to_model_input`` with the model's own metadata) +
    ONNX inference + softmax, for PIL images that are RGB."""
    out = []
    for i in range(0, len(images), batch_size):
        x = np.stack(
            [
                imaging.to_model_input(
                    img,
                    resize_size=int(meta["resize_size"]),
                    image_size=int(meta["image_size"]),
                    mean=tuple(meta["mean"]),
                    std=tuple(meta["std"]),
                )
                for img in images[i : i + batch_size]
            ]
        )
        logits = session.run([ONNX_OUTPUT_LOGITS], {ONNX_INPUT: x})[0].astype(np.float64)
        logits -= logits.max(axis=1, keepdims=True)
        e = np.exp(logits)
        out.append(e / e.sum(axis=1, keepdims=True))
    return np.concatenate(out)
