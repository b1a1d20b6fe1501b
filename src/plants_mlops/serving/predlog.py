"""The prediction log: every prediction written to a durable store off the request path.

Requests put a small record on a queue (``PredictionLogWriter.submit``, no I/O); one
background thread computes the image statistics, batches records and writes them to the
SQL table ``prediction_log`` (``plants_mlops.db.prediction_log``, ``PLANTS_DB_URL``) or to a
date-partitioned parquet dataset on S3.

Nothing accepted is lost (``tests/test_prediction_log.py`` counts the rows across an
outage): while the store is down, rows wait in memory up to ``PENDING_BATCHES`` batches,
older ones go to JSONL spill files, and failed writes are retried with a growing backoff;
once a write succeeds, spill files (this worker's, another worker's, a previous run's) are
written back into the store and deleted. A batch that fails while the store is up is
written row by row, so one bad row never blocks the others (it goes to a ``rejected-*``
file). ``close()`` drains the queue and flushes; what the store cannot take is spilled.
"""

from __future__ import annotations

import json
import logging
import os
import queue
import threading
import time
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np

from plants_mlops import imaging
from plants_mlops.db.prediction_log import STAT_PREFIX, SqlStore, store_down

log = logging.getLogger("plants_mlops.serving.predlog")

PENDING_BATCHES = 40  # rows held in memory for a store that is down, in batches
CLAIM_SECONDS = 600  # a spill file claimed longer ago: its replayer died, free it again


@dataclass
class PredictionRecord:
    prediction_id: str
    request_id: str
    created_at: datetime
    model_version: str
    label: str
    probabilities: dict[str, float]
    latency_ms: float
    image_format: str
    orig_width: int
    orig_height: int
    image: Any  # fmt-size PIL image: statistics are computed in the writer thread
    embedding: np.ndarray
    endpoint: str = "predict"
    uncertain: bool = False
    kept_image: str | None = None
    ood_score: float | None = None  # None: the model has no OOD detector
    out_of_distribution: bool | None = None

    def to_row(self) -> dict[str, Any]:
        stats = imaging.image_stats(self.image)
        row = {
            "prediction_id": self.prediction_id,
            "request_id": self.request_id,
            "created_at": self.created_at,
            "model_version": self.model_version,
            "endpoint": self.endpoint,
            "label": self.label,
            "confidence": float(max(self.probabilities.values())),
            "probabilities": json.dumps(self.probabilities),
            "latency_ms": float(self.latency_ms),
            "image_format": self.image_format,
            "orig_width": int(self.orig_width),
            "orig_height": int(self.orig_height),
            "embedding": np.asarray(self.embedding, dtype=np.float32).tobytes(),
            "uncertain": bool(self.uncertain),
            "kept_image": self.kept_image,
            "ood_score": None if self.ood_score is None else float(self.ood_score),
            "out_of_distribution": self.out_of_distribution,
        }
        row.update({f"{STAT_PREFIX}{k}": float(v) for k, v in stats.items()})
        return row


