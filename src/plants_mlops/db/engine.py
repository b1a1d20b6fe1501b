"""Engines and migrations: one schema version for the tables of ``plants_mlops.db``,
brought up to date in place (new tables created, new columns added, rows never touched)."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

import sqlalchemy as sa

from plants_mlops.db import decisions, feedback, retrain  # noqa: F401  (their tables join metadata)
from plants_mlops.db.base import metadata, redact, resolve_url, utcnow
from plants_mlops.db.plants_data import TABLE_NAME
from plants_mlops.errors import UserFacingError

log = logging.getLogger("plants_mlops.db")
T = TypeVar("T")

# Schema versions: 1 = plants_data; 2 = + data_decisions, feedback_candidates;
# 3 = + feedback_candidates.prediction_id (unique) and times_filed; retrain_guard, retrain_runs.
SCHEMA_VERSION = 3
schema_version = sa.Table(
    "plants_schema_version",
    metadata,
    sa.Column("version", sa.Integer, primary_key=True, autoincrement=False),
    sa.Column("applied_at", sa.DateTime(timezone=True), nullable=False),
)


def make_engine(url: str | None = None) -> sa.Engine:
    """An engine on the table's database; creates the SQLite folder and the table if needed."""
    url = resolve_url(url)
    try:
        parsed = sa.engine.make_url(url)
    except (sa.exc.ArgumentError, ValueError):
        # SQLAlchemy's message repeats the string, password included: say where it came from.
        raise UserFacingError(
            "not a database URL (PLANTS_DB_URL or --db-url; the value is not shown because it "
            "may hold a password): expected e.g. postgresql+psycopg2://user:pass@host/db"
        ) from None
    if parsed.get_backend_name() == "sqlite" and parsed.database not in (None, "", ":memory:"):
        Path(parsed.database).parent.mkdir(parents=True, exist_ok=True)
    engine = sa.create_engine(parsed, pool_pre_ping=True)
    try:
        check_integrity(engine)
        migrate(engine)
    except sa.exc.OperationalError as exc:
        if _damage(exc):
            raise DamagedStoreError(_damaged_db(engine, str(exc.orig))) from None
        raise UserFacingError(
            f"cannot reach the plants_data database at {redact(url)}: {exc.orig}"
        ) from None
    except sa.exc.DatabaseError as exc:  # "file is not a database", "disk image is malformed"
        raise DamagedStoreError(_damaged_db(engine, str(exc.orig))) from None
    return engine


class DamagedStoreError(UserFacingError):
    """A store's file is damaged: the message names the file and the fix."""


_CHECKED: dict[tuple, str] = {}  # (path, size, mtime) -> "ok": one check per file state


def _damage(exc: Exception) -> bool:
    text = str(exc).lower()
    return "malformed" in text or "not a database" in text or "corrupt" in text


def _damaged_db(engine: sa.Engine, detail: str) -> str:
    path = engine.url.database or str(engine.url)
    return (
        f"the database file {path} is damaged ({detail.splitlines()[0][:200]}): restore it "
        "from a backup, or move it aside and run `plants-mlops db seed` then the ingestion "
        "pipeline (the raw files already fetched are found again, not downloaded twice)"
    )


def check_integrity(engine: sa.Engine) -> str:
    """The engine's own integrity check where it offers one: SQLite's ``PRAGMA
    quick_check`` (pages, b-trees, record formats; O(size), ~10 ms per MB), once per state
    of the file in a process. ``"ok"``, ``"not checked"`` (other engines, in-memory
    databases), or DamagedStoreError naming the file and the fix."""
    if engine.dialect.name != "sqlite" or engine.url.database in (None, "", ":memory:"):
        return "not checked"
    path = Path(engine.url.database)
    try:
        st = path.stat()
    except FileNotFoundError:
        return "ok"  # created empty by the migration
    key = (str(path.resolve()), st.st_size, st.st_mtime_ns)
    if key in _CHECKED:
        return _CHECKED[key]
    try:
        with engine.connect() as conn:
            rows = [r[0] for r in conn.exec_driver_sql("PRAGMA quick_check(5)")]
    except sa.exc.DatabaseError as exc:
        raise DamagedStoreError(_damaged_db(engine, str(exc.orig))) from None
    if rows != ["ok"]:
        raise DamagedStoreError(_damaged_db(engine, "quick_check: " + "; ".join(rows)))
    _CHECKED[key] = "ok"
    return "ok"


