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
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import imagehash
import numpy as np
import pandas as pd

from plants_mlops import contracts, imaging
from plants_mlops.fingerprint import fingerprint_of
from plants_mlops.params import FormattingParams, TaskParams, parse
from plants_mlops.progress import Progress

log = logging.getLogger(__name__)

ID_COLUMNS = ["sha256", "label", "image_key", "source_id", "url_source"]
# phash: imagehash, 16 hex digits; fmt_sha256: of the fmt JPEG as stored (training checks it)
EXTRA_COLUMNS = ["orig_width", "orig_height", "phash", "fmt_sha256"]
FMT_JPEG_QUALITY = 95
FMT_INDEX_COLUMNS = ID_COLUMNS + list(imaging.STAT_COLUMNS) + EXTRA_COLUMNS
DATASET_INDEX_COLUMNS = FMT_INDEX_COLUMNS + ["split"]


class _Source:
    """The first ok row (lowest id) of a content and how many rows share that content
    (three slots: a dict per content was ~170 bytes more, 17 MB at 100,000)."""

    __slots__ = ("n_rows", "source_id", "url_source")

    def __init__(self, source_id: int, url_source: str) -> None:
        self.source_id, self.url_source, self.n_rows = source_id, url_source, 1


def _sources(plants_data: pd.DataFrame) -> dict[tuple[str, str], _Source]:
    """``(label, sha256) -> first ok row`` (lowest id) and how many rows share that content."""
    # the four columns it reads, row by row: not a dict per row of the whole table (~1 KB
    # each with every column: 100 MB at 100,000 rows)
    ok = plants_data.loc[
        plants_data["status"] == contracts.STATUS_OK, ["id", "label", "sha256", "url_source"]
    ].sort_values("id")
    out: dict[tuple[str, str], _Source] = {}
    for row_id, label, sha, url_source in zip(
        ok["id"], ok["label"], ok["sha256"], ok["url_source"], strict=True
    ):
        key = (label, sha)
        if key in out:
            out[key].n_rows += 1
        else:
            out[key] = _Source(int(row_id), url_source)
    return out


def _format_one(load: Callable[[], bytes], size: int) -> tuple[bytes, dict[str, Any]]:
    """The fmt JPEG's bytes and its index columns (stats of the image the model sees)."""
    decoded = imaging.decode_image(load(), fit=size)  # as the API decodes an upload
    img = decoded.image
    stats: dict[str, Any] = imaging.image_stats(img)
    stats["phash"] = str(imagehash.phash(img))  # near-duplicates (curation)
    stats["orig_width"], stats["orig_height"] = map(float, decoded.original_size)
    data = imaging.encode_jpeg(img, FMT_JPEG_QUALITY)
    stats["fmt_sha256"] = hashlib.sha256(data).hexdigest()
    return data, stats


# Chunks saved as they are formatted (a generator node: Kedro saves each one, images
# first, then the fmt index so far): memory stays flat and a killed run keeps its work.
FORMAT_CHUNK = 1000


