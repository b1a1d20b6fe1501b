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


def hash_words(hex_hashes) -> np.ndarray:
    """[N] uint64: each 16-hex-digit perceptual hash as one machine word."""
    return np.array([int(h, 16) for h in hex_hashes], dtype=np.uint64)


# Queries per block of the earlier-hash search: a [block, N] uint64 XOR (12.8 MB at
# N = 100,000) and its uint8 popcounts.
NEAREST_BLOCK = 16
NOT_EARLIER = 255  # the distance given to a hash that is not earlier (a popcount is <= 64)


def earlier_distances(words: np.ndarray):
    """Yield ``(start, d)`` for blocks of hashes: ``d[k, j]`` is the Hamming distance of hash
    ``start + k`` to hash ``j`` (``j < start + len(d)``), ``NOT_EARLIER`` where ``j`` is not
    earlier. Exact: every pair is compared (XOR + popcount on 64-bit words, a block of
    queries at a time), N^2/2 word operations: ~10x faster than comparing 64 booleans per
    pair, still quadratic."""
    n = len(words)
    for start in range(0, n, NEAREST_BLOCK):
        stop = min(n, start + NEAREST_BLOCK)
        d = np.bitwise_count(words[start:stop, None] ^ words[None, :stop])
        rows = np.arange(stop - start)
        # inside the block: only the earlier ones (strictly lower triangle)
        d[:, start:][rows[:, None] <= rows[None, :]] = NOT_EARLIER
        yield start, d


def nearest_earlier(words: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """For each hash i, the earlier hash j < i at the smallest Hamming distance (the
    earliest on a tie) and that distance; ``(-1, 65)`` for the first."""
    nearest = np.full(len(words), -1, dtype=np.int64)
    distance = np.full(len(words), 65, dtype=np.int64)
    for start, d in earlier_distances(words):
        best = d.argmin(axis=1)  # the first of the smallest: the earliest on a tie
        best_d = d[np.arange(len(d)), best].astype(np.int64)
        found = best_d < NOT_EARLIER
        nearest[start : start + len(d)] = np.where(found, best, -1)
        distance[start : start + len(d)] = np.where(found, best_d, 65)
    return nearest, distance


def pairs_within(words: np.ndarray, max_distance: int) -> tuple[np.ndarray, ...]:
    """Every pair ``i < j`` of hashes at most ``max_distance`` bits apart, as arrays
    ``(i, j, distance)`` ordered by ``i`` then ``j``."""
    parts: list[tuple[np.ndarray, ...]] = [(np.empty(0, dtype=np.int64),) * 3]
    for start, d in earlier_distances(words):
        later, earlier = np.nonzero(d <= min(max_distance, 64))
        parts.append((earlier, later + start, d[later, earlier].astype(np.int64)))
    found = [np.concatenate(column) for column in zip(*parts, strict=True)]
    order = np.lexsort((found[1], found[0]))
    return tuple(a[order] for a in found)


def join_near_duplicate_splits(index: pd.DataFrame, max_distance: int) -> pd.Series:
    """The ``split`` column with near-duplicates moved to the split of their earliest
    nearest earlier image. ``index`` needs ``source_id``, ``phash`` and ``split``."""
    if len(index) < 2 or max_distance < 0:
        return index["split"].copy()
    order = np.argsort(index["source_id"].to_numpy(), kind="stable")
    nearest, distance = nearest_earlier(hash_words(index["phash"].iloc[order]))
    splits = list(index["split"].iloc[order])
    for i in np.flatnonzero(distance <= max_distance):  # in order: a chain follows through
        splits[i] = splits[nearest[i]]
    out = index["split"].copy()
    out.iloc[order] = splits
    return out
