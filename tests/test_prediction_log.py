"""The prediction log under an outage and over time: bounded memory, one warning per
outage, nothing lost, old rows pruned. Real SQLite and PostgreSQL stores."""

from __future__ import annotations

import json
import logging
import time
from datetime import UTC, datetime, timedelta

import pytest
import sqlalchemy as sa
from support.serving import prediction_record

from plants_mlops.db.prediction_log import SqlStore
from plants_mlops.serving.predlog import PredictionLogWriter


class FlakySink:
    """A real SQLite sink that refuses writes while ``down`` is set."""

    def __init__(self, url: str) -> None:
        self.inner = SqlStore(url)
        self.where = self.inner.where
        self.down = True

    def write(self, rows):
        if self.down:
            raise ConnectionError("database unreachable")
        self.inner.write(rows)

    def prune(self, **kwargs):
        return self.inner.prune(**kwargs)

    def close(self):
        self.inner.close()


def _wait(predicate, timeout: float = 20.0) -> None:
    end = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < end, "timed out"
        time.sleep(0.05)


def test_an_outage_warns_once_keeps_memory_bounded_and_loses_nothing(tmp_path, caplog):
    url = f"sqlite:///{tmp_path / 'log.db'}"
    sink = FlakySink(url)
    writer = PredictionLogWriter(
        sink,
        batch_size=10,
        flush_seconds=0.05,
        spill_dir=tmp_path / "spill",
        max_pending_rows=25,
    )
    with caplog.at_level(logging.INFO, logger="plants_mlops.serving.predlog"):
        for i in range(100):
            writer.submit(prediction_record(i))
            time.sleep(0.002)
        _wait(lambda: writer.pending() == 0 and writer.spilled >= 75)
        assert writer.buffered() <= 25
        sink.down = False
        # and the spilled rows are written back once the store is up
        _wait(lambda: writer.buffered() == 0 and not list((tmp_path / "spill").glob("*.jsonl")))
        writer.close()
    failures = [r for r in caplog.records if "write failed" in r.getMessage()]
    assert len(failures) == 1, [r.getMessage() for r in failures]
    assert any("recovered" in r.getMessage() for r in caplog.records)
    with sa.create_engine(url).connect() as conn:
        stored = {r[0] for r in conn.execute(sa.text("SELECT request_id FROM prediction_log"))}
    spilled = {
        json.loads(line)["request_id"]
        for f in (tmp_path / "spill").glob("*.jsonl")
        for line in f.read_text().splitlines()
    }
    assert stored == {f"r{i}" for i in range(100)} and not spilled  # every row in the store
    assert writer.replayed == writer.spilled >= 75


class SlowDownSink(FlakySink):
    """Down, and slow to say so: each refused write takes 20 ms, as a store timing out does."""

    def write(self, rows):
        time.sleep(0.02)
        super().write(rows)


def test_rows_in_memory_never_exceed_the_bound_even_while_a_write_is_failing(tmp_path):
    """The bound holds at every moment, not only between writes (before: a row was added,
    then a write attempted, then the excess spilled: max_pending_rows + 1 rows were held
    while the write was failing)."""
    import threading

    writer = PredictionLogWriter(
        SlowDownSink(f"sqlite:///{tmp_path / 'log.db'}"),
        batch_size=10,
        flush_seconds=0.05,
        spill_dir=tmp_path / "spill",
        max_pending_rows=25,
    )
    seen: list[int] = []
    done = threading.Event()

    def watch() -> None:
        while not done.is_set():
            seen.append(writer.buffered())
            time.sleep(0.001)

    watcher = threading.Thread(target=watch)
    watcher.start()
    for i in range(60):
        writer.submit(prediction_record(i))
    _wait(lambda: writer.pending() == 0 and writer.spilled >= 35)
    time.sleep(0.1)
    done.set()
    watcher.join()
    writer.close()
    assert max(seen) <= 25
    assert writer.spilled + writer.written >= 60  # nothing lost: spilled or written at close


class StuckSink:
    """A store that takes its time: each write waits until released."""

    where = "stuck"

    def __init__(self) -> None:
        import threading

        self.release = threading.Event()
        self.rows = 0

    def write(self, rows):
        self.release.wait(30)
        self.rows += len(rows)

    def prune(self, **kwargs):
        return 0

    def close(self):
        pass


def test_a_full_queue_drops_with_a_count_instead_of_growing(tmp_path):
    sink = StuckSink()
    writer = PredictionLogWriter(
        sink, batch_size=1, flush_seconds=0.05, spill_dir=tmp_path, max_queue=5
    )
    writer.submit(prediction_record(0))
    _wait(lambda: writer.pending() == 0)  # the writer took it and is stuck in write()
    accepted = sum(writer.submit(prediction_record(i)) for i in range(1, 21))
    assert accepted == 5 and writer.dropped == 15
    sink.release.set()
    writer.close()
    assert sink.rows == 6


def test_old_rows_and_rows_over_the_cap_are_pruned(tmp_path):
    url = f"sqlite:///{tmp_path / 'log.db'}"
    sink = SqlStore(url)
    old = datetime.now(UTC) - timedelta(days=40)
    sink.write([prediction_record(i, old).to_row() for i in range(5)])
    sink.write([prediction_record(i + 5).to_row() for i in range(10)])
    removed = sink.prune(max_age_days=30, max_rows=8)
    assert removed == 7  # 5 too old, then 2 over the cap (the oldest first)
    with sa.create_engine(url).connect() as conn:
        kept = sorted(r[0] for r in conn.execute(sa.text("SELECT request_id FROM prediction_log")))
    assert kept == sorted(f"r{i}" for i in range(7, 15))


