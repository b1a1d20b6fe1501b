"""Kedro dataset over the ``plants_data`` SQL table (see ``plants_mlops.db``)."""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd
import sqlalchemy as sa
from kedro.io import AbstractDataset

from plants_mlops import db

LOAD_CHUNK_ROWS = 20_000
DATETIME_COLUMNS = ("created_at", "updated_at", "ingested_at")
# a few distinct values each: one shared string instead of one per row
SHARED_COLUMNS = ("label", "status")
# one value per row: pandas' Arrow-backed ``str`` dtype (the default of pandas 3; NaN when
# missing, numpy bool on comparison), the strings in one Arrow buffer per chunk instead of
# a Python object each (~60 -> ~20 MB for 100,000 rows)
ARROW_STRING_COLUMNS = ("url_source", "url_s3", "sha256", "error")
ARROW_STRING = pd.StringDtype("pyarrow", na_value=np.nan)


def _frame(rows, shared: dict[str, str]) -> pd.DataFrame:
    """A chunk of rows as a frame; ``shared`` maps each label/status to the one string
    every chunk uses."""
    df = pd.DataFrame.from_records(rows, columns=list(db.COLUMNS))
    for c in SHARED_COLUMNS:
        df[c] = [shared.setdefault(v, v) if isinstance(v, str) else v for v in df[c]]
    for c in ARROW_STRING_COLUMNS:
        df[c] = df[c].astype(ARROW_STRING)
    return df


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
        # from row tuples, not a dict per row (~1 KB each: 100 MB more at 100,000 rows), a
        # chunk at a time: every row's Python objects (strings, datetimes) were held at once
        columns = [db.plants_data.c[c] for c in db.COLUMNS]
        frames, shared = [], {}
        with self.engine.connect() as conn:
            result = conn.execution_options(yield_per=LOAD_CHUNK_ROWS).execute(
                sa.select(*columns).order_by(db.plants_data.c.id)
            )
            for rows in result.partitions():
                frames.append(_frame(rows, shared))
        if len(frames) <= 1:
            return frames[0] if frames else _frame([], shared)
        for c in DATETIME_COLUMNS:
            # a chunk of only NULLs is an object column: given the other chunks' dtype, as
            # one frame of all the rows would have it
            dtype = next((f[c].dtype for f in frames if f[c].dtype != object), None)
            for f in frames:
                if dtype is not None and f[c].dtype == object:
                    f[c] = f[c].astype(dtype)
        return pd.concat(frames, ignore_index=True)

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
