"""Curation: find near-duplicates, likely label errors and off-topic images; build the
review queue a person works through (``plants-mlops data review``).

- near-duplicates: a perceptual hash (``imagehash.phash``) of every fmt image; two images
  whose hashes differ in at most the task's ``near_duplicates.max_distance`` bits are a pair, within
  or across labels. A pair across labels is a label conflict; a pair that straddles train
  and test is leakage (validation fails the run on it, naming the pair).
- label issues: fine-tuning the CNN k times is too slow on a CPU, so the out-of-fold
  probabilities come from frozen ImageNet embeddings of the EfficientNet-Lite0 backbone
  and a logistic regression (scikit-learn), k-fold over train+val; ``cleanlab``'s
  ``find_label_issues`` ranks the images whose given label the folds disagree with.
- off-topic images and outliers: ``cleanlab``'s ``OutOfDistribution`` score on the same
  embeddings (k-nearest-neighbour distance); the lowest ``outliers.share`` are flagged.

Embeddings are cached by sha256 (``embeddings.cache``), so a rerun embeds only new images.
"""

from __future__ import annotations

import base64
import html
import io
import logging
import time
from collections.abc import Callable
from typing import Any

import numpy as np
import pandas as pd

from plants_mlops.params import CurationParams, TaskParams, parse
from plants_mlops.progress import Progress

log = logging.getLogger(__name__)

FEATURE_COLUMNS = ["image_key", "sha256", "phash", "embedding"]


# --------------------------------------------------------------------------- features


def _embedding_input(img: Any, p: CurationParams) -> np.ndarray:
    """One decoded image as the curation backbone's input (its size, its normalisation)."""
    from plants_mlops import imaging
    from plants_mlops.model.architectures import SPECS

    e = p.embeddings
    spec = SPECS[e.architecture]
    return imaging.to_model_input(
        img, resize_size=e.image_size, image_size=e.image_size, mean=spec.mean, std=spec.std
    )


def _embed(loads: list[Callable[[], Any]], p: CurationParams) -> np.ndarray:
    """Backbone embeddings of the images the loaders return, decoded a batch at a time
    (memory holds one batch of images, whatever the catalogue's size)."""
    import torch

    from plants_mlops.model.architectures import SPECS, build_model
    from plants_mlops.model.probe import frozen_backbone

    e = p.embeddings
    spec = SPECS[e.architecture]
    # n_classes=1: only the backbone's embedding is used here, never the head
    model = build_model(
        e.architecture, n_classes=1, image_size=e.image_size, weights=e.weights
    ).eval()
    out = []
    cpu = torch.device("cpu")
    with (
        torch.no_grad(),
        frozen_backbone(model, cpu, e.image_size) as backbone,
        Progress(len(loads), "curation embeddings", log) as done,
    ):
        for start in range(0, len(loads), e.batch_size):
            batch = [_embedding_input(load(), p) for load in loads[start : start + e.batch_size]]
            emb = backbone(torch.from_numpy(np.stack(batch)))
            out.append(emb.numpy().astype(np.float32))
            done.update(len(batch))
    return np.concatenate(out) if out else np.zeros((0, spec.embedding_dim), np.float32)


def _cache_key(p: CurationParams) -> str:
    e = p.embeddings
    return f"{e.architecture}:{e.weights}:{e.image_size}"


def _storage_options(path: str) -> dict[str, Any]:
    """The S3 endpoint of ``--env minio`` (keys come from the AWS_* variables)."""
    from plants_mlops.storage import s3_client_kwargs

    return {"client_kwargs": s3_client_kwargs()} if path.startswith("s3://") else {}


def _read_cache(path: str | None, key: str) -> dict[str, np.ndarray]:
    if not path:
        return {}
    import fsspec

    try:
        with fsspec.open(path, "rb", **_storage_options(path)) as fh:
            cached = pd.read_parquet(fh)
    except FileNotFoundError:
        return {}
    except Exception as exc:  # a corrupt cache is rebuilt, never fatal
        log.warning("curation: embedding cache %s unreadable (%s): rebuilding it", path, exc)
        return {}
    cached = cached[cached["model"] == key]
    return {r.sha256: np.asarray(r.embedding, np.float32) for r in cached.itertuples()}


