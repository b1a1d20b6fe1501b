"""The ``retrain_runs`` table: one row per retraining run, and the guard that lets one run
at a time across API workers, replicas and monitoring runs.

The guard is the row of the run in progress: a run is taken by inserting a row into
``retrain_guard`` (its one primary key, ``name='retrain'``, makes the database refuse a
second holder), or by taking over a row whose holder stopped beating (a process killed
before it could release: no heartbeat for ``STALE_SECONDS``) with a conditional UPDATE,
which the database serialises too. The process that watches the run beats every
``HEARTBEAT_SECONDS`` and releases the guard when the run ends.
"""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import sqlalchemy as sa

from plants_mlops.db.base import metadata, utcnow

HEARTBEAT_SECONDS = 10.0
STALE_SECONDS = 60.0
GUARD = "retrain"

retrain_guard = sa.Table(
    "retrain_guard",
    metadata,
    sa.Column("name", sa.String(32), primary_key=True),
    sa.Column("run_id", sa.String(64), nullable=True),  # None: free
    sa.Column("heartbeat_at", sa.DateTime(timezone=True), nullable=False),
)

retrain_runs = sa.Table(
    "retrain_runs",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("run_id", sa.String(64), nullable=False, unique=True),
    sa.Column("reason", sa.Text, nullable=False),
    sa.Column("command", sa.Text, nullable=False),
    sa.Column("log_path", sa.String(1024), nullable=False),
    sa.Column("host", sa.String(255), nullable=False),
    sa.Column("pid", sa.Integer, nullable=True),
    sa.Column("started_at", sa.DateTime(timezone=True), nullable=False),
    sa.Column("finished_at", sa.DateTime(timezone=True), nullable=True),
    sa.Column("returncode", sa.Integer, nullable=True),
)


def take_guard(engine: sa.Engine, run_id: str) -> str | None:
    """Take the guard for ``run_id``: None when taken, else the run id that holds it."""
    g = retrain_guard
    now = utcnow()
    try:
        with engine.begin() as conn:
            conn.execute(sa.insert(g).values(name=GUARD, run_id=run_id, heartbeat_at=now))
        return None
    except sa.exc.IntegrityError:
        pass  # the row exists: free, stale, or held
    stale = now - timedelta(seconds=STALE_SECONDS)
    with engine.begin() as conn:
        taken = conn.execute(
            sa.update(g)
            .where(g.c.name == GUARD, sa.or_(g.c.run_id.is_(None), g.c.heartbeat_at < stale))
            .values(run_id=run_id, heartbeat_at=now)
        ).rowcount
        if taken == 1:
            return None
        return conn.execute(sa.select(g.c.run_id).where(g.c.name == GUARD)).scalar() or "?"


def beat(engine: sa.Engine, run_id: str) -> None:
    g = retrain_guard
    with engine.begin() as conn:
        conn.execute(sa.update(g).where(g.c.run_id == run_id).values(heartbeat_at=utcnow()))


def release_guard(engine: sa.Engine, run_id: str, returncode: int | None = None) -> None:
    """Free the guard ``run_id`` holds and record how its run ended."""
    g, r = retrain_guard, retrain_runs
    with engine.begin() as conn:
        conn.execute(sa.update(g).where(g.c.run_id == run_id).values(run_id=None))
        conn.execute(
            sa.update(r)
            .where(r.c.run_id == run_id)
            .values(finished_at=utcnow(), returncode=returncode)
        )


def record_run(engine: sa.Engine, **values: Any) -> None:
    with engine.begin() as conn:
        conn.execute(sa.insert(retrain_runs).values(**values, started_at=utcnow()))


def last_run(engine: sa.Engine) -> dict[str, Any] | None:
    """The newest run, with ``running``: not finished and its guard still beating."""
    r, g = retrain_runs, retrain_guard
    with engine.connect() as conn:
        row = conn.execute(sa.select(r).order_by(r.c.id.desc()).limit(1)).first()
        if row is None:
            return None
        held = conn.execute(sa.select(g).where(g.c.run_id == row.run_id)).first()
    stale = utcnow() - timedelta(seconds=STALE_SECONDS)
    beating = held is not None and _aware(held.heartbeat_at) >= stale
    return {**row._mapping, "running": row.finished_at is None and beating}


def _aware(value):
    """SQLite and MariaDB give naive datetimes back: they were stored in UTC."""
    from datetime import UTC

    return value if value.tzinfo else value.replace(tzinfo=UTC)


def update_run(engine: sa.Engine, run_id: str, **values: Any) -> None:
    with engine.begin() as conn:
        conn.execute(
            sa.update(retrain_runs).where(retrain_runs.c.run_id == run_id).values(**values)
        )
