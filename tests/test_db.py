"""The plants_data table on SQLite, MariaDB and PostgreSQL; seeding; the db commands."""

from __future__ import annotations

import json
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pandas as pd
import pytest
import sqlalchemy as sa
from data_testlib import manifest_rows, write_csv
from support.params import base_labels

from plants_mlops import cli, contracts, db
from plants_mlops.datasets.data_plants_table import PlantsTableDataset
from plants_mlops.errors import UserFacingError

LABELS = base_labels()  # the shipped task's (conf/base/task.yml)


@pytest.fixture(params=["sqlite", "mariadb", "postgresql"])
def db_url(request, tmp_path) -> str:
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'sub' / 'plants.db'}"  # the folder is created
    return request.getfixturevalue("mariadb_url" if request.param == "mariadb" else "postgres_url")


def test_table_seeds_updates_and_reports_on_every_backend(db_url, tmp_path):
    engine = db.make_engine(db_url)
    rows = manifest_rows(per_label=5)
    report = db.seed(engine, write_csv(tmp_path / "m.csv", rows), labels=LABELS)
    assert (report.added, report.unchanged, report.refused) == (10, 0, [])
    assert db.seed(engine, tmp_path / "m.csv", labels=LABELS).as_dict()["added"] == 0  # idempotent

    ds = PlantsTableDataset(credentials={"con": db_url})
    loaded = ds.load()
    assert list(loaded.columns) == list(db.COLUMNS)
    assert list(loaded["id"]) == list(range(1, 11))  # ids follow the CSV order
    assert set(loaded["status"]) == {contracts.STATUS_PENDING}
    assert list(loaded["sha256"]) == [r["sha256"] for r in rows]  # expected content hash

    when = pd.Timestamp("2026-11-23T10:00:00Z")
    updates = pd.DataFrame(
        [
            {
                "id": 1,
                "status": "ok",
                "error": None,
                "url_s3": "s3://b/01_raw/x.jpg",
                "ingested_at": when,
            },
            {
                "id": 2,
                "status": "failed",
                "error": "http_404: gone",
                "url_s3": None,
                "ingested_at": pd.NaT,
            },
        ]
    )
    ds.save(updates)
    after = ds.load().set_index("id")
    assert after.loc[1, "status"] == "ok" and after.loc[1, "url_s3"] == "s3://b/01_raw/x.jpg"
    assert after.loc[1, "sha256"] == rows[0]["sha256"]  # columns not given stay as they were
    assert pd.Timestamp(after.loc[1, "ingested_at"]).replace(tzinfo=None) == when.replace(
        tzinfo=None
    )
    assert after.loc[2, "error"] == "http_404: gone"
    assert after.loc[1, "updated_at"] >= after.loc[1, "created_at"]

    summary = db.status_summary(engine)
    assert summary["by_status"] == {"pending": 8, "ok": 1, "failed": 1}
    assert summary["failed"] == [
        {
            "id": 2,
            "url_source": rows[1]["url_source"],
            "label": "dandelion",
            "error": "http_404: gone",
        }
    ]
    with pytest.raises(sa.exc.IntegrityError), engine.begin() as conn:  # url_source is unique
        now = db.utcnow()
        conn.execute(
            sa.insert(db.plants_data).values(
                url_source=rows[0]["url_source"],
                label="grass",
                status="pending",
                created_at=now,
                updated_at=now,
            )
        )
    ds.release()  # the database is dropped after the test: no connection may stay open
    engine.dispose()


def test_seeding_the_shipped_manifest_twice_adds_400_rows_once(tmp_path):
    engine = db.make_engine(f"sqlite:///{tmp_path / 'p.db'}")
    first, second = db.seed(engine, labels=None), db.seed(engine, labels=LABELS)
    assert (first.added, second.added, second.unchanged) == (400, 0, 400)
    assert db.status_summary(engine)["by_label"] == {
        "dandelion": {"pending": 200, "ok": 0, "failed": 0},
        "grass": {"pending": 200, "ok": 0, "failed": 0},
    }


