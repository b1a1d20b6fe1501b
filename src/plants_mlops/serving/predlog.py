"""The prediction log: every prediction written to a durable store off the request path.

Requests put a small record on a queue (``PredictionLogWriter.submit``, no I/O); one
background thread computes the image statistics, batches records and writes them to the
SQL table ``prediction_log`` (``PLANTS_DB_URL``) or to a date-partitioned parquet dataset
on S3. ``close()`` drains the queue and flushes: a clean shutdown loses nothing. If the
store stays unreachable, the rows left at shutdown go to a JSONL spill file instead.
"""

from __future__ import annotations

import json
import logging
import queue
import threading
import time
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np

from plants_mlops import contracts, imaging
from plants_mlops.serving.osthreads import name_os_thread

log = logging.getLogger("plants_mlops.serving.predlog")

TABLE = contracts.PREDICTION_LOG_TABLE
STAT_PREFIX = contracts.PREDICTION_LOG_STAT_PREFIX
SPILL_DIR = Path("data") / "prediction_log_spill"


@dataclass
class PredictionRecord:
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
    ood_score: float | None = None  # None: the model has no OOD detector
    out_of_distribution: bool | None = None

    def to_row(self) -> dict[str, Any]:
        stats = imaging.image_stats(self.image)
        row = {
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
            "ood_score": None if self.ood_score is None else float(self.ood_score),
            "out_of_distribution": self.out_of_distribution,
        }
        row.update({f"{STAT_PREFIX}{k}": float(v) for k, v in stats.items()})
        return row


def sql_table(metadata=None):
    import sqlalchemy as sa

    metadata = metadata or sa.MetaData()
    return sa.Table(
        TABLE,
        metadata,
        sa.Column(
            "id",
            sa.BigInteger().with_variant(sa.Integer, "sqlite"),
            primary_key=True,
            autoincrement=True,
        ),
        sa.Column("request_id", sa.String(64), nullable=False, index=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False, index=True),
        sa.Column("model_version", sa.String(32), nullable=False),
        sa.Column("endpoint", sa.String(16), nullable=False),
        sa.Column("label", sa.String(64), nullable=False),
        sa.Column("confidence", sa.Float, nullable=False),
        sa.Column("probabilities", sa.Text, nullable=False),
        sa.Column("latency_ms", sa.Float, nullable=False),
        sa.Column("image_format", sa.String(16), nullable=False),
        sa.Column("orig_width", sa.Integer, nullable=False),
        sa.Column("orig_height", sa.Integer, nullable=False),
        *[sa.Column(f"{STAT_PREFIX}{c}", sa.Float, nullable=False) for c in imaging.STAT_COLUMNS],
        sa.Column("embedding", sa.LargeBinary, nullable=False),
        # added later: a log made before has it added in place (db.add_missing_columns)
        sa.Column("uncertain", sa.Boolean, nullable=True),
        sa.Column("ood_score", sa.Float, nullable=True),
        sa.Column("out_of_distribution", sa.Boolean, nullable=True),
    )


class SqlSink:
    def __init__(self, url: str) -> None:
        import sqlalchemy as sa

        if url.startswith("sqlite:///"):
            Path(url.removeprefix("sqlite:///")).parent.mkdir(parents=True, exist_ok=True)
        self.engine = sa.create_engine(url, pool_pre_ping=True)
        self.table = sql_table()
        self.created = False  # the table is created at the first write: a database that is
        # down at start-up must not stop the API from serving
        self.where = f"{self.engine.url.render_as_string(hide_password=True)} table {TABLE}"

    def write(self, rows: list[dict[str, Any]]) -> None:
        if not self.created:
            from plants_mlops.db import add_missing_columns

            self.table.metadata.create_all(self.engine, checkfirst=True)
            add_missing_columns(self.engine, self.table)
            self.created = True
        with self.engine.begin() as conn:
            conn.execute(self.table.insert(), rows)

    def prune(self, *, max_age_days: float, max_rows: int) -> int:
        """Delete rows older than ``max_age_days``, then the oldest beyond ``max_rows``."""
        import sqlalchemy as sa

        if not self.created:
            if not sa.inspect(self.engine).has_table(TABLE):
                return 0
            self.created = True
        t = self.table
        cutoff = datetime.now(UTC) - timedelta(days=max_age_days)
        with self.engine.begin() as conn:
            removed = conn.execute(sa.delete(t).where(t.c.created_at < cutoff)).rowcount or 0
            count = conn.execute(sa.select(sa.func.count()).select_from(t)).scalar_one()
            if count > max_rows:
                # the id of the oldest row to keep; everything older goes
                keep_from = conn.execute(
                    sa.select(t.c.id).order_by(t.c.id.desc()).offset(max_rows - 1).limit(1)
                ).scalar_one()
                removed += conn.execute(sa.delete(t).where(t.c.id < keep_from)).rowcount or 0
        return int(removed)

    def close(self) -> None:
        self.engine.dispose()


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

    def prune(self, **_: Any) -> int:
        """Retention on object storage is the bucket's lifecycle rule for this prefix
        (``plants-mlops storage init``), not a scan from the API."""
        return 0

    def close(self) -> None:
        pass


def make_sink(config):
    import os

    if config.prediction_log == "off":
        return None
    if config.prediction_log == "s3":
        return S3ParquetSink(config.log_s3_uri, os.environ.get("PLANTS_S3_ENDPOINT_URL"))
    return SqlSink(config.db_url)


