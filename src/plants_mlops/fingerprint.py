"""The dataset fingerprint: what identifies a dataset index, computed one way everywhere.

Formatting writes it with the index, validation records the one it passed, and training
recomputes it from the index it is about to read, so a changed index (a label flipped in
the parquet file, rows added or lost) never trains under an old validation.
"""

from __future__ import annotations

import hashlib
from typing import Any

import pandas as pd

from plants_mlops import contracts


def fingerprint_of(index: pd.DataFrame, image_size: int) -> dict[str, Any]:
    """A sha256 over (image size, every image's sha256/label/split), plus the counts."""
    h = hashlib.sha256(f"image_size={image_size}\n".encode())
    for row in index.sort_values("sha256")[["sha256", "label", "split"]].itertuples(index=False):
        h.update(f"{row.sha256},{row.label},{row.split}\n".encode())
    per_split_label = {
        s: {
            lab: int(((index["split"] == s) & (index["label"] == lab)).sum())
            for lab in contracts.LABELS
        }
        for s in contracts.SPLITS
    }
    return {
        "fingerprint": h.hexdigest(),
        "n_images": len(index),
        "image_size": image_size,
        "per_split": {s: int((index["split"] == s).sum()) for s in contracts.SPLITS},
        "per_label": {lab: int((index["label"] == lab).sum()) for lab in contracts.LABELS},
        "per_split_label": per_split_label,
    }
