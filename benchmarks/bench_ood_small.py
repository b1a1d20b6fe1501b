"""How the OOD threshold behaves on small tasks: tasks of a few dozen images per label
resampled from the sample pool, each with its own detector and threshold.

Trains the default model on the pool as ``bench_ood.py`` does, embeds every pool image
with the views the probe is fitted on (mirror and quarter turns by default) and the
held-out report photos (``behaviour.REPORT_PHOTOS``), then draws ``--draws`` tasks per
size: ``--per-class`` images of each label, each image put in train/val/test at random
(70/15/15). Each task gets the shipped detector (``training.ood``: kNN, ``k`` capped at
half the smallest class) fitted on its train split and a threshold by each rule:

- ``val``: at most ``--max-flag-rate`` of the validation split flagged;
- ``max`` (the training node's, ``ood.threshold_for``): that, and at most the same share
  of the training images' held-out scores: the higher of the two thresholds;
- ``pooled``: at most that share of the validation split, and of the validation and the
  held-out training scores together.

Printed per size and rule: the share of unseen in-distribution photos flagged (the task's
test split and every pool image it did not draw), its mean, 90th percentile and the share
of tasks where it is over 10 %; the held-out training images' share; the report photos'.

    python benchmarks/bench_ood_small.py [--pool samples/plants] [--per-class 20,40,60]
        [--draws 200] [--json out.json]
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

RULES = ("val", "max", "pooled")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--pool", default=str(ROOT / "samples" / "plants"))
    ap.add_argument("--per-class", default="20,40,60")
    ap.add_argument("--draws", type=int, default=200)
    ap.add_argument("--max-flag-rate", type=float, default=0.05)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--json")
    args = ap.parse_args()

    from product_model import trained_product_model  # benchmarks/product_model.py

    from plants_mlops.model import behaviour, ood
    from plants_mlops.model.data import _to_image
    from plants_mlops.model.devdata import from_folder
    from plants_mlops.params import TrainingParams, parse

    t0 = time.perf_counter()
    data = from_folder(args.pool, size=160)
    _, model, params = trained_product_model(data)
    p = parse(TrainingParams, params, "training")
    index = data.dataset_index[data.dataset_index["label"].isin(model.meta.labels)]
    images = [_to_image(data.fmt_images[key]) for key in index["image_key"]]
    labels = index["label"].map(model.meta.labels.index).to_numpy()
    edits = (["mirror"] if p.probe.hflip else []) + behaviour.probe_views(p.probe)

    def emb(imgs):
        return model.predict_images(list(imgs)).embeddings

    views = np.stack(
        [emb(images), *(emb([behaviour.EDITS[e](im) for im in images]) for e in edits)], 1
    )
    report = emb(behaviour.report_set().values())
    print(
        f"embedded {len(images)} images (+ {', '.join(edits)}) in {time.perf_counter() - t0:.0f}s"
    )

    rng = np.random.default_rng(args.seed)
    rate = args.max_flag_rate
    results = []
    for n in (int(v) for v in args.per_class.split(",")):
        per_rule = {r: {"unseen": [], "train": [], "report": []} for r in RULES}
        val_sizes = []
        for _ in range(args.draws):
            train, val, unseen = [], [], []
            for c in np.unique(labels):
                pool = np.flatnonzero(labels == c)
                drawn = rng.choice(pool, size=min(n, len(pool)), replace=False)
                u = rng.random(len(drawn))
                train += list(drawn[u < 0.7])
                val += list(drawn[(u >= 0.7) & (u < 0.85)])
                unseen += list(drawn[u >= 0.85]) + list(np.setdiff1d(pool, drawn))
            if not val:
                continue
            det = ood.fit(
                views[train],
                labels[train],
                method="knn",
                rank=p.ood.rank,
                k=p.ood.k,
                max_reference=p.ood.max_reference,
                seed=p.seed,
            )
            val_s, held_out = det.score(views[val, 0]), det.held_out_scores(views[train])
            scores = {"unseen": det.score(views[unseen, 0]), "train": held_out}
            scores["report"] = det.score(report)
            t_val = ood.threshold_for(val_s, rate)
            both = np.concatenate([val_s, held_out])
            thresholds = {
                "val": t_val,
                "max": ood.threshold_for(val_s, rate, held_out),
                "pooled": max(t_val, ood.threshold_for(both, rate)),
            }
            val_sizes.append(len(val))
            for rule, t in thresholds.items():
                for key, s in scores.items():
                    per_rule[rule][key].append(ood.flag_rate(s, t))
        print(
            f"\n{n} images per label, {len(val_sizes)} tasks, val images median "
            f"{int(np.median(val_sizes))}\n{'rule':<8}{'unseen mean':>12}{'p90':>7}"
            f"{'tasks >10%':>11}{'train held out':>15}{'report':>8}"
        )
        for rule in RULES:
            u = np.array(per_rule[rule]["unseen"])
            row = {
                "per_class": n,
                "rule": rule,
                "tasks": len(val_sizes),
                "val_images_median": float(np.median(val_sizes)),
                "unseen_mean": float(u.mean()),
                "unseen_p90": float(np.quantile(u, 0.9)),
                "tasks_over_10pct": float((u > 0.10).mean()),
                "train_held_out_mean": float(np.mean(per_rule[rule]["train"])),
                "report_mean": float(np.mean(per_rule[rule]["report"])),
            }
            results.append(row)
            print(
                f"{rule:<8}{row['unseen_mean']:>12.3f}{row['unseen_p90']:>7.3f}"
                f"{row['tasks_over_10pct']:>11.3f}{row['train_held_out_mean']:>15.3f}"
                f"{row['report_mean']:>8.3f}"
            )
    if args.json:
        Path(args.json).write_text(json.dumps({"rows": results}, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
