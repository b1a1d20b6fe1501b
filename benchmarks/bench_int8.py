"""Static int8 serving model: size, ONNX Runtime latency and predictions against float.

Quantizes an ONNX serving model with ONNX Runtime's static quantization (QDQ format,
per-channel int8 weights, uint8 activations, calibrated on training images after
``quant_pre_process``) and prints, for the float and the int8 model: file size, batch-1
and batch-8 latency on one thread (the server's session options), and macro F1 on each
evaluation split with the share of images on which the two models agree. The training
pipeline makes the same model (``model/quantize.py``) and serves it when it keeps the
validation F1 (``training.serving_precision``, docs/model.md).

With a trained model in ``--model-dir`` (``data/06_models`` after ``make demo``: its float
export ``model_fp32.onnx`` when there is one, else ``model.onnx``) and the
project's dataset index and raw images, it measures that model: calibration on training
images, evaluation on the validation and test splits. Otherwise it builds the product
architecture (ImageNet weights, untrained head: the champion's compute; agreement on an
untrained head says little) and uses the sample images: every other one for calibration,
the rest for evaluation.

    .venv/bin/python benchmarks/bench_int8.py [--model-dir data/06_models] [--calibration N]
        [--seed 0]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))
sys.path.insert(0, str(ROOT / "benchmarks"))

from plants_mlops import imaging  # noqa: E402
from plants_mlops.model import artifact  # noqa: E402
from plants_mlops.model.quantize import quantize_int8  # noqa: E402


def trained_model(model_dir: Path, project: Path):
    """(float ONNX bytes, meta, {split: [(image bytes, label)]}) of a trained model, or
    None when the folder or the dataset index is missing."""
    index_path = project / "data" / "03_primary" / "dataset_index.parquet"
    onnx_path = model_dir / "model_fp32.onnx"  # the float export, when training kept one
    if not onnx_path.is_file():
        onnx_path = model_dir / artifact.ONNX_FILE
    if not (onnx_path.is_file() and (model_dir / artifact.META_FILE).is_file()):
        return None
    if not index_path.is_file():
        return None
    import pandas as pd

    meta = json.loads((model_dir / artifact.META_FILE).read_text())
    if onnx_path.name == "model_fp32.onnx":
        meta.pop("ood", None)  # the float export precedes the detector training appends
    index = pd.read_parquet(index_path)
    splits: dict[str, list[tuple[bytes, str]]] = {}
    for row in index.itertuples():
        path = next((project / "data" / "01_raw" / row.label).glob(f"{row.sha256}.*"))
        splits.setdefault(row.split, []).append((path.read_bytes(), row.label))
    return onnx_path.read_bytes(), meta, splits


def untrained_model(architecture: str, image_size: int, resize_size: int):
    """The product architecture with an untrained head, and the sample images."""
    from product_model import untrained_product_model  # benchmarks/product_model.py

    onnx, meta = untrained_product_model(architecture, image_size, resize_size)
    samples = sorted((ROOT / "samples" / "plants").glob("*/*.jpg"))
    images = [(p.read_bytes(), p.parent.name) for p in samples]
    return onnx, meta, {"train": images[::2], "samples": images[1::2]}


def latency_ms(model: artifact.ServingArtifact, batch: np.ndarray, runs: int) -> float:
    for _ in range(5):
        model.run(batch)
    times = []
    for _ in range(runs):
        started = time.perf_counter()
        model.run(batch)
        times.append((time.perf_counter() - started) * 1000)
    return statistics.median(times)


def edit_disagreements(fp32, int8, images: list) -> tuple[int, int]:
    """(answers int8 changes, answers compared) over ``images`` under every behaviour edit."""
    from plants_mlops.model import behaviour

    changed = compared = 0
    for edit in behaviour.EDITS.values():
        edited = behaviour.EditedImages(images, edit)
        a = fp32.predict_images(edited).probabilities.argmax(axis=1)
        b = int8.predict_images(edited).probabilities.argmax(axis=1)
        changed, compared = changed + int((a != b).sum()), compared + len(a)
    return changed, compared


def main(argv: list[str] | None = None) -> int:
    from sklearn.metrics import f1_score

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model-dir", type=Path, default=ROOT / "data" / "06_models")
    ap.add_argument("--project", type=Path, default=ROOT, help="where data/ lives")
    from product_model import product_defaults, stage_defaults  # benchmarks/product_model.py

    product = product_defaults()  # parameters_training.yml / parameters_formatting.yml
    calibration = stage_defaults("training")["serving_precision"]["calibration_images"]
    ap.add_argument("--calibration", type=int, default=calibration, help="training images")
    ap.add_argument("--seed", type=int, default=0, help="which training images calibrate")
    ap.add_argument("--architecture", default=product["architecture"], help="without a model")
    ap.add_argument("--image-size", type=int, default=product["image_size"])
    ap.add_argument("--resize-size", type=int, default=product["resize_size"])
    ap.add_argument("--runs", type=int, default=200, help="timed runs at batch 1")
    ap.add_argument("--json", type=Path, help="also write the figures here")
    args = ap.parse_args(argv)

    found = trained_model(args.model_dir, args.project)
    mode = "trained" if found else "untrained head"
    onnx, meta, splits = found or untrained_model(
        args.architecture, args.image_size, args.resize_size
    )
    fp32 = artifact.ServingArtifact.from_bytes(onnx, meta, threads=1)

    def decoded(items: list[tuple[bytes, str]]) -> list:
        return [imaging.decode_image(b).image for b, _ in items]  # RGB

    def inputs(images: list) -> np.ndarray:
        return np.stack([fp32.preprocess(img)[0] for img in images])

    rng = np.random.default_rng(args.seed)
    train = splits["train"]
    picked = rng.choice(len(train), size=min(args.calibration, len(train)), replace=False)
    started = time.perf_counter()
    int8_onnx = quantize_int8(onnx, inputs(decoded([train[i] for i in sorted(picked)])))
    quantize_s = time.perf_counter() - started
    int8 = artifact.ServingArtifact.from_bytes(int8_onnx, meta, threads=1)  # contract checked

    labels = list(fp32.meta.labels)
    evaluated = [s for s in ("val", "test", "samples") if s in splits]
    figures: dict = {
        "mode": mode,
        "architecture": fp32.meta.architecture,
        "calibration_images": len(picked),
        "quantize_seconds": round(quantize_s, 2),
        "models": {},
        "agreement": {},
    }
    images = {s: decoded(splits[s]) for s in evaluated}  # decoded once: plain and edited
    x_eval = {s: inputs(images[s]) for s in evaluated}
    y_eval = {s: np.array([labels.index(lab) for _, lab in splits[s]]) for s in evaluated}
    predictions = {}
    for name, model, data in (("float", fp32, onnx), ("int8", int8, int8_onnx)):
        first = x_eval[evaluated[0]]
        row = {
            "size_mb": round(len(data) / 1e6, 2),
            "batch1_p50_ms": round(latency_ms(model, first[:1], args.runs), 3),
            "batch8_p50_ms": round(latency_ms(model, first[:8], max(1, args.runs // 8)), 3),
        }
        for split in evaluated:
            pred = model.run(x_eval[split]).probabilities.argmax(axis=1)
            predictions[name, split] = pred
            row[f"{split}_f1_macro"] = round(
                float(f1_score(y_eval[split], pred, average="macro", labels=[0, 1])), 4
            )
        figures["models"][name] = row
    for split in evaluated:
        same = predictions["float", split] == predictions["int8", split]
        figures["agreement"][split] = round(float(same.mean()), 4)
    changed, edited = edit_disagreements(fp32, int8, [im for s in evaluated for im in images[s]])
    figures["agreement"]["edited"] = round(1 - changed / edited, 4)
    figures["edited_changed"] = [changed, edited]

    print(f"model: {figures['architecture']} ({mode}), calibration on {len(picked)} images")
    print(f"quantization: {quantize_s:.1f} s (static QDQ, per-channel int8 weights)")
    for name, row in figures["models"].items():
        f1 = ", ".join(f"{s} F1 {row[f'{s}_f1_macro']:.4f}" for s in evaluated)
        print(
            f"{name:5s}: {row['size_mb']:6.2f} MB, batch 1 p50 {row['batch1_p50_ms']:6.2f} ms, "
            f"batch 8 p50 {row['batch8_p50_ms']:6.2f} ms (1 thread); {f1}"
        )
    agree = ", ".join(f"{s} {v:.1%}" for s, v in figures["agreement"].items())
    print(f"same prediction as the float model: {agree}")
    print(
        f"under the behaviour edits of those images: int8 changes {changed} of {edited} "
        "float answers"
    )
    if args.json:
        args.json.write_text(json.dumps(figures, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