def _write_cache(path: str | None, key: str, embeddings: dict[str, np.ndarray]) -> None:
    if not path:
        return
    import fsspec

    frame = pd.DataFrame(
        {
            "sha256": list(embeddings),
            "model": key,
            "embedding": [v.tolist() for v in embeddings.values()],
        }
    )
    try:
        from plants_mlops.datasets.atomic import atomic_write_bytes

        fs, _, (target,) = fsspec.get_fs_token_paths(path, storage_options=_storage_options(path))
        fs.makedirs(target.rsplit("/", 1)[0], exist_ok=True)
        protocol = fs.protocol if isinstance(fs.protocol, str) else fs.protocol[0]
        atomic_write_bytes(fs, protocol, target, frame.to_parquet())
    except Exception as exc:  # the cache only saves time: never fail the run for it
        log.warning("curation: embedding cache %s not written (%s)", path, exc)


def compute_features(
    fmt_images: dict[str, Callable[[], Any]], dataset_index: pd.DataFrame, params: dict
) -> pd.DataFrame:
    """One row per indexed image: its perceptual hash and its backbone embedding."""
    import imagehash

    t0 = time.perf_counter()
    p = parse(CurationParams, params, "curation")
    key = _cache_key(p)
    cache = _read_cache(p.embeddings.cache, key)
    rows, todo, todo_loads = [], [], []
    for r in dataset_index.itertuples():
        phash = getattr(r, "phash", None)  # formatting's, else computed here
        if not isinstance(phash, str):
            phash = str(imagehash.phash(fmt_images[r.image_key]()))
        rows.append({"image_key": r.image_key, "sha256": r.sha256, "phash": phash})
        if r.sha256 not in cache:
            todo.append(r.sha256)
            todo_loads.append(fmt_images[r.image_key])  # decoded when its batch is embedded
    if todo:
        for sha, vec in zip(todo, _embed(todo_loads, p), strict=True):
            cache[sha] = vec
        _write_cache(p.embeddings.cache, key, cache)
    for row in rows:
        row["embedding"] = cache[row["sha256"]].tolist()
    log.info(
        "curation: %d images hashed and embedded (%d from the cache) in %.1f s",
        len(rows),
        len(rows) - len(todo),
        time.perf_counter() - t0,
    )
    return pd.DataFrame(rows, columns=FEATURE_COLUMNS)


# --------------------------------------------------------------------------- findings


def near_duplicate_pairs(
    index: pd.DataFrame, hashes: dict[str, str], max_distance: int
) -> list[dict]:
    """Every pair of indexed images whose perceptual hashes differ in <= max_distance bits."""
    from plants_mlops.pipelines.curation.splits import hash_words, pairs_within

    if len(index) < 2:
        return []
    keys = index["image_key"].tolist()
    source_ids = index["source_id"].astype("int64").to_numpy()
    source, split, label = source_ids.tolist(), index["split"].tolist(), index["label"].tolist()
    i, j, dist = pairs_within(hash_words([hashes[k] for k in keys]), max_distance)
    swap = source_ids[j] < source_ids[i]  # the pair's earlier row (by source_id) first
    first, second = np.where(swap, j, i).tolist(), np.where(swap, i, j).tolist()
    return [
        {
            "a": keys[a],
            "b": keys[b],
            "a_source_id": source[a],
            "b_source_id": source[b],
            "a_split": split[a],
            "b_split": split[b],
            "distance": d,
            "same_label": label[a] == label[b],
        }
        for a, b, d in zip(first, second, dist.tolist(), strict=True)
    ]


def straddles(pair: dict) -> bool:
    """A pair with one image in test and the other in train or val: the test set leaks."""
    splits = {pair["a_split"], pair["b_split"]}
    return "test" in splits and len(splits) == 2


def out_of_fold_probabilities(
    emb: np.ndarray,
    labels: np.ndarray,
    p: CurationParams,
    n_classes: int,
    heads: dict[int, tuple] | None = None,
) -> np.ndarray:
    """[N, n_classes] out-of-fold probabilities of a logistic regression on the embeddings
    (multinomial for more than two classes; a class absent from the pool gets 0).

    ``heads``, when given, receives for every row the linear model that scored it, on the
    raw embeddings (scaler folded in): ``row -> (classes, weight [C, D], bias [C])``, the
    logits whose softmax is the row's probabilities (what the review page explains)."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import StratifiedKFold
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    present = np.bincount(labels, minlength=n_classes)
    present = present[present > 0]
    k = min(p.label_issues.folds, int(present.min())) if len(present) >= 2 else 0
    probs = np.full((len(labels), n_classes), np.nan)
    if k < 2:
        return probs
    folds = StratifiedKFold(n_splits=k, shuffle=True, random_state=p.label_issues.seed)
    for train, held in folds.split(emb, labels):
        clf = make_pipeline(StandardScaler(), LogisticRegression(C=p.label_issues.C, max_iter=2000))
        clf.fit(emb[train], labels[train])
        probs[np.ix_(held, clf.classes_)] = clf.predict_proba(emb[held])
        if heads is not None:
            head = _linear_head(clf)
            heads.update(dict.fromkeys(held.tolist(), head))
    return np.nan_to_num(probs, nan=0.0)


def _linear_head(clf) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(classes, weight [C, D], bias [C]) of a fitted StandardScaler + LogisticRegression
    pipeline, as logits on the raw embeddings (a binary model's logits are (0, z))."""
    scaler, lr = clf[0], clf[-1]
    coef, intercept = lr.coef_, lr.intercept_
    if coef.shape[0] == 1:  # binary: one decision function for classes_[1]
        coef = np.vstack([np.zeros_like(coef), coef])
        intercept = np.array([0.0, float(intercept[0])])
    weight = coef / scaler.scale_
    return lr.classes_, weight, intercept - weight @ scaler.mean_


