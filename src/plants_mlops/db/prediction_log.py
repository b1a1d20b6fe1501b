"""The ``prediction_log`` table: one row per prediction the API served, written by its
prediction-log writer (``serving/predlog.py``), read by monitoring and by feedback.

The API creates it at its first write (a database down at start-up must not stop it
serving); columns added later are added in place. ``prediction_id`` is the server's own id
of a prediction, unique: a row replayed twice (a spill file after an outage) is kept once.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import sqlalchemy as sa

from plants_mlops import contracts, imaging
from plants_mlops.db.base import redact

TABLE = contracts.PREDICTION_LOG_TABLE
STAT_PREFIX = contracts.PREDICTION_LOG_STAT_PREFIX


def sql_table(metadata: sa.MetaData | None = None) -> sa.Table:
    return sa.Table(
        TABLE,
        metadata or sa.MetaData(),
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
        # added later: a log made before gets them in place (add_missing_columns)
        sa.Column("uncertain", sa.Boolean, nullable=True),
        sa.Column("ood_score", sa.Float, nullable=True),
        sa.Column("out_of_distribution", sa.Boolean, nullable=True),
        sa.Column("prediction_id", sa.String(32), nullable=True),
        sa.Column("kept_image", sa.String(1024), nullable=True),  # for feedback
        sa.Index("ux_prediction_log_prediction_id", "prediction_id", unique=True),
    )


def store_down(exc: BaseException) -> bool:
    """Whether a failed write means the store is unreachable (retry later) rather than
    that a row is unacceptable (a bad row: the others must still be written)."""
    if isinstance(exc, sa.exc.DBAPIError):
        return exc.connection_invalidated or isinstance(
            exc, sa.exc.OperationalError | sa.exc.InterfaceError
        )
    return not isinstance(exc, sa.exc.StatementError | ValueError | TypeError)


class SqlStore:
    def __init__(self, url: str) -> None:
        parsed = sa.engine.make_url(url)
        if parsed.get_backend_name() == "sqlite" and parsed.database:
            Path(parsed.database).parent.mkdir(parents=True, exist_ok=True)
        self.engine = sa.create_engine(parsed, pool_pre_ping=True)
        self.table = sql_table()
        self.where = f"{redact(url)} table {TABLE}"
        self._ready = False

    def _ensure(self) -> None:
        if self._ready:
            return
        from plants_mlops.db.engine import add_missing_columns, racing_ddl

        def create() -> None:  # every worker's first write, at once after a start
            self.table.metadata.create_all(self.engine, checkfirst=True)
            if add_missing_columns(self.engine, self.table):
                for index in self.table.indexes:  # the unique prediction_id of an old table
                    index.create(self.engine, checkfirst=True)

        racing_ddl(create)
        self._ready = True

    def fit(self, row: dict[str, Any]) -> dict[str, Any]:
        """``row`` with each text cut to its column's length (an id a client chose may be
        longer than the column: it must not fail the write of the whole batch)."""
        out = dict(row)
        for key, value in row.items():
            column = self.table.c.get(key)
            length = getattr(column.type, "length", None) if column is not None else None
            if isinstance(value, str) and length and len(value) > length:
                out[key] = value[:length]
        return out

    def write(self, rows: list[dict[str, Any]]) -> None:
        """All ``rows`` in one transaction (a row whose ``prediction_id`` is already in the
        table fails it: ``write_one`` then tells)."""
        self._ensure()
        with self.engine.begin() as conn:
            conn.execute(self.table.insert(), [self.fit(r) for r in rows])

    def write_one(self, row: dict[str, Any]) -> bool:
        """One row; False when its prediction is already in the table (a replay)."""
        self._ensure()
        try:
            with self.engine.begin() as conn:
                conn.execute(self.table.insert(), [self.fit(row)])
        except sa.exc.IntegrityError:
            if row.get("prediction_id") and self.find(row["prediction_id"]) is not None:
                return False
            raise
        return True

    def find(self, prediction_id: str) -> dict[str, Any] | None:
        t = self.table
        if not self._ready and not sa.inspect(self.engine).has_table(TABLE):
            return None
        query = sa.select(
            t.c.prediction_id,
            t.c.request_id,
            t.c.label,
            t.c.confidence,
            t.c.model_version,
            t.c.kept_image,
        ).where(t.c.prediction_id == prediction_id)
        with self.engine.connect() as conn:
            row = conn.execute(query).first()
        return dict(row._mapping) if row is not None else None

    def prune(self, *, max_age_days: float, max_rows: int) -> int:
        """Delete rows older than ``max_age_days``, then the oldest beyond ``max_rows``."""
        if not self._ready and not sa.inspect(self.engine).has_table(TABLE):
            return 0
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
