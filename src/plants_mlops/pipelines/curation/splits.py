"""Near-duplicates keep to one split: a small function formatting calls.

``join_near_duplicate_splits`` walks the index in ``source_id`` order (the order rows were
added); an image whose perceptual hash is within ``max_distance`` bits of an earlier image
takes that image's split (the nearest one; the earliest on a tie) instead of its own hash
split. A new image that nearly duplicates a stored one therefore joins the stored one's
split, and adding images never moves an image that was there before. A pair can still
straddle splits when one image is near two earlier ones in different splits: validation's
``near_duplicates_straddle_test`` rule names it.
"""

from __future__ import annotations

import numpy as np
import pandas as pd


def hash_bits(hex_hashes: list[str]) -> np.ndarray:
    """[N, 64] bool: the bits of each 16-hex-digit perceptual hash."""
    raw = np.array([bytes.fromhex(h) for h in hex_hashes], dtype="S8")
    return np.unpackbits(np.frombuffer(raw.tobytes(), dtype=np.uint8).reshape(-1, 8), axis=1)


def join_near_duplicate_splits(index: pd.DataFrame, max_distance: int) -> pd.Series:
    """The ``split`` column with near-duplicates moved to the split of their earliest
    nearest earlier image. ``index`` needs ``source_id``, ``phash`` and ``split``."""
    if len(index) < 2 or max_distance < 0:
        return index["split"].copy()
    order = np.argsort(index["source_id"].to_numpy(), kind="stable")
    bits = hash_bits(list(index["phash"].iloc[order]))
    splits = list(index["split"].iloc[order])
    for i in range(1, len(order)):
        dist = np.count_nonzero(bits[:i] != bits[i], axis=1)
        nearest = int(np.argmin(dist))  # argmin: the earliest on a tie
        if dist[nearest] <= max_distance:
            splits[i] = splits[nearest]
    out = index["split"].copy()
    out.iloc[order] = splits
    return out
