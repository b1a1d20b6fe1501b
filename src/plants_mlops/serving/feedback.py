"""Uncertain predictions and the feedback on them.

A prediction whose confidence is under ``uncertain_below`` (``PLANTS_UNCERTAIN_BELOW``) is
flagged ``uncertain`` in the response and the prediction log. With
``PLANTS_KEEP_UNCERTAIN_IMAGES=true`` its original bytes are kept, content-addressed, under
``PLANTS_UNCERTAIN_DIR`` (default ``data/01_raw/_uncertain``: in the raw store, outside the
``{label}/`` folders ingestion and formatting read), and the prediction log row names the
file. ``POST /feedback`` (the server's ``prediction_id`` + the true label, ``X-API-Key``)
finds the prediction in the prediction log, whichever worker or replica served it, and
files one candidate per prediction in ``feedback_candidates`` (a later feedback replaces
the pending one); it reaches ``plants_data`` only when a person accepts it.
"""

from __future__ import annotations

import hashlib
import logging
import os
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

log = logging.getLogger("plants_mlops.serving.feedback")


def keep_image(keep_dir: str, data: bytes, ext: str) -> str | None:
    """Keep ``data`` as ``{sha256}.{ext}`` under ``keep_dir`` (``ext``: the decoded image's
    format, jpg, png...); its path (None if the disk refuses: a full disk must not fail
    the prediction)."""
    sha = hashlib.sha256(data).hexdigest()
    path = Path(keep_dir).resolve() / f"{sha}.{ext if ext.isalnum() else 'bin'}"
    try:
        if not path.exists():
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp = path.with_suffix(f".{os.getpid()}.{threading.get_ident()}.tmp")
            tmp.write_bytes(data)
            tmp.replace(path)  # atomic: a reader never sees half an image
    except OSError as exc:
        log.warning("could not keep an uncertain image: %s", exc)
        return None
    return str(path)


class FeedbackStore:
    """Looks predictions up in the prediction log and files candidates in the plants_data
    database; the engine is made at the first feedback, so a database that is down never
    stops serving."""

    def __init__(self, config, log_store) -> None:
        self.db_url = config.db_url
        self.log_store = log_store  # the prediction log's sink (None: the log is off)
        # A prediction reaches the store within a flush interval: wait that long for it.
        self.wait_seconds = min(10.0, 2 * config.log_flush_seconds + 1.0)
        self._engine = None
        self._lock = threading.Lock()

    def find(self, prediction_id: str) -> dict[str, Any] | None:
        if self.log_store is None or not hasattr(self.log_store, "find"):
            return None
        deadline = time.monotonic() + self.wait_seconds
        while (found := self.log_store.find(prediction_id)) is None:
            if time.monotonic() >= deadline:
                return None
            time.sleep(0.1)
        return found

    def file(
        self, prediction: dict[str, Any], label: str, comment: str | None, labels: Sequence[str]
    ) -> tuple[int, bool]:
        """(candidate id, whether it replaced an earlier pending feedback); ``label`` must
        be one of ``labels`` (the served model's)."""
        from plants_mlops import db

        with self._lock:
            if self._engine is None:
                self._engine = db.make_engine(self.db_url)
        kept = prediction.get("kept_image")
        return db.file_feedback(
            self._engine,
            labels,
            prediction_id=prediction["prediction_id"],
            request_id=prediction.get("request_id"),
            true_label=label,
            predicted_label=prediction.get("label"),
            confidence=prediction.get("confidence"),
            model_version=prediction.get("model_version"),
            image_path=kept,
            image_sha256=Path(kept).stem if kept else None,
            comment=comment,
        )
