"""Kedro dataset over the ``plants_data`` SQL table (see ``plants_mlops.db``)."""

from __future__ import annotations

from typing import Any

import pandas as pd
import sqlalchemy as sa
from kedro.io import AbstractDataset

from plants_mlops import db


class PlantsTableDataset(AbstractDataset[pd.DataFrame, pd.DataFrame]):
    """Loads every row of ``plants_data`` as a DataFrame (columns ``db.COLUMNS``, by id);
    saving a DataFrame upserts its rows (by ``id``, else ``url_source``), writing only the
    columns it holds, so a node returns just the status updates it made.

    ``credentials: {con: <SQLAlchemy URL>}`` (``plants_db`` in credentials.yml; the
    ``PLANTS_DB_URL`` environment variable by default). With ``seed_if_empty: true`` an
    empty table is first seeded from the shipped manifest, so a fresh checkout runs.
    """

    def __init__(
        self,
        *,
        credentials: dict[str, Any] | None = None,
        seed_if_empty: bool = False,
        metadata: dict[str, Any] | None = None,
    ) -> None:
        self._url = db.resolve_url((credentials or {}).get("con"))
        self._seed_if_empty = seed_if_empty
        self._engine: sa.Engine | None = None
        self.metadata = metadata

    @property
    def engine(self) -> sa.Engine:
        if self._engine is None:
            self._engine = db.make_engine(self._url)
        return self._engine

    def load(self) -> pd.DataFrame:
        if self._seed_if_empty:
            db.ensure_seeded(self.engine)
        # from row tuples, not a dict per row (~1 KB each: 100 MB more at 100,000 rows)
        columns = [db.plants_data.c[c] for c in db.COLUMNS]
        with self.engine.connect() as conn:
            result = conn.execute(sa.select(*columns).order_by(db.plants_data.c.id))
            return pd.DataFrame.from_records(result.all(), columns=list(db.COLUMNS))

    def save(self, data: pd.DataFrame) -> None:
        if data is None or len(data) == 0:
            return
        db.upsert_rows(self.engine, data.to_dict(orient="records"))

    def _exists(self) -> bool:
        return sa.inspect(self.engine).has_table(db.TABLE_NAME)

    def _release(self) -> None:
        if self._engine is not None:
            self._engine.dispose()
            self._engine = None

    def _describe(self) -> dict[str, Any]:
        return {"url": db.redact(self._url), "seed_if_empty": self._seed_if_empty}


class DecisionsDataset(AbstractDataset[pd.DataFrame, None]):
    """The curation decisions in force (``db.decisions_in_force``), read-only: one row per
    decided plants_data row (``row_id``, ``action`` exclude/relabel, ``label``, ``reason``,
    ``decided_by``, ``decided_at``). Same credentials as ``plants_data``."""

    COLUMNS = ("id", "row_id", "action", "label", "reason", "decided_by", "decided_at")

    def __init__(
        self, *, credentials: dict[str, Any] | None = None, metadata: dict[str, Any] | None = None
    ) -> None:
        self._url = db.resolve_url((credentials or {}).get("con"))
        self.metadata = metadata

    def load(self) -> pd.DataFrame:
        engine = db.make_engine(self._url)
        try:
            return pd.DataFrame(db.decisions_in_force(engine), columns=list(self.COLUMNS))
        finally:
            engine.dispose()

    def save(self, data: None) -> None:
        raise NotImplementedError("decisions are recorded with `plants-mlops data exclude ...`")

    def _describe(self) -> dict[str, Any]:
        return {"url": db.redact(self._url)}