def add_missing_columns(engine: sa.Engine, table: sa.Table) -> list[str]:
    """``ALTER TABLE ... ADD COLUMN`` for each column of ``table`` the database lacks (all
    nullable or with a server default, so existing rows stay valid). SQLite, MariaDB/MySQL
    and PostgreSQL all add a column in place. Returns the names added."""
    inspector = sa.inspect(engine)
    if not inspector.has_table(table.name):
        return []
    present = {c["name"] for c in inspector.get_columns(table.name)}
    added = []
    with engine.begin() as conn:
        for column in table.columns:
            if column.name in present:
                continue
            ddl = column.type.compile(dialect=engine.dialect)
            default = ""
            if column.server_default is not None:
                default = f" DEFAULT {column.server_default.arg}"
            name = engine.dialect.identifier_preparer.quote(column.name)
            tname = engine.dialect.identifier_preparer.quote(table.name)
            conn.execute(sa.text(f"ALTER TABLE {tname} ADD COLUMN {name} {ddl}{default}"))
            added.append(column.name)
    if added:
        log.info("upgraded table %s in place: added %s", table.name, ", ".join(added))
    return added


def migrate(engine: sa.Engine) -> int:
    """Bring the database to ``SCHEMA_VERSION`` in place: new tables are created, new
    columns added to old tables; rows are never touched. Idempotent, and safe when several
    processes (API workers, commands started together) migrate the same database at once:
    the one that loses a race for a table, column or index looks again and finds it made.
    Returns the version found before (0 = empty database, 1 = plants_data only, before
    versions were recorded)."""
    return racing_ddl(lambda: _migrate_once(engine))


def racing_ddl(make: Callable[[], T], tries: int = 5) -> T:
    """``make()`` (DDL that checks first, then creates), again when another process created
    the same table, column or index between the check and the create."""
    for attempt in range(tries):
        try:
            return make()
        except (sa.exc.OperationalError, sa.exc.ProgrammingError, sa.exc.IntegrityError) as exc:
            if attempt == tries - 1 or not _lost_a_race(exc):
                raise
            time.sleep(0.05 * (attempt + 1))
    raise AssertionError("unreachable")


def _lost_a_race(exc: sa.exc.DBAPIError) -> bool:
    """Another process created the same table, column or index a moment before: SQLite and
    PostgreSQL say "already exists", MariaDB "Duplicate column/key name", PostgreSQL's
    catalogue a duplicate key of pg_type."""
    text = str(exc.orig).lower()
    return "already exists" in text or "duplicate" in text


def _migrate_once(engine: sa.Engine) -> int:
    inspector = sa.inspect(engine)
    existing = set(inspector.get_table_names())
    before = 0
    if schema_version.name in existing:
        with engine.connect() as conn:
            before = conn.execute(sa.select(sa.func.max(schema_version.c.version))).scalar() or 0
    elif TABLE_NAME in existing:
        before = 1
    if before >= SCHEMA_VERSION:
        return before
    metadata.create_all(engine)
    for table in metadata.sorted_tables:
        if add_missing_columns(engine, table):
            for index in table.indexes:  # those of the new columns
                index.create(engine, checkfirst=True)
    try:
        with engine.begin() as conn:
            done = {r.version for r in conn.execute(sa.select(schema_version.c.version))}
            todo = [v for v in range(1, SCHEMA_VERSION + 1) if v not in done]
            if todo:
                conn.execute(
                    sa.insert(schema_version),
                    [{"version": v, "applied_at": utcnow()} for v in todo],
                )
    except sa.exc.IntegrityError:
        pass  # another process recorded the same upgrade at the same moment
    if before:
        log.info("database schema upgraded in place from version %d to %d", before, SCHEMA_VERSION)
    return before
