"""A dataset in the layout of the data pipelines' outputs, built straight from a folder of
``{label}/*.jpg`` (the shipped samples): for benchmarks and model tests that should not
depend on running ingestion and formatting first.

Returns what the catalog would load: ``dataset_index`` (DataFrame with ``image_key``,
``label``, ``split``, ``sha256`` and the image statistics), ``fmt_images``
(``{image_key: loader}``) and ``dataset_fingerprint``. The split is a hash of the image's
sha256 (70/15/15 by default), like the formatting pipeline's.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from plants_mlops import imaging
from plants_mlops.fingerprint import fingerprint_of


@dataclass
class DevDataset:
    dataset_index: pd.DataFrame
    fmt_images: dict
    dataset_fingerprint: dict


def _split(sha: str, fractions: tuple[float, float]) -> str:
    h = int(sha[:8], 16) / 0xFFFFFFFF
    return "train" if h < fractions[0] else "val" if h < fractions[0] + fractions[1] else "test"


def from_folder(
    folder: str | Path,
    *,
    per_label: int | None = None,
    size: int = 160,
    fractions: tuple[float, float] = (0.7, 0.15),
    labels: tuple[str, ...] | None = None,
) -> DevDataset:
    """``per_label`` images of each label (the first by file name; all when None),
    ``imaging.square_resize``d to ``size`` and held as JPEG bytes in memory. The labels are
    ``labels`` (class order), else the folder's sub-folders in name order."""
    rows, images = [], {}
    if labels is None:
        labels = tuple(sorted(p.name for p in Path(folder).iterdir() if p.is_dir()))
    for label in labels:
        paths = sorted((Path(folder) / label).glob("*.jpg"))[:per_label]
        if not paths:
            raise FileNotFoundError(f"no {label} images under {folder}")
        for path in paths:
            data = path.read_bytes()
            sha = hashlib.sha256(data).hexdigest()
            key = f"{label}/{sha}"
            if key in images:
                continue  # duplicate bytes
            img = imaging.decode_image(data, fit=size).image
            jpeg = imaging.encode_jpeg(img)
            images[key] = lambda jpeg=jpeg: jpeg
            rows.append(
                {
                    "sha256": sha,
                    "label": label,
                    "image_key": key,
                    **imaging.image_stats(img),
                    "fmt_sha256": hashlib.sha256(jpeg).hexdigest(),
                    "split": _split(sha, fractions),
                }
            )
    index = pd.DataFrame(rows)
    return DevDataset(index, images, fingerprint_of(index, size, labels))
