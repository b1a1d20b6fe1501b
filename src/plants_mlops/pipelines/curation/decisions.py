"""Curation decisions applied to formatting's inputs: a small filter, no I/O.

``apply_decisions`` takes what formatting reads (the raw layer's loaders keyed
``{label}/{sha256}.{ext}`` and the plants_data rows) and the decisions in force
(``db.decisions_in_force``, loaded by the ``data_decisions`` dataset) and returns the same
two things with an excluded row left out and a relabelled row under its new label. A
decision is on an image: it applies to every row holding the same bytes (accepted
feedback on a photo already catalogued is a second row), the newest decision on any copy
winning. The raw bytes stay where they are (a relabelled image is read from its original
key), so a ``restore`` brings the row back exactly as it was.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pandas as pd


def apply_decisions(
    raw_images: dict[str, Callable[[], bytes]],
    plants_data: pd.DataFrame,
    decisions: pd.DataFrame | None,
) -> tuple[dict[str, Callable[[], bytes]], pd.DataFrame, list[dict[str, Any]]]:
    """(raw loaders, rows, what was applied) with the decisions in force honoured."""
    if decisions is None or len(decisions) == 0:
        return raw_images, plants_data, []
    records = sorted(decisions.to_dict(orient="records"), key=lambda d: d["decided_at"])
    by_row = {int(d["row_id"]): d for d in records}
    sha_of = dict(zip(plants_data["id"].astype(int), plants_data["sha256"], strict=True))
    by_sha = {sha_of[r]: d for r, d in by_row.items() if isinstance(sha_of.get(r), str)}
    rows = plants_data.copy()
    applied: list[dict[str, Any]] = []
    keep = []
    raw = dict(raw_images)
    by_content = {}
    for key in raw_images:
        label, _, name = key.partition("/")
        by_content[(label, name.split(".", 1)[0])] = key
    for i, row in rows.iterrows():
        sha = row["sha256"]
        d = by_sha.get(sha) if isinstance(sha, str) else by_row.get(int(row["id"]))
        if d is None:
            keep.append(i)
            continue
        note = {
            "row_id": int(row["id"]),
            "action": d["action"],
            "reason": d["reason"],
            "decided_by": d["decided_by"],
            "decided_on": int(d["row_id"]),  # the row the decision named (a copy's, maybe)
            "decided_at": None if d.get("decided_at") is None else str(d["decided_at"]),
        }
        if d["action"] == "exclude":
            applied.append(note)
            continue
        new = d["label"]
        # a label outside the task is not dropped here: validation's label_set names it
        if d["action"] == "relabel" and new:
            old_key = by_content.get((row["label"], row["sha256"]))
            if old_key is not None:
                ext = old_key.rsplit(".", 1)[-1]
                raw[f"{new}/{row['sha256']}.{ext}"] = raw_images[old_key]
            note.update({"from": row["label"], "to": new})
            rows.at[i, "label"] = new
            applied.append(note)
        keep.append(i)
    return raw, rows.loc[keep].reset_index(drop=True), applied