def test_new_images_are_added_by_adding_rows_and_bad_labels_are_refused(tmp_path):
    engine = db.make_engine(f"sqlite:///{tmp_path / 'p.db'}")
    rows = manifest_rows(per_label=2)
    db.seed(engine, write_csv(tmp_path / "a.csv", rows[:3]), labels=LABELS)
    more = rows + [
        {"url_source": "https://example.org/cat.jpg", "label": "cat"},
        {"url_source": "ftp://example.org/x.jpg", "label": "grass"},
        {"url_source": rows[3]["url_source"], "label": "grass"},  # twice in one CSV
    ]
    report = db.seed(engine, write_csv(tmp_path / "b.csv", more), labels=LABELS)
    assert report.added == 1 and report.unchanged == 3
    reasons = [r["reason"] for r in report.refused]
    assert "label 'cat' is not one of dandelion, grass" in reasons[0]
    assert "not an http(s):// or file:// URL" in reasons[1]
    assert "appears twice" in reasons[2]
    relabel = [{"url_source": rows[0]["url_source"], "label": "grass"}]
    report = db.seed(engine, write_csv(tmp_path / "c.csv", relabel), labels=LABELS)
    assert report.added == 0 and report.conflicts[0]["table_label"] == "dandelion"
    labels = {r["url_source"]: r["label"] for r in db.load_rows(engine)}
    assert labels[rows[0]["url_source"]] == "dandelion"  # the table keeps its label
    assert len(labels) == 4


def test_a_csv_without_the_needed_columns_is_a_clear_error(tmp_path):
    from plants_mlops.errors import UserFacingError

    engine = db.make_engine(f"sqlite:///{tmp_path / 'p.db'}")
    bad = tmp_path / "bad.csv"
    bad.write_text("url,class\nhttps://x/y.jpg,grass\n")
    with pytest.raises(UserFacingError, match="needs the columns url_source,label"):
        db.seed(engine, bad, labels=LABELS)
    with pytest.raises(UserFacingError, match="no such CSV"):
        db.seed(engine, tmp_path / "missing.csv", labels=LABELS)


def test_table_dataset_seeds_an_empty_table_from_the_manifest(tmp_path):
    ds = PlantsTableDataset(
        credentials={"con": f"sqlite:///{tmp_path / 'p.db'}"}, seed_if_empty=True
    )
    assert len(ds.load()) == 400
    assert len(ds.load()) == 400


def test_db_commands_seed_and_status(tmp_path, capsys):
    url = f"sqlite:///{tmp_path / 'cli.db'}"
    csv_path = write_csv(
        tmp_path / "m.csv",
        manifest_rows(per_label=1) + [{"url_source": "https://x/y.jpg", "label": "rose"}],
    )
    assert cli.main(["db", "seed", "--csv", str(csv_path), "--db-url", url]) == 1  # one refused
    out = capsys.readouterr().out
    assert "2 added" in out and "label 'rose' is not one of" in out
    assert cli.main(["db", "seed", "--csv", str(csv_path), "--db-url", url, "--json"]) == 1
    assert json.loads(capsys.readouterr().out)["added"] == 0
    assert cli.main(["db", "status", "--db-url", url, "--json"]) == 0
    status = json.loads(capsys.readouterr().out)
    assert status["total"] == 2 and status["by_status"]["pending"] == 2
    assert cli.main(["db", "status", "--db-url", url]) == 0
    assert "by status: pending 2" in capsys.readouterr().out


def test_an_unreachable_database_is_a_clear_error():
    from plants_mlops.errors import UserFacingError

    with pytest.raises(UserFacingError, match="cannot reach the plants_data database"):
        db.make_engine("postgresql+psycopg2://nobody:secret@127.0.0.1:1/none")