def label_issue_grids(
    loads: list[Callable[[], Any]], heads: list[tuple], classes: list[int], p: CurationParams
) -> list[list[list[float]]]:
    """For each image (its loader), the evidence grid (model/explain.py) of class
    ``classes[i]`` under the linear model ``heads[i]`` that scored it out of fold: the
    backbone's per-cell embeddings through that model's logits. The embeddings are the
    cells' average, so the grid is an exact split of the logit over the image."""
    import torch

    from plants_mlops.model.architectures import (
        build_model,
        cell_embeddings,
        split_backbone,
    )
    from plants_mlops.model.explain import Explanation

    e = p.embeddings
    model = build_model(e.architecture, n_classes=1, image_size=e.image_size, weights=e.weights)
    trunk, neck = split_backbone(model.eval().backbone)
    x = np.stack([_embedding_input(load(), p) for load in loads])
    with torch.inference_mode():
        cells = cell_embeddings(neck, trunk(torch.from_numpy(x))).numpy().astype(np.float64)
    grids = []
    for cell, (head_classes, weight, bias), wanted in zip(cells, heads, classes, strict=True):
        maps = np.moveaxis(cell @ weight.T + bias, -1, 0)  # [C, h, w]
        position = int(np.flatnonzero(head_classes == wanted)[0])
        grids.append(Explanation.of(maps, position).rounded())
    return grids


