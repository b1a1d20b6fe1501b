"""Behaviour figures of the default model and of probes trained on other views per image
(``training.probe``: ``turns``, ``extra_views``): invariance per edit, clear cases, OOD
flags, validation and test F1, serving size and batch-1 latency. Runs the product's nodes
(train_model, export_serving_model, choose_serving_precision, attach_ood_detector,
measure_behaviour) on the sample pool (hash split 70/15/15), no MLflow.

    python benchmarks/bench_behaviour.py [--variants default,mirror,rot,rot_blur,all] [--json f.json]
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

TURNS = ["rotate90", "rotate180", "rotate270"]
# variant -> overrides of training.probe. default: image, mirror and turns as rows (and in the
# OOD reference); mirror: image and mirror only (the default until 2026-12-07); rot: the
# turns as extra_views (the same rows as the default); rot_blur, all: with more edits
VARIANTS = {
    "default": {},
    "mirror": {"turns": False},
    "rot": {"turns": False, "extra_views": TURNS},
    "rot_blur": {"turns": False, "extra_views": [*TURNS, "blur"]},
    "all": {"turns": False, "extra_views": [*TURNS, "blur", "darken", "brighten"]},
}


def run_variant(data, probe: dict) -> dict:
    from product_model import stage_defaults  # benchmarks/product_model.py

    from plants_mlops.model import registry
    from plants_mlops.model.artifact import ServingArtifact
    from plants_mlops.model.data import load_subset
    from plants_mlops.model.metrics import classification_metrics
    from plants_mlops.params import TrainingParams, parse
    from plants_mlops.pipelines.behaviour.nodes import measure_behaviour
    from plants_mlops.pipelines.training import nodes as T

    params = {**stage_defaults("training"), "quiet": True}
    params["mlflow"] = {**params["mlflow"], "enabled": False}
    params["probe"] = {**params["probe"], **probe}
    p = parse(TrainingParams, params, "training")
    t0 = time.perf_counter()
    ckpt, history = T.train_model(
        data.dataset_index, data.fmt_images, params, data.dataset_fingerprint
    )
    fit_s = time.perf_counter() - t0
    fp32 = T.export_serving_model(ckpt, params)
    chosen, precision = T.choose_serving_precision(
        fp32, history, data.dataset_index, data.fmt_images, params
    )
    served, ood = T.attach_ood_detector(
        chosen, history, data.dataset_index, data.fmt_images, params
    )
    meta = T._serving_meta(history, precision=precision["precision"], ood=ood or None)
    figures = measure_behaviour(
        served,
        meta.to_dict(),
        data.dataset_index,
        data.fmt_images,
        {
            **stage_defaults("behaviour"),
            "subset": {"max_images_per_split": p.max_images_per_split, "seed": p.seed},
        },
        {
            **yaml.safe_load((ROOT / "conf/base/task.yml").read_text())["task"],
            "clear_cases": str(ROOT / "samples/behaviour/clear"),
        },
    )
    test = load_subset(data.dataset_index, data.fmt_images, meta.labels, ("test",), p)["test"]
    proba = ServingArtifact.from_bytes(served, meta, 1).predict_images(test.images).probabilities
    return {
        "probe": probe,
        "fit_seconds": fit_s,
        "val_f1_macro": history["val_metrics"]["f1_macro"],
        "test_f1_macro": classification_metrics(test.labels, proba, meta.labels)["f1_macro"],
        "precision": precision["precision"],
        "model_mb": len(served) / 1e6,
        "latency_p50_ms": registry.measure_onnx_latency_ms(served, p.image_size, runs=100),
        "ood_threshold": ood.get("threshold"),
        **{k: v for k, v in figures["metrics"].items()},
        "report_missed": figures["ood"]["report_missed"],
        "clear_wrong": figures["minimum_functionality"]["wrong"],
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--pool", default=str(ROOT / "samples" / "plants"))
    ap.add_argument("--variants", default="default,mirror,rot,rot_blur,all")
    ap.add_argument("--json")
    args = ap.parse_args(argv)
    from plants_mlops.model.devdata import from_folder

    data = from_folder(args.pool, size=160)
    rows = []
    for name in args.variants.split(","):
        row = {"variant": name, **run_variant(data, VARIANTS[name])}
        rows.append(row)
        print(json.dumps(row, default=float), flush=True)
    keys = [k for k in rows[0] if k not in ("variant", "probe", "report_missed", "clear_wrong")]
    print("\n| figure | " + " | ".join(r["variant"] for r in rows) + " |")
    print("| --- |" + " --- |" * len(rows))
    for k in keys:
        cells = [r[k] if isinstance(r[k], str) else f"{r[k]:.4f}" for r in rows]
        print(f"| {k} | " + " | ".join(cells) + " |")
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=2, default=float))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