class S3ParquetSink:
    """``{uri}/date=YYYY-MM-DD/part-<time>-<uuid>.parquet``: append-only, one file a batch."""

    def __init__(self, uri: str, endpoint_url: str | None = None) -> None:
        import s3fs

        self.uri = uri.rstrip("/")
        kwargs = {"client_kwargs": {"endpoint_url": endpoint_url}} if endpoint_url else {}
        self.fs = s3fs.S3FileSystem(**kwargs)
        self.where = self.uri

    def write(self, rows: list[dict[str, Any]]) -> None:
        import pyarrow as pa
        import pyarrow.parquet as pq

        by_day: dict[str, list[dict[str, Any]]] = {}
        for row in rows:
            by_day.setdefault(row["created_at"].strftime("%Y-%m-%d"), []).append(row)
        for day, day_rows in by_day.items():
            table = pa.Table.from_pylist(day_rows)
            stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%S%f")
            path = f"{self.uri}/date={day}/part-{stamp}-{uuid.uuid4().hex[:8]}.parquet"
            with self.fs.open(path.removeprefix("s3://"), "wb") as fh:
                pq.write_table(table, fh)

    def find(self, prediction_id: str) -> dict[str, Any] | None:
        """The prediction among the last two days' files (feedback comes soon after)."""
        import pyarrow.dataset as ds

        today = datetime.now(UTC)
        for day in (today, today.fromordinal(today.toordinal() - 1)):
            root = f"{self.uri}/date={day:%Y-%m-%d}".removeprefix("s3://")
            if not self.fs.exists(root):
                continue
            found = (
                ds.dataset(root, filesystem=self.fs, format="parquet")
                .to_table(filter=ds.field("prediction_id") == prediction_id)
                .to_pylist()
            )
            if found:
                return found[0]
        return None

    def prune(self, **_: Any) -> int:
        """Retention on object storage is the bucket's lifecycle rule for this prefix
        (``plants-mlops storage init``), not a scan from the API."""
        return 0

    def close(self) -> None:
        pass


def make_sink(config):
    if config.prediction_log == "off":
        return None
    if config.prediction_log == "s3":
        return S3ParquetSink(config.log_s3_uri, os.environ.get("PLANTS_S3_ENDPOINT_URL"))
    return SqlStore(config.db_url)


def _to_json(row: dict[str, Any]) -> str:
    out = dict(row, created_at=row["created_at"].isoformat())
    out["embedding"] = np.frombuffer(row["embedding"], dtype=np.float32).tolist()
    return json.dumps(out)


def _from_json(line: str) -> dict[str, Any]:
    row = json.loads(line)
    row["created_at"] = datetime.fromisoformat(row["created_at"])
    row["embedding"] = np.asarray(row["embedding"], dtype=np.float32).tobytes()
    return row