class PredictionLogWriter:
    """Requests hand records over without waiting; one thread writes them in batches.

    Memory stays bounded whatever the store does: the hand-over queue holds at most
    ``max_queue`` records (more are dropped and counted, the request is never slowed), and
    while the store is down at most ``max_pending_rows`` rows wait in memory; older ones
    go to a spill file, so nothing that was accepted is lost. An outage is logged once when
    it starts and once when it ends, not once per batch. With ``retention`` the SQL table is
    pruned every ``prune_seconds``.

    The thread takes records in groups: after each pass it sleeps ``gather_seconds`` (or
    until the flush deadline) unless a batch is already waiting. Waking on every record, as
    a blocking ``get`` per record did, cost the serving threads more CPU than the row itself
    (docs/serving.md, *Where the server's CPU goes*).
    """

    _STOP = object()

    def __init__(
        self,
        sink,
        *,
        batch_size: int = 256,
        flush_seconds: float = 1.0,
        spill_dir: Path = SPILL_DIR,
        max_queue: int = 10_000,
        max_pending_rows: int = 10_000,
        retention: dict[str, float] | None = None,
        prune_seconds: float = 600.0,
        gather_seconds: float = 0.05,
    ) -> None:
        self.sink = sink
        self.batch_size = batch_size
        self.flush_seconds = flush_seconds
        self.spill_dir = spill_dir
        self.max_pending_rows = max_pending_rows
        self.retention = retention
        self.prune_seconds = prune_seconds
        self.gather_seconds = gather_seconds
        self.queue: queue.Queue = queue.Queue(maxsize=max_queue)
        self.written = 0
        self.failed_writes = 0
        self.dropped = 0
        self.spilled = 0
        self.pruned = 0
        self._rows: list[dict[str, Any]] = []
        self._outage_failures = 0
        self._full_warned = False
        self._next_prune = 0.0
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
        name_os_thread("prediction-log")
        deadline = time.monotonic() + self.flush_seconds
        stopping = False
        while not stopping:
            timeout = max(0.0, deadline - time.monotonic())
            try:
                items = [self.queue.get(timeout=timeout)]
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
            rows = self._rows
            if rows and (stopping or len(rows) >= self.batch_size or time.monotonic() >= deadline):
                self._rows = self._write(rows, final=stopping)
            if time.monotonic() >= deadline:
                deadline = time.monotonic() + self.flush_seconds
            self._maybe_prune()
            if not stopping and self.queue.qsize() < self.batch_size:
                # Under load, let records gather instead of waking for each one: a wake per
                # request costs the serving threads more CPU than the row itself.
                time.sleep(min(self.gather_seconds, max(0.0, deadline - time.monotonic())))
        if self._rows:
            self._spill(self._rows, reason="store unreachable at shutdown")
            self._rows = []

    def _make_room(self) -> None:
        """Before a row joins the rows held for a store that is down: at the bound, the
        oldest go to a spill file (a batch at a time, not one file per row), so at no
        moment are more than ``max_pending_rows`` rows in memory."""
        if len(self._rows) < self.max_pending_rows:
            return
        overflow = min(len(self._rows), len(self._rows) - self.max_pending_rows + self.batch_size)
        self._spill(self._rows[:overflow], reason="store down")
        self._rows = self._rows[overflow:]

    def _maybe_prune(self) -> None:
        if not self.retention or self._outage_failures or time.monotonic() < self._next_prune:
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

    def _write(self, rows: list[dict[str, Any]], final: bool) -> list[dict[str, Any]]:
        attempts = 3 if final else 1
        for attempt in range(attempts):
            try:
                self.sink.write(rows)
            except Exception as exc:  # store down: keep rows, retry later
                self.failed_writes += 1
                self._outage_failures += 1
                if self._outage_failures == 1:
                    log.warning(
                        "prediction log write failed (%s); keeping rows and retrying quietly "
                        "until the store is back",
                        exc,
                        extra={"event": "prediction_log_write_failed", "rows": len(rows)},
                    )
                if final:
                    time.sleep(0.5 * (attempt + 1))
                continue
            self.written += len(rows)
            if self._outage_failures:
                log.info(
                    "prediction log store recovered after %d failed writes",
                    self._outage_failures,
                    extra={"event": "prediction_log_recovered", "rows": len(rows)},
                )
                self._outage_failures = 0
            return []
        return rows  # kept in memory (bounded): the next flush or the spill file takes them

    def _spill(self, rows: list[dict[str, Any]], reason: str) -> None:
        self.spill_dir.mkdir(parents=True, exist_ok=True)
        path = (
            self.spill_dir / f"spill-{datetime.now(UTC):%Y%m%dT%H%M%S}-{uuid.uuid4().hex[:6]}.jsonl"
        )
        with path.open("w") as fh:
            for row in rows:
                out = dict(row)
                out["created_at"] = row["created_at"].isoformat()
                out["embedding"] = np.frombuffer(row["embedding"], dtype=np.float32).tolist()
                fh.write(json.dumps(out) + "\n")
        self.spilled += len(rows)
        log.error(
            "prediction log %s: %d rows spilled to %s",
            reason,
            len(rows),
            path,
            extra={"event": "prediction_log_spilled", "rows": len(rows)},
        )