def format_new_images(
    raw_images: dict[str, Callable[[], bytes]],
    plants_data: pd.DataFrame,
    fmt_inventory: dict[str, Any],
    fmt_index_previous: pd.DataFrame,
    params: dict,
    data_decisions: pd.DataFrame | None = None,
) -> Iterator[tuple[dict[str, bytes], pd.DataFrame, dict[str, Any]]]:
    """raw -> fmt for every ``ok`` row whose bytes are in the raw layer and that has no
    formatted twin yet, with the curation decisions in force applied (an excluded row left
    out, a relabelled one formatted under its new label); the formatting node, a generator.

    A twin counts when its file is in ``fmt_inventory`` (the fmt folder's listing) and its
    row is in ``fmt_index_previous`` (the fmt index of earlier runs, saved after its
    images) at the current ``image_size``: a rerun over an unchanged catalogue decodes
    nothing. Yields (new fmt JPEGs' bytes keyed ``{label}/{sha256}``, the whole fmt index so far,
    the report so far) every ``FORMAT_CHUNK`` images, and once more at the end.
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
    reused_frame = _reusable(fmt_inventory, fmt_index_previous, size, sources, stored)
    # what the index holds: reused twins, then the new images
    done: set[tuple[str, str]] = set(
        zip(reused_frame["label"], reused_frame["sha256"], strict=True)
    )
    parts = [reused_frame]  # one frame per chunk: concatenated, never rebuilt
    todo = sorted(k for k in sources if k in stored and k not in done)
    reused = len(done)
    missing_raw = [
        {"source_id": sources[k].source_id, "label": k[0], "sha256": k[1]}
        for k in sorted(sources)
        if k not in stored
    ]
    for m in missing_raw:
        log.warning("formatting: row %s is ok but its raw file is missing", m["source_id"])
    log.info(
        "formatting: %d images already formatted at %d px, %d to format",
        reused,
        size,
        len(todo),
    )

    def work(k: tuple[str, str]):
        try:
            return k, _format_one(stored[k], size), None
        except imaging.ImageDecodeError as exc:
            return k, None, f"{exc.reason}: {exc.detail}"

    undecodable: list[dict] = []
    formatted_now = 0

    def report() -> dict[str, Any]:
        seconds = time.perf_counter() - t0
        return {
            "image_size": size,
            "formatted": len(done),
            "formatted_now": formatted_now,
            "reused": reused,
            "seconds": round(seconds, 3),
            "images_per_s": round(formatted_now / seconds, 1)
            if formatted_now and seconds
            else None,
            "rows_sharing_content": sum(s.n_rows - 1 for s in sources.values()),
            "missing_raw": missing_raw,
            "undecodable": undecodable,
            "decisions_applied": decisions,
        }

    workers = max(1, p.workers)
    chunks = [todo[i : i + FORMAT_CHUNK] for i in range(0, len(todo), FORMAT_CHUNK)]
    with (
        ThreadPoolExecutor(max_workers=workers, thread_name_prefix="fmt") as pool,
        Progress(len(todo), "formatting", log) as progress,
    ):
        # the next chunk is decoded while the current one is saved
        running = pool.map(work, chunks[0]) if chunks else iter(())
        for n, _ in enumerate(chunks):
            results = list(running)
            progress.update(len(results))
            if n + 1 < len(chunks):
                running = pool.map(work, chunks[n + 1])
            fmt_images: dict[str, bytes] = {}
            rows = []
            for (label, sha), result, error in results:
                src = sources[(label, sha)]
                if error:
                    undecodable.append({"source_id": src.source_id, "label": label, "error": error})
                    log.warning("formatting: raw image of row %s skipped: %s", src.source_id, error)
                    continue
                img, stats = result
                image_key = f"{label}/{sha}"
                fmt_images[image_key] = img
                done.add((label, sha))
                rows.append(
                    {
                        "sha256": sha,
                        "label": label,
                        "image_key": image_key,
                        "source_id": src.source_id,
                        "url_source": src.url_source,
                        **stats,
                    }
                )
            parts.append(_index_frame(rows))
            formatted_now += len(fmt_images)
            if n + 1 < len(chunks):
                index_so_far = _concat(parts)
                yield fmt_images, index_so_far, report()
                # Saved by now (Kedro saves a chunk's outputs before asking for the next),
                # but Kedro's tee may keep this chunk alive for 57 more: empty it here.
                fmt_images.clear()
                index_so_far.drop(index_so_far.index, inplace=True)
    last = fmt_images if chunks else {}
    final = report()
    log.info(
        "formatting: %d images -> %dx%d in %.1f s (%s images/s), %d already formatted; %d ok "
        "rows without a raw file, %d undecodable",
        formatted_now,
        size,
        size,
        final["seconds"],
        final["images_per_s"],
        reused,
        len(missing_raw),
        len(undecodable),
    )
    fmt_index = _concat(parts).sort_values("image_key", ignore_index=True)
    yield last, fmt_index, final


def format_images(
    raw_images: dict[str, Callable[[], bytes]],
    plants_data: pd.DataFrame,
    params: dict,
    data_decisions: pd.DataFrame | None = None,
) -> tuple[dict[str, bytes], pd.DataFrame, dict[str, Any]]:
    """raw -> fmt for every ``ok`` row whose bytes are in the raw layer, from scratch, all
    at once: (fmt images, fmt index, report). For callers outside Kedro (tests, benchmarks);
    the pipeline runs :func:`format_new_images`."""
    images: dict[str, bytes] = {}
    empty = pd.DataFrame(columns=FMT_INDEX_COLUMNS)
    last: tuple = ()
    for last in format_new_images(raw_images, plants_data, {}, empty, params, data_decisions):
        images.update(last[0])
    return images, last[1], last[2]


def _reusable(
    fmt_inventory: dict[str, Any],
    previous: pd.DataFrame,
    size: int,
    sources: dict[tuple[str, str], _Source],
    stored: dict[tuple[str, str], Any],
) -> pd.DataFrame:
    """The previous fmt index rows still valid: formatted at ``size``, their file in the fmt
    folder (``fmt_inventory``), their content still an ``ok`` row with a raw file; with
    ``source_id``/``url_source`` refreshed from the table. Vectorised: no per-row dicts."""
    if previous is None or previous.empty or not set(FMT_INDEX_COLUMNS) <= set(previous.columns):
        return _index_frame([])
    present = {key.rsplit(".", 1)[0] for key in fmt_inventory}
    prev = previous.loc[
        (previous["width"] == size) & previous["image_key"].isin(present), FMT_INDEX_COLUMNS
    ]
    keys = list(zip(prev["label"], prev["sha256"], strict=True))
    keep = [k in sources and k in stored for k in keys]
    prev = prev.loc[np.asarray(keep, dtype=bool)].copy()
    kept = [k for k, ok in zip(keys, keep, strict=True) if ok]
    prev["source_id"] = np.asarray([sources[k].source_id for k in kept], dtype="int64")
    prev["url_source"] = [sources[k].url_source for k in kept]
    return prev.reset_index(drop=True)


def _concat(parts: list[pd.DataFrame]) -> pd.DataFrame:
    filled = [p for p in parts if len(p)]
    return pd.concat(filled, ignore_index=True) if filled else parts[0]


def _index_frame(rows: list[dict]) -> pd.DataFrame:
    fmt_index = pd.DataFrame(rows, columns=FMT_INDEX_COLUMNS)
    fmt_index["source_id"] = fmt_index["source_id"].astype("int64")
    return fmt_index


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
    task: dict,
) -> tuple[pd.DataFrame, dict[str, Any], dict[str, Any]]:
    """fmt index -> dataset index (duplicates dropped, split assigned) + fingerprint + report.

    Identical bytes under two labels are contradictory: every copy is dropped and reported.
    The fingerprint records ``params:task``'s labels (their order is the class index).
    When the fmt index has perceptual hashes, a near-duplicate (the task's
    ``near_duplicates.max_distance``) of an earlier image joins that image's split
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
    t = parse(TaskParams, task, "task")
    if "phash" in index.columns and index["phash"].notna().all():
        from plants_mlops.pipelines.curation.splits import join_near_duplicate_splits

        joined = join_near_duplicate_splits(index, t.near_duplicates.max_distance)
        moved = int((joined != index["split"]).sum())
        index["split"] = joined
    # reindex: an fmt index written before phash existed gets an empty column
    index = (
        index.sort_values("image_key").reset_index(drop=True).reindex(columns=DATASET_INDEX_COLUMNS)
    )
    fingerprint = fingerprint_of(index, p.image_size, t.labels)
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
