"""The prediction log under an outage and over time: bounded memory, one warning per
outage, nothing lost, old rows pruned. Real SQLite and PostgreSQL stores."""

from __future__ import annotations

import json
import logging
import time
from datetime import UTC, datetime, timedelta

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
        _wait(lambda: writer.buffered() == 0)
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
    assert stored | spilled == {f"r{i}" for i in range(100)}  # every row somewhere
    assert not stored & spilled


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
