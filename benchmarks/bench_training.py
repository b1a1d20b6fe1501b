"""Training benchmark: throughput (images/s; for the linear probe, images embedded per
second), epoch time (the probe: seconds per point of its C grid), model size, test F1 and the wall
time of the training pipeline's work (fit + ONNX export + the serving precision's choice +
test evaluation + MLflow logging to a throw-away SQLite store).

Data: the project's ``data/`` (after the data pipelines ran) when present, else a dataset
built from ``samples/plants`` in memory (``plants_mlops.model.devdata``), so it runs
standalone on a fresh machine (e.g. a lent GPU).

    python benchmarks/bench_training.py                         # defaults of parameters_training.yml
    python benchmarks/bench_training.py --device cuda --epochs 12
    python benchmarks/bench_training.py --architecture mobilenet_v3_small --weights none
    python benchmarks/bench_training.py --strategy finetune --image-size 128  # the former default
    python benchmarks/bench_training.py --quick                 # small_cnn, 64 px, 2 epochs
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

from memory import peak_rss_mb  # benchmarks/memory.py

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))
os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")


def _defaults() -> dict:
    from product_model import stage_defaults  # benchmarks/product_model.py

    return stage_defaults("training")


def _load_data(data_root: Path, source: str):
    from plants_mlops.model.devdata import DevDataset, from_folder

    index_path = data_root / "03_primary" / "dataset_index.parquet"
    if source in ("auto", "project") and index_path.is_file():
        import pandas as pd

        index = pd.read_parquet(index_path)
        fmt = data_root / "02_intermediate" / "fmt_images"
        images = {k: (lambda p=fmt / f"{k}.jpg": p.read_bytes()) for k in index["image_key"]}
        fp_path = data_root / "03_primary" / "dataset_fingerprint.json"
        fingerprint = json.loads(fp_path.read_text()) if fp_path.is_file() else {}
        return DevDataset(index, images, fingerprint), f"project data ({index_path})"
    if source == "project":
        raise SystemExit(f"{index_path} not found: run `kedro run --pipelines data` first")
    return from_folder(ROOT / "samples" / "plants"), "samples/plants (built in memory)"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    p.add_argument("--strategy", choices=["finetune", "linear_probe"])
    p.add_argument("--architecture")
    p.add_argument("--weights", help="none | imagenet | path (default: parameters_training.yml)")
    p.add_argument("--image-size", type=int)
    p.add_argument("--epochs", type=int)
    p.add_argument("--batch-size", type=int)
    p.add_argument("--threads", type=int, help="torch CPU threads")
    p.add_argument("--patience", type=int, help="early-stopping patience (epochs)")
    p.add_argument("--lr", type=float, help="learning rate")
    p.add_argument("--data", choices=["auto", "project", "samples"], default="auto")
    p.add_argument("--data-root", default=str(ROOT / "data"))
    p.add_argument("--quick", action="store_true", help="small_cnn, 64 px, fine-tuned for 2 epochs")
    p.add_argument("--no-mlflow", action="store_true", help="skip logging the run")
    p.add_argument("--json-out", help="also write the figures to this JSON file")
    args = p.parse_args(argv)

    params = _defaults()
    if args.quick:
        params.update(
            strategy="finetune", architecture="small_cnn", weights=None, image_size=64, epochs=2
        )
    for key in ("strategy", "architecture", "image_size", "epochs", "batch_size"):
        if getattr(args, key) is not None:
            params[key] = getattr(args, key)
    if args.weights is not None:
        params["weights"] = None if args.weights.lower() in ("none", "null") else args.weights
    params.update(device=args.device, num_threads=args.threads, quiet=False)
    params["early_stopping"] = {**(params.get("early_stopping") or {})}
    if args.patience is not None:
        params["early_stopping"]["patience"] = args.patience
    if args.lr is not None:
        params["optimizer"] = {**(params.get("optimizer") or {}), "lr": args.lr}

    t_import = time.perf_counter()
    import torch

    from plants_mlops.pipelines.training.nodes import (
        choose_serving_precision,
        export_serving_model,
        log_training_run,
        train_model,
    )

    data, source = _load_data(Path(args.data_root), args.data)
    with tempfile.TemporaryDirectory(prefix="bench-mlflow-") as tmp:
        params["mlflow"] = {
            **params["mlflow"],
            "enabled": not args.no_mlflow,
            "tracking_uri": f"sqlite:///{tmp}/mlflow.db",
            "experiment": "bench-training",
        }
        os.environ.pop("MLFLOW_TRACKING_URI", None)  # the bench never logs into a real store
        t0 = time.perf_counter()
        ckpt, history = train_model(
            data.dataset_index, data.fmt_images, params, data.dataset_fingerprint
        )
        t_fit = time.perf_counter()
        float_model = export_serving_model(ckpt, params)
        t_export = time.perf_counter()
        onnx_model, precision = choose_serving_precision(
            float_model, history, data.dataset_index, data.fmt_images, params
        )
        t_precision = time.perf_counter()
        meta, summary, _ = log_training_run(
            ckpt,
            onnx_model,
            history,
            data.dataset_index,
            data.fmt_images,
            data.dataset_fingerprint,
            params,
            precision,
        )
        t_end = time.perf_counter()

    from plants_mlops.model.registry import measure_onnx_latency_ms

    # What the registry gate measures: batch-1 p50 over 50 runs, 1 ONNX Runtime thread.
    latency_ms = measure_onnx_latency_ms(onnx_model, meta["image_size"], runs=50, threads=1)

    epochs = history["epochs"]
    figures = {
        "device": history["device"],
        "gpu": torch.cuda.get_device_name(0) if history["device"].startswith("cuda") else None,
        "torch_threads": torch.get_num_threads(),
        "cpu_count": os.cpu_count(),
        "data": source,
        "strategy": params["strategy"],
        "probe_C": history.get("probe_C"),
        "architecture": params["architecture"],
        "weights": params.get("weights"),
        "image_size": params["image_size"],
        "split_sizes": summary["split_sizes_used"],
        "epochs_run": len(epochs),
        "best_epoch": history["best_epoch"],
        "train_images_per_second": round(history["images_per_second"], 1),
        "epoch_seconds_mean": round(sum(e["epoch_seconds"] for e in epochs) / len(epochs), 2),
        "epoch_seconds_first": round(epochs[0]["epoch_seconds"], 2),
        "fit_seconds": round(t_fit - t0, 1),
        "export_seconds": round(t_export - t_fit, 1),
        "precision_choice_seconds": round(t_precision - t_export, 1),
        "test_and_logging_seconds": round(t_end - t_precision, 1),
        "pipeline_wall_seconds": round(t_end - t0, 1),
        "process_wall_seconds_incl_imports": round(t_end - t_import, 1),
        "serving_precision": precision["precision"],
        "serving_precision_reason": precision["reason"],
        "model_size_mb": round(len(onnx_model) / 1e6, 2),
        "float_model_size_mb": round(len(float_model) / 1e6, 2),
        "checkpoint_size_mb": round(len(ckpt) / 1e6, 2),
        "onnx_batch1_latency_p50_ms_1_thread": round(latency_ms, 2),
        "val_f1_macro": round(summary["val_metrics"].get("f1_macro", float("nan")), 4),
        "temperature": round(history.get("calibration", {}).get("temperature", 1.0), 3),
        "test_f1_macro": round(meta["test_metrics"]["f1_macro"], 4),
        "test_accuracy": round(meta["test_metrics"]["accuracy"], 4),
        "test_roc_auc": meta["test_metrics"].get("roc_auc"),
        "peak_rss_mb": round(peak_rss_mb(), 1),
    }
    width = max(len(k) for k in figures)
    print("\n== bench_training")
    for k, v in figures.items():
        print(f"{k:<{width}}  {v}")
    if args.json_out:
        Path(args.json_out).write_text(json.dumps(figures, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