def test_an_existing_database_upgrades_in_place_and_records_decisions(db_url, tmp_path):
    """A database made before the curation tables (plants_data only, no version table)
    gains data_decisions and feedback_candidates in place; its rows are untouched."""
    old = sa.MetaData()
    db.plants_data.to_metadata(old)
    engine = sa.create_engine(db_url)
    if db_url.startswith("sqlite"):
        (tmp_path / "sub").mkdir(exist_ok=True)
    old.create_all(engine)
    db.seed(engine, write_csv(tmp_path / "m.csv", manifest_rows(per_label=3)), labels=LABELS)
    before = db.load_rows(engine)
    assert set(sa.inspect(engine).get_table_names()) == {"plants_data"}
    engine.dispose()

    upgraded = db.make_engine(db_url)  # what every command and dataset calls first
    tables = set(sa.inspect(upgraded).get_table_names())
    assert {"data_decisions", "feedback_candidates", "plants_schema_version"} <= tables
    assert db.load_rows(upgraded) == before
    with upgraded.connect() as conn:
        versions = conn.execute(sa.select(db.schema_version.c.version)).scalars().all()
    assert sorted(versions) == list(range(1, db.SCHEMA_VERSION + 1))
    assert db.migrate(upgraded) == db.SCHEMA_VERSION  # idempotent: nothing left to do

    db.record_decision(upgraded, 1, "exclude", "a drawing, not a photo", who="ana", labels=LABELS)
    db.record_decision(
        upgraded, 2, "relabel", "grass only", label="grass", who="ana", labels=LABELS
    )
    db.record_decision(upgraded, 1, "restore", "", who="bo", labels=LABELS)
    in_force = db.decisions_in_force(upgraded)
    assert [(d["row_id"], d["action"], d["label"]) for d in in_force] == [(2, "relabel", "grass")]
    history = db.decision_history(upgraded)
    assert [(d["row_id"], d["action"], d["decided_by"]) for d in history] == [
        (1, "exclude", "ana"),
        (2, "relabel", "ana"),
        (1, "restore", "bo"),
    ]
    assert history[0]["reason"] == "a drawing, not a photo" and history[0]["decided_at"]
    assert db.load_rows(upgraded) == before  # a decision never edits the row itself
    upgraded.dispose()


def test_decisions_refuse_bad_input_with_a_clear_error(tmp_path):
    engine = db.make_engine(f"sqlite:///{tmp_path / 'p.db'}")
    db.seed(engine, write_csv(tmp_path / "m.csv", manifest_rows(per_label=1)), labels=LABELS)
    with pytest.raises(UserFacingError, match="needs a reason"):
        db.record_decision(engine, 1, "exclude", "  ", labels=LABELS)
    with pytest.raises(UserFacingError, match="no plants_data row with id 99"):
        db.record_decision(engine, 99, "exclude", "x", labels=LABELS)
    with pytest.raises(UserFacingError, match="'rose' is not one of"):
        db.record_decision(engine, 1, "relabel", "x", label="rose", labels=LABELS)
    with pytest.raises(UserFacingError, match="already labelled 'dandelion'"):
        db.record_decision(engine, 1, "relabel", "x", label="dandelion", labels=LABELS)
    assert db.decision_history(engine) == []  # nothing half-recorded


def test_decisions_are_checked_against_the_decision_in_force(tmp_path):
    """A restore with nothing to restore, a second identical exclude and a relabel to the
    label already in force were recorded as if they did something; a relabel of a row
    relabelled before was refused against the table's label. A decision that replaces
    another says so (an exclude cancelled by a relabel)."""
    engine = db.make_engine(f"sqlite:///{tmp_path / 'p.db'}")
    db.seed(engine, write_csv(tmp_path / "m.csv", manifest_rows(per_label=1)), labels=LABELS)
    with pytest.raises(UserFacingError, match="row 1 has no decision in force: nothing to restore"):
        db.record_decision(engine, 1, "restore", "", labels=LABELS)
    assert db.record_decision(engine, 1, "exclude", "x", labels=LABELS)["replaces"] is None
    with pytest.raises(UserFacingError, match="row 1 is already excluded"):
        db.record_decision(engine, 1, "exclude", "again", labels=LABELS)
    done = db.record_decision(engine, 1, "relabel", "y", label="grass", labels=LABELS)
    assert done["replaces"] == "exclude"
    with pytest.raises(UserFacingError, match="row 1 is already labelled 'grass'"):
        db.record_decision(engine, 1, "relabel", "z", label="grass", labels=LABELS)
    back = db.record_decision(engine, 1, "relabel", "w", label="dandelion", labels=LABELS)
    assert back["replaces"] == "relabel"  # back to the table's label: allowed, it is a change
    assert db.record_decision(engine, 1, "restore", "", labels=LABELS)["replaces"] == "relabel"
    assert [d["action"] for d in db.decision_history(engine)] == [
        "exclude", "relabel", "relabel", "restore",
    ]  # fmt: skip


def _insert_rows(engine, n: int, columns) -> None:
    """``n`` rows ``https://example.org/{i}.jpg``, labels alternating, with ``columns(i)``."""
    now = db.utcnow()
    with engine.begin() as conn:
        conn.execute(
            sa.insert(db.plants_data),
            [
                {
                    "url_source": f"https://example.org/{i}.jpg",
                    "label": base_labels()[i % 2],
                    "created_at": now,
                    "updated_at": now,
                    **columns(i),
                }
                for i in range(n)
            ],
        )