class _SqliteOutage:
    """SQLite has no server to stop: another process's exclusive lock makes every write
    fail ('database is locked') until it is released, as a backup holding the file does."""

    def __init__(self, url: str) -> None:
        import sqlite3

        self.path = url.removeprefix("sqlite:///")
        self.conn = sqlite3.connect(self.path, isolation_level=None)
        self.url = url

    def down(self) -> None:
        self.conn.execute("BEGIN EXCLUSIVE")

    def up(self) -> None:
        self.conn.execute("ROLLBACK")


@pytest.mark.parametrize("store", ["sqlite", "postgresql", "mariadb"])
def test_a_store_outage_under_traffic_loses_no_row(tmp_path, request, store):
    """The store goes away while predictions keep coming: rows wait (40 batches), older ones
    are spilled to files, and once the store is back every one is in the table, the spill
    files written back and gone. benchmarks/bench_prediction_log_outage.py holds a 60 s
    outage under load."""
    from support.proxy import TcpProxy

    if store == "sqlite":
        url = f"sqlite:///{tmp_path / 'log.db'}"
        SqlStore(url).write([prediction_record(-1).to_row()])  # the table exists
        outage = _SqliteOutage(url)
    else:
        target = request.getfixturevalue("postgres_url" if store == "postgresql" else "mariadb_url")
        port = 5432 if store == "postgresql" else 3306
        outage = TcpProxy("127.0.0.1", port)
        url = outage.url_for(target)
        SqlStore(url).write([prediction_record(-1).to_row()])
    writer = PredictionLogWriter(
        SqlStore(url),
        batch_size=5,  # at most 200 rows held in memory: the 300 below must spill
        flush_seconds=0.05,
        spill_dir=tmp_path / "spill",
        backoff=0.1,
        max_backoff=0.5,
    )
    try:
        outage.down()
        for i in range(300):
            writer.submit(prediction_record(i))
            time.sleep(0.003)
        _wait(lambda: writer.pending() == 0 and writer.spilled > 0, timeout=60)
        assert writer.failed_writes > 0 and writer.buffered() <= writer.max_pending_rows
        outage.up()
        _wait(lambda: writer.buffered() == 0 and not list((tmp_path / "spill").glob("*")), 90)
    finally:
        writer.close()
        if store != "sqlite":
            outage.down()
    engine = sa.create_engine(url if store == "sqlite" else target)
    with engine.connect() as conn:
        ids = [r[0] for r in conn.execute(sa.text("SELECT prediction_id FROM prediction_log"))]
    engine.dispose()
    assert sorted(ids) == sorted([f"p{i}" for i in range(-1, 300)])  # each once, none lost
    assert writer.replayed == writer.spilled > 0


@pytest.mark.parametrize("store", ["postgresql", "mariadb"])
def test_long_client_ids_fit_and_one_bad_row_never_blocks_the_others(tmp_path, request, store):
    """A 64-character X-Request-ID (and longer texts) are cut to their column; a row the
    store refuses (here: no label) is set aside in a rejected-* file and the batch's other
    rows are written (before: one such row failed every write after it)."""
    url = request.getfixturevalue("postgres_url" if store == "postgresql" else "mariadb_url")
    records = [prediction_record(i) for i in range(6)]
    records[1].request_id = "x" * 64 + "-0"  # what a batch item's id was: 66 characters
    records[2].model_version = "v" * 40
    records[4].label = None  # NOT NULL
    writer = PredictionLogWriter(
        SqlStore(url), batch_size=6, flush_seconds=0.05, spill_dir=tmp_path / "spill"
    )
    for record in records:
        writer.submit(record)
    writer.close()
    engine = sa.create_engine(url)
    with engine.connect() as conn:
        rows = conn.execute(sa.text("SELECT prediction_id, request_id FROM prediction_log")).all()
    engine.dispose()
    assert sorted(r[0] for r in rows) == ["p0", "p1", "p2", "p3", "p5"]
    assert dict(rows)["p1"] == "x" * 64
    rejected = list((tmp_path / "spill").glob("rejected-*.jsonl"))
    assert [
        json.loads(line)["prediction_id"] for f in rejected for line in f.read_text().splitlines()
    ] == ["p4"]
    assert writer.rejected == 1


def test_failed_writes_back_off_and_the_pending_bound_follows_the_batch_size(tmp_path):
    sink = FlakySink(f"sqlite:///{tmp_path / 'log.db'}")
    writer = PredictionLogWriter(
        sink, batch_size=7, flush_seconds=0.02, spill_dir=tmp_path, backoff=0.2, max_backoff=5
    )
    assert writer.max_pending_rows == 40 * 7
    writer.submit(prediction_record(0))
    time.sleep(1.6)  # a try every 0.02 s without backoff: 80; with it, at 0.2, 0.6, 1.4 s
    assert 1 <= writer.failed_writes <= 4, writer.failed_writes
    sink.down = False
    _wait(lambda: writer.written == 1, timeout=10)
    writer.close()
