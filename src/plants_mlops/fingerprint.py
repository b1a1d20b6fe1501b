"""The dataset fingerprint: what identifies a dataset index, computed one way everywhere.

Formatting writes it with the index, validation records the one it passed, and training
recomputes it from the index it is about to read, so a changed index (a label flipped in
the parquet file, rows added or lost) never trains under an old validation.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from typing import Any

import pandas as pd

from plants_mlops import contracts


def fingerprint_of(index: pd.DataFrame, image_size: int, labels: Sequence[str]) -> dict[str, Any]:
    """A sha256 over (image size, the task's ordered labels, every image's
    sha256/label/split), plus the counts. ``labels`` is the task's label list (class index =
    position): recorded with the data, it is what training builds its head from (a label
    outside it is validation's ``label_set`` failure)."""
    labels = [str(lab) for lab in labels]
    h = hashlib.sha256(f"image_size={image_size}\n".encode())
    h.update(f"labels={','.join(labels)}\n".encode())
    for row in index.sort_values("sha256")[["sha256", "label", "split"]].itertuples(index=False):
        h.update(f"{row.sha256},{row.label},{row.split}\n".encode())
    per_split_label = {
        s: {lab: int(((index["split"] == s) & (index["label"] == lab)).sum()) for lab in labels}
        for s in contracts.SPLITS
    }
    return {
        "fingerprint": h.hexdigest(),
        "n_images": len(index),
        "image_size": image_size,
        "labels": labels,
        "per_split": {s: int((index["split"] == s).sum()) for s in contracts.SPLITS},
        "per_label": {lab: int((index["label"] == lab).sum()) for lab in labels},
        "per_split_label": per_split_label,
    }
