"""Which OOD detector separates non-plant images from the task's photos better: Mahalanobis
(shared covariance, several ranks) or kNN on normalised embeddings (several k).

Trains the default model (linear probe) with the training node on the sample pool, embeds
the splits through the exported serving model, fits every detector on the training split
as the training node does (each image with the views the probe was fitted on: mirror and
quarter turns by default; kNN reference capped at ``ood.max_reference`` rows), takes each
threshold as the training node does (<= --max-flag-rate of the validation split flagged,
and for kNN of the left-out training images' scores as well) and prints, per
detector: AUROC on the tuning set (generated images + the package photos of
``behaviour.TUNE_PHOTOS``), the share of the tuning set flagged, and, for information
only, the held-out report set's share, the test split's false flags and the share of
training images flagged, each left out of the reference (kNN). The choice: the
highest tuning AUROC, ties to the smaller rank or k.

    python benchmarks/bench_ood.py [--pool samples/plants] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--pool", default=str(ROOT / "samples" / "plants"))
    ap.add_argument("--max-flag-rate", type=float, default=0.05)
    ap.add_argument("--ranks", default="16,32,64,128,256")
    ap.add_argument("--ks", default="1,5,10,20,30,40,50,75,100")
    ap.add_argument("--json")
    args = ap.parse_args()

    from product_model import trained_product_model  # benchmarks/product_model.py

    from plants_mlops.model import behaviour, ood
    from plants_mlops.model.data import load_subset
    from plants_mlops.model.devdata import from_folder
    from plants_mlops.params import TrainingParams, parse

    t0 = time.perf_counter()
    data = from_folder(args.pool, size=160)
    onnx, model, params = trained_product_model(data, threads=1)
    p = parse(TrainingParams, params, "training")
    splits = load_subset(
        data.dataset_index, data.fmt_images, model.meta.labels, ("train", "val", "test"), p
    )

    def emb(images):
        return model.predict_images(list(images)).embeddings

    train = splits["train"]
    train_imgs = [train.images[i] for i in range(len(train))]
    from plants_mlops.model.data import _to_image

    train_pil = [_to_image(v) for v in train_imgs]
    edits = (["mirror"] if p.probe.hflip else []) + behaviour.probe_views(p.probe)
    e_train = np.stack(
        [emb(train_pil), *(emb([behaviour.EDITS[e](im) for im in train_pil]) for e in edits)], 1
    )
    e_val = emb([_to_image(v) for v in splits["val"].images])
    e_test = emb([_to_image(v) for v in splits["test"].images])
    tune = behaviour.tune_set()
    report = behaviour.report_set()
    e_tune, e_report = emb(list(tune.values())), emb(list(report.values()))
    print(
        f"embedded: train {len(train)} (+ {', '.join(edits)}), val {len(e_val)}, "
        f"test {len(e_test)}, "
        f"tune {len(tune)}, report {len(report)} in {time.perf_counter() - t0:.1f}s"
    )
    configs = [("mahalanobis", int(r), 1) for r in args.ranks.split(",")]
    configs += [("knn", 1280, int(k)) for k in args.ks.split(",")]
    rows = []
    print(
        f"{'detector':<18} {'AUROC tune':>10} {'tune flagged':>12} {'val flagged':>11} "
        f"{'test flagged':>12} {'train flagged':>13} {'report flagged':>14}"
    )
    for method, rank, k in configs:
        det = ood.fit(
            e_train,
            train.labels,
            method=method,
            rank=rank,
            k=k,
            max_reference=p.ood.max_reference,
            seed=p.seed,
        )
        val_s = det.score(e_val)
        held_out = det.held_out_scores(e_train)  # knn; None for mahalanobis
        thr = ood.threshold_for(val_s, args.max_flag_rate, held_out)
        row = {
            "detector": f"{method} r={det.rank}"
            if method == "mahalanobis"
            else f"knn k={k}" + (f" (used: {det.k})" if det.k != k else ""),
            "auroc_tune": ood.auroc(val_s, det.score(e_tune)),
            "tune_flagged": ood.flag_rate(det.score(e_tune), thr),
            "val_flagged": ood.flag_rate(val_s, thr),
            "test_flagged": ood.flag_rate(det.score(e_test), thr),
            "train_flagged": None if held_out is None else ood.flag_rate(held_out, thr),
            "report_flagged": ood.flag_rate(det.score(e_report), thr),
            "report_missed": [
                n for n, s in zip(report, det.score(e_report), strict=True) if s <= thr
            ],
        }
        rows.append(row)
        print(
            f"{row['detector']:<18} {row['auroc_tune']:>10.4f} {row['tune_flagged']:>12.3f} "
            f"{row['val_flagged']:>11.3f} {row['test_flagged']:>12.3f} "
            f"{'-' if held_out is None else format(row['train_flagged'], '.3f'):>13} "
            f"{row['report_flagged']:>14.3f}  missed: {', '.join(row['report_missed'])}"
        )
    best = max(rows, key=lambda r: round(r["auroc_tune"], 4))  # first: smaller rank or k
    print(f"highest tuning AUROC: {best['detector']} ({best['auroc_tune']:.4f})")
    # What the chosen detector (the shipped parameters) adds to the float model's batch-1
    # latency and size, measured in alternating rounds (model/quantize.interleaved_latency_ms).
    from plants_mlops.model.quantize import interleaved_latency_ms

    cfg = p.ood
    det = ood.fit(
        e_train,
        train.labels,
        method=cfg.method,
        rank=cfg.rank,
        k=cfg.k,
        max_reference=cfg.max_reference,
    )
    attached = ood.attach(onnx, det)
    plain_ms, with_ms = interleaved_latency_ms([onnx, attached], p.image_size, runs=300)
    cost = {
        "plain_p50_ms": plain_ms,
        "with_ood_p50_ms": with_ms,
        "plain_mb": len(onnx) / 1e6,
        "with_ood_mb": len(attached) / 1e6,
    }
    print(
        f"shipped detector ({cfg.method}): batch-1 p50 {plain_ms:.2f} -> {with_ms:.2f} ms, "
        f"{cost['plain_mb']:.2f} -> {cost['with_ood_mb']:.2f} MB (float model)"
    )
    if args.json:
        Path(args.json).write_text(json.dumps({"detectors": rows, "cost": cost}, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