def test_an_upsert_reads_only_the_rows_it_touches(db_url):
    """Ingestion saves its updates in chunks of ~100 rows: each chunk must not read every id
    of the table (O(table) per chunk is O(N^2) over a 100,000-row catalogue)."""
    engine = db.make_engine(db_url)
    _insert_rows(engine, 3000, lambda i: {"status": contracts.STATUS_PENDING})
    seen: list[str] = []

    def record(conn, cursor, statement, *args):
        seen.append(" ".join(statement.split()))

    sa.event.listen(engine, "before_cursor_execute", record)
    try:
        updated, inserted = db.upsert_rows(
            engine,
            [
                {"id": 5, "status": contracts.STATUS_OK},
                {"url_source": "https://example.org/7.jpg", "status": contracts.STATUS_FAILED},
                {"url_source": "https://example.org/new.jpg", "label": base_labels()[0]},
            ],
        )
    finally:
        sa.event.remove(engine, "before_cursor_execute", record)
    assert (updated, inserted) == (2, 1)
    selects = [s for s in seen if s.upper().startswith("SELECT")]
    assert selects, "the upsert looks the given ids and urls up"
    for stmt in selects:  # every lookup is restricted to the rows of the chunk
        assert " WHERE " in stmt.upper(), stmt
    rows = {r["id"]: r for r in db.load_rows(engine)}
    assert rows[5]["status"] == contracts.STATUS_OK
    assert rows[8]["status"] == contracts.STATUS_FAILED  # url .../7.jpg is id 8
    assert rows[3001]["url_source"] == "https://example.org/new.jpg"
    assert sum(r["status"] == contracts.STATUS_PENDING for r in rows.values()) == 2999
    engine.dispose()


def test_the_table_loads_a_chunk_at_a_time_into_the_same_frame(db_url, monkeypatch):
    """The table is read in chunks (a 100,000-row table held every row's Python objects at
    once): the frame is the one a single read gives, dtypes included, even when a whole
    chunk has no ingested_at (an object column on its own), with one string per label."""
    from plants_mlops.datasets import data_plants_table

    engine = db.make_engine(db_url)
    _insert_rows(
        engine,
        25,
        lambda i: {
            "status": contracts.STATUS_OK if i >= 12 else contracts.STATUS_PENDING,
            "ingested_at": db.utcnow() if i >= 12 else None,
        },
    )
    ds = PlantsTableDataset(credentials={"con": db_url})
    monkeypatch.setattr(data_plants_table, "LOAD_CHUNK_ROWS", 1000)
    whole = ds.load()
    monkeypatch.setattr(data_plants_table, "LOAD_CHUNK_ROWS", 10)
    chunked = ds.load()
    pd.testing.assert_frame_equal(chunked, whole)
    assert chunked["ingested_at"].dtype == whole["ingested_at"].dtype != object
    assert chunked["ingested_at"].isna().sum() == 12
    assert len({id(v) for v in chunked["label"]}) == len(base_labels())
    ds.release()
    engine.dispose()


def _open_at_once(url: str, barrier: threading.Barrier) -> str:
    barrier.wait()
    try:
        db.make_engine(url).dispose()
        return "ok"
    except Exception as exc:  # the message is what the test shows
        return f"{type(exc).__name__}: {exc}"


def test_workers_opening_a_new_database_at_once_all_succeed(db_url):
    """Two API workers' first feedback, or two commands started together, migrate the same
    empty database at once: each must come up (one creates, the others find it made)."""
    if db_url.startswith("sqlite"):
        Path(sa.engine.make_url(db_url).database).parent.mkdir(parents=True, exist_ok=True)
    with ThreadPoolExecutor(4) as pool:  # the drivers release the GIL: the DDL interleaves
        for _ in range(5):  # a race: a few rounds, each on an empty database
            engine = sa.create_engine(db_url)
            existing = sa.MetaData()
            existing.reflect(engine)
            existing.drop_all(engine)
            engine.dispose()
            barrier = threading.Barrier(4)
            outcomes = list(pool.map(_open_at_once, [db_url] * 4, [barrier] * 4))
            assert outcomes == ["ok"] * 4
