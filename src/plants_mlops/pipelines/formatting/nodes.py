"""Formatting: raw bytes -> fmt images + fmt index -> one split dataset index + fingerprint.

fmt: ``imaging.decode_image`` (EXIF transpose, RGB) -> ``imaging.square_resize`` to
``formatting.image_size`` -> ``imaging.image_stats`` on that image (what the model sees).
agg: one row per distinct content; the split comes from a salted hash of the sha256, so a
given image keeps its split forever, however many images are added.
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import imagehash
import pandas as pd
from PIL import Image

from plants_mlops import contracts, imaging
from plants_mlops.fingerprint import fingerprint_of
from plants_mlops.params import FormattingParams, parse

log = logging.getLogger(__name__)

ID_COLUMNS = ["sha256", "label", "image_key", "source_id", "url_source"]
EXTRA_COLUMNS = ["orig_width", "orig_height", "phash"]  # phash: imagehash, 16 hex digits
FMT_INDEX_COLUMNS = ID_COLUMNS + list(imaging.STAT_COLUMNS) + EXTRA_COLUMNS
DATASET_INDEX_COLUMNS = FMT_INDEX_COLUMNS + ["split"]


def _sources(plants_data: pd.DataFrame) -> dict[tuple[str, str], dict]:
    """``(label, sha256) -> first ok row`` (lowest id) and how many rows share that content."""
    ok = plants_data[plants_data["status"] == contracts.STATUS_OK].sort_values("id")
    out: dict[tuple[str, str], dict] = {}
    for row in ok.to_dict(orient="records"):
        key = (row["label"], row["sha256"])
        if key in out:
            out[key]["n_rows"] += 1
        else:
            out[key] = {"source_id": int(row["id"]), "url_source": row["url_source"], "n_rows": 1}
    return out


def _format_one(load: Callable[[], bytes], size: int) -> tuple[Image.Image, dict[str, float]]:
    decoded = imaging.decode_image(load())
    img = imaging.square_resize(decoded.image, size)
    stats = imaging.image_stats(img)
    stats["orig_width"], stats["orig_height"] = map(float, decoded.original_size)
    stats["phash"] = str(imagehash.phash(img))  # near-duplicates (curation)
    return img, stats


def format_images(
    raw_images: dict[str, Callable[[], bytes]],
    plants_data: pd.DataFrame,
    params: dict,
    data_decisions: pd.DataFrame | None = None,
) -> tuple[dict[str, Image.Image], pd.DataFrame, dict[str, Any]]:
    """raw -> fmt for every ``ok`` row whose bytes are in the raw layer, with the curation
    decisions in force applied (an excluded row left out, a relabelled one relabelled).

    Returns (fmt images keyed ``{label}/{sha256}``, fmt index, a report of what was skipped).
    """
    from plants_mlops.pipelines.curation.decisions import apply_decisions

    t0 = time.perf_counter()
    p = parse(FormattingParams, params, "formatting")
    raw_images, plants_data, decisions = apply_decisions(raw_images, plants_data, data_decisions)
    size = p.image_size
    sources = _sources(plants_data)
    stored: dict[tuple[str, str], Callable[[], bytes]] = {}
    for key, load in raw_images.items():
        label, _, name = key.partition("/")
        stored[(label, name.split(".", 1)[0])] = load
    todo = sorted(k for k in sources if k in stored)
    missing_raw = [
        {"source_id": sources[k]["source_id"], "label": k[0], "sha256": k[1]}
        for k in sorted(sources)
        if k not in stored
    ]
    for m in missing_raw:
        log.warning("formatting: row %s is ok but its raw file is missing", m["source_id"])

    def work(k: tuple[str, str]):
        try:
            return k, _format_one(stored[k], size), None
        except imaging.ImageDecodeError as exc:
            return k, None, f"{exc.reason}: {exc.detail}"

    workers = max(1, p.workers)
    with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="fmt") as pool:
        results = list(pool.map(work, todo))

    fmt_images: dict[str, Image.Image] = {}
    records, undecodable = [], []
    for (label, sha), result, error in results:
        src = sources[(label, sha)]
        if error:
            undecodable.append({"source_id": src["source_id"], "label": label, "error": error})
            log.warning("formatting: raw image of row %s skipped: %s", src["source_id"], error)
            continue
        img, stats = result
        image_key = f"{label}/{sha}"
        fmt_images[image_key] = img
        records.append(
            {
                "sha256": sha,
                "label": label,
                "image_key": image_key,
                "source_id": src["source_id"],
                "url_source": src["url_source"],
                **stats,
            }
        )
    fmt_index = pd.DataFrame(records, columns=FMT_INDEX_COLUMNS)
    fmt_index["source_id"] = fmt_index["source_id"].astype("int64")
    seconds = time.perf_counter() - t0
    report = {
        "image_size": size,
        "formatted": len(fmt_images),
        "seconds": round(seconds, 3),
        "images_per_s": round(len(fmt_images) / seconds, 1) if fmt_images and seconds else None,
        "rows_sharing_content": sum(s["n_rows"] - 1 for s in sources.values()),
        "missing_raw": missing_raw,
        "undecodable": undecodable,
        "decisions_applied": decisions,
    }
    log.info(
        "formatting: %d images -> %dx%d in %.1f s (%s images/s); %d ok rows without a raw "
        "file, %d undecodable",
        len(fmt_images),
        size,
        size,
        seconds,
        report["images_per_s"],
        len(missing_raw),
        len(undecodable),
    )
    return fmt_images, fmt_index, report


def split_of(sha256: str, split: dict[str, Any]) -> str:
    """train/val/test from a salted hash of the content: stable as the dataset grows."""
    digest = hashlib.sha256(f"{split['salt']}:{sha256}".encode()).hexdigest()
    u = int(digest[:15], 16) / float(16**15)
    edge = 0.0
    for name in contracts.SPLITS[:-1]:
        edge += float(split[name])
        if u < edge:
            return name
    return contracts.SPLITS[-1]


def build_dataset_index(
    fmt_index: pd.DataFrame,
    fmt_report: dict[str, Any],
    params: dict,
    curation: dict | None = None,
) -> tuple[pd.DataFrame, dict[str, Any], dict[str, Any]]:
    """fmt index -> dataset index (duplicates dropped, split assigned) + fingerprint + report.

    Identical bytes under two labels are contradictory: every copy is dropped and reported.
    With ``params:curation``, a near-duplicate of an earlier image joins that image's split
    (``curation.splits.join_near_duplicate_splits``).
    """
    p = parse(FormattingParams, params, "formatting")
    split = p.split.model_dump()
    total = sum(float(split[s]) for s in contracts.SPLITS)
    if abs(total - 1.0) > 1e-6:
        raise ValueError(f"formatting.split proportions must sum to 1 (got {total:g}: {split})")
    labels_per_sha = fmt_index.groupby("sha256")["label"].nunique()
    conflicted = set(labels_per_sha[labels_per_sha > 1].index)
    dropped = fmt_index[fmt_index["sha256"].isin(conflicted)]
    index = fmt_index[~fmt_index["sha256"].isin(conflicted)].drop_duplicates("sha256").copy()
    index["split"] = [split_of(sha, split) for sha in index["sha256"]]
    moved = 0
    if curation is not None and "phash" in index.columns and index["phash"].notna().all():
        from plants_mlops.params import CurationParams
        from plants_mlops.pipelines.curation.splits import join_near_duplicate_splits

        c = parse(CurationParams, curation, "curation")
        joined = join_near_duplicate_splits(index, c.near_duplicates.max_distance)
        moved = int((joined != index["split"]).sum())
        index["split"] = joined
    # reindex: an fmt index written before phash existed gets an empty column
    index = (
        index.sort_values("image_key").reset_index(drop=True).reindex(columns=DATASET_INDEX_COLUMNS)
    )
    fingerprint = fingerprint_of(index, p.image_size)
    report = {
        **fmt_report,
        "dataset_images": len(index),
        "near_duplicates_joined_split": moved,
        "duplicates_dropped": [
            {
                "image_key": r.image_key,
                "source_id": int(r.source_id),
                "reason": "same bytes under several labels",
            }
            for r in dropped.itertuples()
        ],
        # the hex string only: a nested dict under a "fingerprint" key would confuse readers
        # that look the fingerprint up by key (orchestration summaries)
        "dataset_fingerprint": fingerprint["fingerprint"],
        "per_split_label": fingerprint["per_split_label"],
    }
    if conflicted:
        log.warning("formatting: dropped %d images whose bytes carry several labels", len(dropped))
    log.info("formatting: dataset index %s", json.dumps(fingerprint["per_split_label"]))
    log.info("dataset fingerprint %s (%d images)", fingerprint["fingerprint"], len(index))
    return index, fingerprint, report


def summarize_formatting(
    formatting_report: dict[str, Any], dataset_fingerprint: dict[str, Any]
) -> dict[str, Any]:
    """The stage summary: images formatted, indexed per split, and the fingerprint."""
    from plants_mlops.summaries import StageSummary, integers

    counts = integers(formatting_report)
    counts["n_images"] = int(dataset_fingerprint["n_images"])
    for split, labels in dataset_fingerprint["per_split_label"].items():
        counts[f"{split}_images"] = int(sum(labels.values()))
    return StageSummary(
        stage="formatting",
        counts=counts,
        dataset_fingerprint=dataset_fingerprint["fingerprint"],
        outputs=["formatting_report", "dataset_index"],
    ).to_json()