def find_issues(
    curation_features: pd.DataFrame,
    dataset_index: pd.DataFrame,
    params: dict,
    task: dict,
    fmt_images: dict[str, Callable[[], Any]] | None = None,
) -> tuple[list[dict], dict[str, Any], dict[str, Any]]:
    """(review queue, near-duplicate pairs for validation, report). Relabel suggestions
    name the task's labels (``params:task``). With ``fmt_images``, each suspected label
    issue carries ``explanation``: the evidence grid of the label the folds chose, which
    the review page draws over the image."""
    from cleanlab.filter import find_label_issues
    from cleanlab.outlier import OutOfDistribution

    t0 = time.perf_counter()
    p = parse(CurationParams, params, "curation")
    t = parse(TaskParams, task, "task")
    task_labels = t.labels
    index = dataset_index[dataset_index["label"].isin(task_labels)]  # others: validation's
    index = index.drop(columns=["phash"], errors="ignore").merge(
        curation_features[["image_key", "phash", "embedding"]], on="image_key"
    )
    emb = np.stack(index["embedding"].map(np.asarray)).astype(np.float32) if len(index) else None
    items: dict[str, dict] = {}

    def item(r) -> dict:
        return items.setdefault(
            r["image_key"],
            {
                "image_key": r["image_key"],
                "source_id": int(r["source_id"]),
                "sha256": r["sha256"],
                "label": r["label"],
                "split": r["split"],
                "url_source": r["url_source"],
                "problems": [],
                "probabilities": None,
                "score": 0.0,
                "action": "review",
            },
        )

    records = index.to_dict(orient="records")
    by_key = {r["image_key"]: r for r in records}

    # near-duplicates
    pairs = near_duplicate_pairs(
        index,
        dict(zip(index["image_key"], index["phash"], strict=True)),
        t.near_duplicates.max_distance,
    )
    leaks = [q for q in pairs if straddles(q)]
    for q in pairs:
        later = item(by_key[q["b"]])
        kind = "near_duplicate" if q["same_label"] else "near_duplicate_other_label"
        later["problems"].append(
            f"{kind} of {q['a']} (row {q['a_source_id']}, {q['a_split']}), distance {q['distance']}"
        )
        later["score"] = max(later["score"], 1.0 if not q["same_label"] else 0.6)
        later["action"] = "exclude" if q["same_label"] else "review"

    # label issues on train+val (out-of-fold)
    n_issues = 0
    probs_all = np.full((len(index), len(task_labels)), np.nan)
    pool = np.flatnonzero(index["split"].isin(["train", "val"]).to_numpy())
    if emb is not None and len(pool) >= 2 * p.label_issues.folds:
        labels = index["label"].map(task_labels.index).to_numpy()
        heads: dict[int, tuple] = {}
        probs = out_of_fold_probabilities(emb[pool], labels[pool], p, len(task_labels), heads)
        probs_all[pool] = probs
        # n_jobs=1: in this process. cleanlab's default forks a pool (one worker per core),
        # and a fork of a process holding threads (torch, MLflow, ZenML) is unsafe; with a
        # Python SIGTERM handler installed, Pool.terminate() can lose a starting worker's
        # SIGTERM and join it forever (a test run hung there).
        ranked = find_label_issues(
            labels[pool], probs, return_indices_ranked_by="self_confidence", n_jobs=1
        )
        n_issues = len(ranked)
        for rank, local in enumerate(ranked):
            r = records[pool[local]]
            it = item(r)
            given = labels[pool[local]]
            other = int(np.argmax(probs[local]))
            it["problems"].append(
                f"label_issue (rank {rank + 1}): out-of-fold P({r['label']}) = "
                f"{probs[local, given]:.2f}"
            )
            it["score"] = max(it["score"], 1.0 + (1.0 - float(probs[local, given])))
            it["action"] = f"relabel {task_labels[other]}" if other != given else "review"
        if fmt_images is not None and len(ranked):
            chosen = [int(np.argmax(probs[local])) for local in ranked]
            grids = label_issue_grids(
                [fmt_images[records[pool[local]]["image_key"]] for local in ranked],
                [heads[int(local)] for local in ranked],
                chosen,
                p,
            )
            for local, label, grid in zip(ranked, chosen, grids, strict=True):
                item(records[pool[local]])["explanation"] = {
                    "label": task_labels[label],
                    "grid": grid,
                }

    # outliers / off-topic
    n_outliers = 0
    ood_scores = np.ones(len(index))
    if emb is not None and len(index) > p.outliers.k + 1:
        ood = OutOfDistribution(params={"k": p.outliers.k})
        ood_scores = ood.fit_score(
            features=emb / np.linalg.norm(emb, axis=1, keepdims=True), verbose=False
        )
        cut = np.quantile(ood_scores, p.outliers.share)
        for i in np.flatnonzero(ood_scores <= cut):
            it = item(records[i])
            it["problems"].append(
                f"outlier: out-of-distribution score {ood_scores[i]:.3f} (lowest {p.outliers.share:.0%})"
            )
            it["score"] = max(it["score"], 0.5 + (1.0 - float(ood_scores[i])) / 2)
            if it["action"] == "review":
                it["action"] = "exclude if off-topic"
            n_outliers += 1

    keys = list(index["image_key"])
    for key, it in items.items():
        i = keys.index(key)
        if not np.isnan(probs_all[i]).any():
            it["probabilities"] = {
                lab: round(float(v), 4) for lab, v in zip(task_labels, probs_all[i], strict=True)
            }
        it["ood_score"] = round(float(ood_scores[i]), 4)
        it["score"] = round(float(it["score"]), 4)
    queue = sorted(items.values(), key=lambda it: (-it["score"], it["source_id"]))[
        : p.queue.max_items
    ]
    for rank, it in enumerate(queue, 1):
        it["rank"] = rank
    near = {"max_distance": t.near_duplicates.max_distance, "pairs": pairs, "straddling": leaks}
    report = {
        "images": len(index),
        "near_duplicate_pairs": len(pairs),
        "near_duplicate_pairs_across_labels": sum(not q["same_label"] for q in pairs),
        "near_duplicate_pairs_straddling": len(leaks),
        "label_issues": n_issues,
        "outliers": n_outliers,
        "queued": len(queue),
        "cv_images": int(len(pool)),
        "method": (
            "out-of-fold probabilities: logistic regression on frozen "
            f"{p.embeddings.architecture} ImageNet embeddings, {p.label_issues.folds}-fold over "
            "train+val; cleanlab find_label_issues (self_confidence); cleanlab "
            "OutOfDistribution (kNN) for outliers; imagehash phash for near-duplicates"
        ),
        "seconds": round(time.perf_counter() - t0, 2),
    }
    log.info(
        "curation: %d near-duplicate pairs (%d straddle splits), %d label issues, %d outliers; "
        "%d images queued for review",
        len(pairs),
        len(leaks),
        n_issues,
        n_outliers,
        len(queue),
    )
    return queue, near, report