class PredictionLogWriter:
    """Requests hand records over without waiting; one thread writes them in batches.

    Memory stays bounded whatever the store does: the hand-over queue holds at most
    ``max_queue`` records (more are dropped and counted, the request is never slowed), and
    at most ``max_pending_rows`` (``PENDING_BATCHES`` batches) wait for a store that is
    down; older ones are spilled to files and written back when it recovers. An outage is
    logged once when it starts and once when it ends. Failed writes are retried after
    ``backoff`` seconds, doubling up to ``max_backoff``. With ``retention`` the SQL table
    is pruned every ``prune_seconds``.
    """

    _STOP = object()

    def __init__(
        self,
        sink,
        *,
        batch_size: int = 256,
        flush_seconds: float = 1.0,
        spill_dir: Path = Path("data") / "prediction_log_spill",
        max_queue: int = 10_000,
        max_pending_rows: int | None = None,
        retention: dict[str, float] | None = None,
        prune_seconds: float = 600.0,
        gather_seconds: float = 0.05,
        backoff: float = 0.5,
        max_backoff: float = 30.0,
    ) -> None:
        self.sink = sink
        self.batch_size = batch_size
        self.flush_seconds = flush_seconds
        self.spill_dir = Path(spill_dir)
        self.max_pending_rows = max_pending_rows or PENDING_BATCHES * batch_size
        self.retention = retention
        self.prune_seconds = prune_seconds
        self.gather_seconds = gather_seconds
        self.backoff, self.max_backoff = backoff, max_backoff
        self.queue: queue.Queue = queue.Queue(maxsize=max(max_queue, 2 * batch_size))
        self.written = self.failed_writes = self.dropped = 0
        self.spilled = self.replayed = self.rejected = self.pruned = 0
        self._rows: list[dict[str, Any]] = []
        self._outage_failures = 0
        self._retry_at = 0.0
        self._delay = backoff
        self._full_warned = False
        self._next_prune = 0.0
        self._next_replay = 0.0
        self._thread = threading.Thread(target=self._run, name="prediction-log", daemon=True)
        self._thread.start()

    def submit(self, record: PredictionRecord) -> bool:
        """Queue ``record``; False (and counted in ``dropped``) when the queue is full."""
        try:
            self.queue.put_nowait(record)
        except queue.Full:
            self.dropped += 1
            if not self._full_warned:
                self._full_warned = True
                log.warning(
                    "prediction log queue full (%d records): dropping records until the "
                    "writer catches up",
                    self.queue.maxsize,
                    extra={"event": "prediction_log_queue_full"},
                )
            return False
        self._full_warned = False
        return True

    def pending(self) -> int:
        return self.queue.qsize()

    def buffered(self) -> int:
        """Rows taken from the queue and not yet written (waiting for the store)."""
        return len(self._rows)

    def close(self, timeout: float = 60.0) -> None:
        self.queue.put(self._STOP)  # blocks only while the queue is full
        self._thread.join(timeout=timeout)
        self.sink.close()

    def _run(self) -> None:
        deadline = time.monotonic() + self.flush_seconds
        stopping = False
        while not stopping:
            try:
                items = [self.queue.get(timeout=max(0.0, deadline - time.monotonic()))]
            except queue.Empty:
                items = []
            while len(items) < self.batch_size:  # and whatever else is already waiting
                try:
                    items.append(self.queue.get_nowait())
                except queue.Empty:
                    break
            for item in items:
                if item is self._STOP:
                    stopping = True
                    continue
                try:
                    row = item.to_row()
                except Exception:  # one bad record must not stop the log
                    log.exception("cannot build a prediction log row for %s", item.request_id)
                else:
                    self._make_room()
                    self._rows.append(row)
            now = time.monotonic()
            due = stopping or len(self._rows) >= self.batch_size or now >= deadline
            if self._rows and due and (stopping or now >= self._retry_at):
                self._rows = self._write(self._rows, final=stopping)
            if now >= deadline:
                deadline = now + self.flush_seconds
            if not self._outage_failures and not stopping:
                self._maybe_replay()
                self._maybe_prune()
            if not stopping and self.queue.qsize() < self.batch_size:
                # Under load, let records gather instead of waking for each one.
                time.sleep(min(self.gather_seconds, max(0.0, deadline - time.monotonic())))
        if self._rows:
            self._spill(self._rows, reason="store unreachable at shutdown")
            self._rows = []

    def _make_room(self) -> None:
        """Before a row joins the rows held for a store that is down: at the bound, the
        oldest go to a spill file (a batch at a time, not one file per row)."""
        if len(self._rows) < self.max_pending_rows:
            return
        overflow = min(len(self._rows), len(self._rows) - self.max_pending_rows + self.batch_size)
        self._spill(self._rows[:overflow], reason="store down")
        self._rows = self._rows[overflow:]

    def _maybe_prune(self) -> None:
        if not self.retention or time.monotonic() < self._next_prune:
            return
        self._next_prune = time.monotonic() + self.prune_seconds
        try:
            removed = self.sink.prune(**self.retention)
        except Exception as exc:  # retention must never stop the log
            log.warning("prediction log retention failed: %s", exc)
            return
        self.pruned += removed
        if removed:
            log.info(
                "prediction log retention removed %d rows",
                removed,
                extra={"event": "prediction_log_pruned", "rows": removed, **self.retention},
            )

    def _write(self, rows: list[dict[str, Any]], final: bool = False) -> list[dict[str, Any]]:
        """Write ``rows``; returns those the store could not take (it is down)."""
        for attempt in range(3 if final else 1):
            try:
                self.sink.write(rows)
            except Exception as exc:
                rows = self._write_each(rows) if len(rows) > 1 else rows
                if not rows:
                    break
                self._failed(exc, len(rows))
                if final:
                    time.sleep(0.5 * (attempt + 1))
                continue
            self.written += len(rows)
            break
        else:
            return rows
        if self._outage_failures:
            log.info(
                "prediction log store recovered after %d failed writes",
                self._outage_failures,
                extra={"event": "prediction_log_recovered"},
            )
        self._outage_failures, self._retry_at, self._delay = 0, 0.0, self.backoff
        return []

    def _write_each(self, rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """Row by row after a failed batch: a bad row is set aside, the others written;
        the rows from the first that fails because the store is down are returned."""
        write_one = getattr(self.sink, "write_one", None) or (lambda r: self.sink.write([r]))
        for i, row in enumerate(rows):
            try:
                if write_one(row) is not False:
                    self.written += 1
            except Exception as exc:
                if store_down(exc):
                    return rows[i:]
                self.rejected += 1
                self._spill([row], reason=f"row refused by the store ({exc})", prefix="rejected")
        return []

    def _failed(self, exc: Exception, rows: int) -> None:
        self.failed_writes += 1
        self._outage_failures += 1
        self._retry_at = time.monotonic() + self._delay
        self._delay = min(self._delay * 2, self.max_backoff)
        if self._outage_failures == 1:
            log.warning(
                "prediction log write failed (%s); keeping rows and retrying with backoff "
                "until the store is back",
                exc,
                extra={"event": "prediction_log_write_failed", "rows": rows},
            )

    def _spill(self, rows: list[dict[str, Any]], reason: str, prefix: str = "spill") -> None:
        self.spill_dir.mkdir(parents=True, exist_ok=True)
        name = f"{prefix}-{datetime.now(UTC):%Y%m%dT%H%M%S}-{uuid.uuid4().hex[:6]}.jsonl"
        tmp = self.spill_dir / f".{name}.tmp"
        tmp.write_text("".join(_to_json(row) + "\n" for row in rows))
        tmp.replace(self.spill_dir / name)  # a replaying writer never reads half a file
        if prefix == "spill":
            self.spilled += len(rows)
        log.error(
            "prediction log %s: %d rows kept in %s",
            reason,
            len(rows),
            self.spill_dir / name,
            extra={"event": f"prediction_log_{prefix}", "rows": len(rows)},
        )

    def _release_claims(self) -> None:
        """Spill files claimed by a writer that died while replaying them (in any worker or
        replica sharing the folder): free again."""
        for path in self.spill_dir.glob("spill-*.jsonl.claimed-*"):
            try:
                if time.time() - path.stat().st_mtime > CLAIM_SECONDS:
                    path.replace(path.with_name(path.name.split(".claimed-")[0]))
            except FileNotFoundError:  # its replayer finished meanwhile
                continue

    def _maybe_replay(self) -> None:
        """Write spilled rows back into the store, a file at a time (each claimed by a
        rename, so two workers never replay the same file)."""
        if time.monotonic() < self._next_replay:
            return
        self._next_replay = time.monotonic() + max(self.flush_seconds, 1.0)
        self._release_claims()
        for path in sorted(self.spill_dir.glob("spill-*.jsonl")):
            claimed = path.with_name(f"{path.name}.claimed-{os.getpid()}-{uuid.uuid4().hex[:6]}")
            try:
                path.rename(claimed)  # atomic: one writer wins the file
                os.utime(claimed)  # the claim's age (CLAIM_SECONDS)
            except FileNotFoundError:  # another writer took it
                continue
            rows = [_from_json(line) for line in claimed.read_text().splitlines() if line]
            before = self.written
            left = self._write(rows)
            self.replayed += self.written - before
            if left:  # the store went down again: keep what is left, try later
                claimed.write_text("".join(_to_json(row) + "\n" for row in left))
                claimed.replace(path)
                return
            claimed.unlink()
            log.info(
                "prediction log: %d spilled rows written back from %s",
                len(rows),
                path.name,
                extra={"event": "prediction_log_replayed", "rows": len(rows)},
            )
