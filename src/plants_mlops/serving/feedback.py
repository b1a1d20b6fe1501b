"""Uncertain predictions and the feedback on them.

A prediction whose confidence is under ``uncertain_below`` (``PLANTS_UNCERTAIN_BELOW``) is
flagged ``uncertain`` in the response and the prediction log. With
``PLANTS_KEEP_UNCERTAIN_IMAGES=true`` its original bytes are kept, content-addressed, under
``PLANTS_UNCERTAIN_DIR`` (default ``data/01_raw/_uncertain``: in the raw store, outside the
``{label}/`` folders ingestion and formatting read), with a small JSON record of the
prediction named after the request id. ``POST /feedback`` (request id + true label,
``X-API-Key``) files a candidate in the ``feedback_candidates`` table; it reaches
``plants_data`` only when a person accepts it (``plants-mlops data feedback accept ID``),
and then the next ingestion stores the kept image like any other row.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import threading
from collections import OrderedDict
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from plants_mlops.contracts import LABELS

log = logging.getLogger("plants_mlops.serving.feedback")

_SAFE_ID = re.compile(r"^[A-Za-z0-9._-]{1,64}$")
_EXT = {
    "JPEG": "jpg",
    "JPG": "jpg",
    "PNG": "png",
    "WEBP": "webp",
    "GIF": "gif",
    "TIFF": "tif",
    "BMP": "bmp",
}


class RecentPredictions:
    """The last ``size`` predictions by request id (what a feedback refers to), and the kept
    images of the uncertain ones on disk (their records survive a restart)."""

    def __init__(self, keep_dir: str | None, size: int = 10_000) -> None:
        self.keep_dir = Path(keep_dir).resolve() if keep_dir else None
        self.size = size
        self._recent: OrderedDict[str, dict[str, Any]] = OrderedDict()
        self._lock = threading.Lock()

    def remember(self, request_id: str, record: dict[str, Any], data: bytes | None) -> None:
        if data is not None and self.keep_dir is not None:
            try:
                record = {**record, **self._keep(request_id, record, data)}
            except OSError as exc:  # a full disk must not fail the prediction
                log.warning("could not keep the image of request %s: %s", request_id, exc)
        with self._lock:
            self._recent[request_id] = record
            while len(self._recent) > self.size:
                self._recent.popitem(last=False)

    def _keep(self, request_id: str, record: dict[str, Any], data: bytes) -> dict[str, Any]:
        sha = hashlib.sha256(data).hexdigest()
        ext = _EXT.get(str(record.get("image_format", "")).upper(), "bin")
        self.keep_dir.mkdir(parents=True, exist_ok=True)
        path = self.keep_dir / f"{sha}.{ext}"
        if not path.exists():
            tmp = path.with_suffix(f".{os.getpid()}.{threading.get_ident()}.tmp")
            tmp.write_bytes(data)
            tmp.replace(path)  # atomic: a reader never sees half an image
        kept = {"image_path": str(path), "image_sha256": sha}
        if _SAFE_ID.match(request_id):
            meta = self.keep_dir / f"{request_id}.json"
            meta.write_text(json.dumps({**record, **kept}))
        return kept

    def lookup(self, request_id: str) -> dict[str, Any] | None:
        with self._lock:
            found = self._recent.get(request_id)
        if found is not None:
            return found
        if self.keep_dir is not None and _SAFE_ID.match(request_id):
            meta = self.keep_dir / f"{request_id}.json"
            if meta.is_file():
                return json.loads(meta.read_text())
        return None


class FeedbackStore:
    """Files candidates in ``feedback_candidates`` (the plants_data database); the engine
    is made at the first feedback, so a database that is down never stops serving."""

    def __init__(self, db_url: str) -> None:
        self.db_url = db_url
        self._engine = None
        self._lock = threading.Lock()

    def file(
        self,
        request_id: str,
        label: str,
        comment: str | None,
        seen: dict | None,
        labels: Sequence[str] = LABELS,
    ) -> int:
        """File the candidate; ``labels``: the served model's (the true label must be one)."""
        from plants_mlops import db

        with self._lock:
            if self._engine is None:
                self._engine = db.make_engine(self.db_url)
        seen = seen or {}
        return db.file_feedback(
            self._engine,
            labels,
            request_id=request_id,
            true_label=label,
            predicted_label=seen.get("label"),
            confidence=seen.get("confidence"),
            model_version=seen.get("model_version"),
            image_path=seen.get("image_path"),
            image_sha256=seen.get("image_sha256"),
            comment=comment,
        )