# --------------------------------------------------------------------------- review page


def _thumbnail(img, px: int) -> str:
    img = img.copy()
    img.thumbnail((px, px))
    buf = io.BytesIO()
    img.save(buf, format="JPEG", quality=80)
    return base64.b64encode(buf.getvalue()).decode()


def _explanation_cell(explanation: dict | None, loader, p: CurationParams) -> str:
    """The heat map of a suspected label issue: the regions that speak for the label the
    out-of-fold model chose (model/explain.py), over the image as the backbone saw it."""
    if not explanation or loader is None:
        return ""
    from plants_mlops import imaging
    from plants_mlops.model.explain import overlay

    size = p.embeddings.image_size
    view = imaging.model_view(loader(), resize_size=size, image_size=size)
    drawn = overlay(view, np.asarray(explanation["grid"], dtype=np.float64))
    label = html.escape(explanation["label"])
    return (
        f'<img alt="evidence for {label}" title="regions that speak for {label}" '
        f'src="data:image/jpeg;base64,{_thumbnail(drawn, p.queue.thumbnail_px)}">'
        f"<br>for {label}"
    )


def render_review(
    curation_queue: list[dict],
    fmt_images: dict[str, Callable[[], Any]],
    curation_report: dict,
    params: dict,
    env: str = "",
) -> str:
    """The review queue as one self-contained HTML page (thumbnails inlined); the commands
    it gives name the run's Kedro environment ``env`` (a task's: ``--env ENV``)."""
    p = parse(CurationParams, params, "curation")
    on_env = f" --env {html.escape(env)}" if env else ""
    rows = []
    for it in curation_queue:
        loader = fmt_images.get(it["image_key"])
        thumb = (
            f'<img alt="{html.escape(it["image_key"])}" src="data:image/jpeg;base64,'
            f'{_thumbnail(loader(), p.queue.thumbnail_px)}">'
            if loader
            else "(image gone)"
        )
        probs = ", ".join(f"{k} {v:.2f}" for k, v in (it["probabilities"] or {}).items()) or "-"
        why = _explanation_cell(it.get("explanation"), loader, p)
        rows.append(
            "<tr>"
            f"<td>{it['rank']}</td><td>{thumb}</td><td>{why}</td><td>{it['source_id']}</td>"
            f"<td>{html.escape(it['label'])}</td><td>{it['split']}</td>"
            f"<td>{'<br>'.join(html.escape(x) for x in it['problems'])}</td>"
            f"<td>{probs}</td><td>{html.escape(it['action'])}</td>"
            "</tr>"
        )
    summary = ", ".join(
        f"{k.replace('_', ' ')} {v}" for k, v in curation_report.items() if isinstance(v, int)
    )
    return (
        "<!doctype html><html><head><meta charset='utf-8'><title>Curation review queue</title>"
        "<style>body{font-family:sans-serif}td,th{border:1px solid #ccc;padding:4px;"
        "vertical-align:top}table{border-collapse:collapse}</style></head><body>"
        "<h1>Curation review queue</h1>"
        f"<p>{html.escape(summary)}</p><p>{html.escape(curation_report.get('method', ''))}</p>"
        f"<p>Decide with <code>plants-mlops data exclude ID{on_env} --reason TEXT</code>, "
        f"<code>data relabel ID LABEL{on_env} --reason TEXT</code> or "
        f"<code>data restore ID{on_env}</code> (ID = row).</p>"
        "<table><tr><th>#</th><th>image</th><th>why (label issues)</th><th>row</th><th>label</th><th>split</th>"
        "<th>suspected problem</th><th>out-of-fold probabilities</th><th>suggested action</th>"
        f"</tr>{''.join(rows)}</table></body></html>"
    )


def summarize_curation(
    curation_report: dict[str, Any], dataset_fingerprint: dict[str, Any]
) -> dict[str, Any]:
    from plants_mlops.summaries import StageSummary, integers

    return StageSummary(
        stage="curation",
        counts=integers(curation_report),
        dataset_fingerprint=dataset_fingerprint["fingerprint"],
        verdict=(
            "leakage: near-duplicates straddle splits"
            if curation_report["near_duplicate_pairs_straddling"]
            else "ok"
        ),
        outputs=["curation_review_html", "curation_queue"],
    ).to_json()
