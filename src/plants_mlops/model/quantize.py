"""Static int8 (QDQ) serving models, and the choice of the precision the API serves.

ONNX Runtime's static quantization: per-channel int8 weights, uint8 activations whose
ranges are calibrated on training images through the serving preprocessing. On CPUs with
int8 dot-product instructions (AVX-512 VNNI, AVX-VNNI) the default Lite0 runs 2.1-2.4x
faster at batch 1 in a quarter of the file (docs/benchmarks.md); elsewhere it may gain
little, so ``auto`` measures both models on the training machine before it picks one.
Nothing is taken on trust: the int8 model is kept only when its validation macro F1 stays within
``max_f1_drop`` of the float model's, and the reason for either choice is recorded in the
serving metadata (``precision``), the training report, the MLflow run and the registry.
"""

from __future__ import annotations

import logging
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from plants_mlops import contracts
from plants_mlops.model import artifact
from plants_mlops.params import ServingPrecision

log = logging.getLogger(__name__)

FP32, INT8 = "fp32", "int8"


# The backbone's trunk (``model/export.py``: node names under ``/trunk/``) runs in int8;
# the pooling, the head and the class maps stay float: quantized, the logits came out in
# 256 steps over their range (two photos, one confidence; a few distinct values between
# 0.2 and 0.8), for no measurable speed (a [1280 x K] product).
INT8_SCOPE = "/trunk/"


def quantize_int8(onnx: bytes, calibration: np.ndarray) -> bytes:
    """Static QDQ int8 quantization of a serving model's trunk, calibrated on model inputs
    ``calibration`` [N, 3, S, S] (float32, the serving preprocessing's output)."""
    import onnx as onnx_lib
    from onnxruntime.quantization import (
        CalibrationDataReader,
        QuantFormat,
        QuantType,
        quantize_static,
    )
    from onnxruntime.quantization.shape_inference import quant_pre_process

    class Reader(CalibrationDataReader):
        def __init__(self) -> None:
            self.inputs = iter({contracts.ONNX_INPUT: x[None]} for x in calibration)

        def get_next(self):
            return next(self.inputs, None)

    with tempfile.TemporaryDirectory(prefix="plants-int8-") as tmp:
        src, pre, dst = (Path(tmp) / n for n in ("float.onnx", "pre.onnx", "int8.onnx"))
        src.write_bytes(onnx)
        quant_pre_process(str(src), str(pre))
        names = [n.name for n in onnx_lib.load(str(pre)).graph.node]
        quantize_static(
            str(pre),
            str(dst),
            Reader(),
            quant_format=QuantFormat.QDQ,
            activation_type=QuantType.QUInt8,
            weight_type=QuantType.QInt8,
            per_channel=True,
            nodes_to_exclude=[name for name in names if not name.startswith(INT8_SCOPE)],
        )
        return dst.read_bytes()


def interleaved_latency_ms(models: Sequence[bytes], image_size: int, runs: int) -> list[float]:
    """Batch-1 latency (median, ms, one thread, serving session settings) of each model,
    measured in alternating rounds so that a change in the machine's load hits all alike."""
    from plants_mlops.model.registry import latency_samples_ms

    sessions = [artifact.open_session(m, 1) for m in models]
    rounds = 5
    samples: list[list[float]] = [[] for _ in models]
    for _ in range(rounds):
        for i, session in enumerate(sessions):
            samples[i] += latency_samples_ms(session, image_size, max(runs // rounds, 1))
    return [float(np.median(s)) for s in samples]


def choose_precision(
    float_onnx: bytes,
    meta: artifact.ServingMeta,
    calibration_images: Sequence,
    val_images: Sequence,
    val_labels: np.ndarray,
    policy: ServingPrecision,
) -> tuple[bytes, dict]:
    """(the serving model, the record of the choice) under ``policy``.

    ``calibration_images`` and ``val_images`` are RGB PIL images (fmt layer); the model sees
    them through the serving preprocessing. A quantization that fails, loses more than
    ``max_f1_drop`` of validation macro F1, or (``auto``) is not ``min_speedup`` times faster
    keeps the float model, with the reason.
    """
    from plants_mlops.model.metrics import classification_metrics

    record: dict = {"mode": policy.mode, "precision": FP32, "model_bytes_fp32": len(float_onnx)}
    if policy.mode == FP32:
        record["reason"] = "training.serving_precision.mode is fp32"
        return float_onnx, record
    fp32 = artifact.ServingArtifact.from_bytes(float_onnx, meta, threads=1)
    calib = np.stack([fp32.preprocess(img)[0] for img in calibration_images])
    started = time.perf_counter()
    try:
        int8_onnx = quantize_int8(float_onnx, calib)
        int8 = artifact.ServingArtifact.from_bytes(int8_onnx, meta, threads=1)
        artifact.check_contract(int8.session, meta)
    except Exception as exc:  # noqa: BLE001 - any failure keeps the float model, said why
        record["reason"] = f"int8 quantization failed, serving fp32: {exc}"
        log.warning("%s", record["reason"])
        return float_onnx, record
    record.update(
        quantize_seconds=round(time.perf_counter() - started, 2),
        calibration_images=len(calib),
        model_bytes_int8=len(int8_onnx),
    )
    p_fp32 = fp32.predict_images(val_images).probabilities
    p_int8 = int8.predict_images(val_images).probabilities
    f1_fp32 = classification_metrics(val_labels, p_fp32, meta.labels)["f1_macro"]
    f1_int8 = classification_metrics(val_labels, p_int8, meta.labels)["f1_macro"]
    record.update(
        val_images=len(val_labels),
        val_f1_macro_fp32=f1_fp32,
        val_f1_macro_int8=f1_int8,
        val_agreement=float((p_fp32.argmax(1) == p_int8.argmax(1)).mean()),
    )
    if f1_fp32 - f1_int8 > policy.max_f1_drop:
        record["reason"] = (
            f"int8 validation macro F1 {f1_int8:.4f} is more than {policy.max_f1_drop} below "
            f"fp32's {f1_fp32:.4f}: serving fp32"
        )
        return float_onnx, record
    if policy.mode == "auto":
        t_fp32, t_int8 = interleaved_latency_ms(
            [float_onnx, int8_onnx], meta.image_size, policy.latency_runs
        )
        speedup = t_fp32 / t_int8 if t_int8 > 0 else float("inf")
        record.update(
            latency_p50_ms_fp32=round(t_fp32, 3),
            latency_p50_ms_int8=round(t_int8, 3),
            speedup=round(speedup, 2),
        )
        if speedup < policy.min_speedup:
            record["reason"] = (
                f"int8 is {speedup:.2f}x as fast as fp32 at batch 1 on this machine, under "
                f"min_speedup {policy.min_speedup}: serving fp32"
            )
            return float_onnx, record
    record["precision"] = INT8
    record["reason"] = f"int8 keeps validation macro F1 ({f1_int8:.4f} vs fp32 {f1_fp32:.4f})" + (
        f" and is {record['speedup']:.2f}x as fast" if "speedup" in record else ""
    )
    return int8_onnx, record
