"""Kedro datasets of the monitoring stage: the API's prediction log and the champion model."""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd
from kedro.io import AbstractDataset, DatasetError

from plants_mlops import contracts, imaging

STAT_PREFIX = contracts.PREDICTION_LOG_STAT_PREFIX


def _decode_embedding(value: Any) -> np.ndarray:
    if isinstance(value, bytes | bytearray | memoryview):
        return np.frombuffer(bytes(value), dtype=np.float32)
    return np.asarray(value, dtype=np.float32)


class PredictionLogDataset(AbstractDataset[None, pd.DataFrame]):
    """Read-only view of the prediction log the API writes (see serving/predlog.py).

    ``source: sql`` reads the table ``prediction_log`` from ``credentials.con`` (the
    ``PLANTS_DB_URL`` database); ``source: s3`` reads the date-partitioned parquet dataset
    under ``path``. ``last_n`` bounds how many of the newest rows are read. Rows come back
    oldest first with ``created_at`` as UTC timestamps, the image statistics under their
    ``imaging.STAT_COLUMNS`` names and ``embedding`` as float32 arrays.
    """

    def __init__(
        self,
        *,
        source: str = "sql",
        table: str = contracts.PREDICTION_LOG_TABLE,
        path: str | None = None,
        last_n: int = 100_000,
        credentials: dict[str, Any] | None = None,
        metadata: dict[str, Any] | None = None,
    ) -> None:
        self._source = (source or "sql").lower()
        self._table = table
        self._path = path
        self._last_n = int(last_n)
        self._credentials = credentials or {}
        self.metadata = metadata
        if self._source not in ("sql", "s3"):
            raise DatasetError(f"prediction log source must be sql or s3, not {source!r}")
        if self._source == "s3" and not path:
            raise DatasetError("prediction log source s3 needs a path (PLANTS_PREDICTION_LOG_URI)")

    def _describe(self) -> dict[str, Any]:
        return {
            "source": self._source,
            "table": self._table,
            "path": self._path,
            "last_n": self._last_n,
        }

    def _load(self) -> pd.DataFrame:
        frame = self._load_sql() if self._source == "sql" else self._load_s3()
        if frame.empty:
            return frame
        frame = frame.rename(columns={f"{STAT_PREFIX}{c}": c for c in imaging.STAT_COLUMNS})
        frame["created_at"] = pd.to_datetime(frame["created_at"], utc=True)
        frame["embedding"] = [_decode_embedding(v) for v in frame["embedding"]]
        return frame.sort_values("created_at", kind="stable").reset_index(drop=True)

    def _load_sql(self) -> pd.DataFrame:
        import sqlalchemy as sa

        con = self._credentials.get("con")
        if not con:
            raise DatasetError("prediction log needs credentials with `con` (PLANTS_DB_URL)")
        engine = sa.create_engine(con)
        try:
            if not sa.inspect(engine).has_table(self._table):
                return pd.DataFrame()
            table = sa.Table(self._table, sa.MetaData(), autoload_with=engine)
            query = sa.select(table).order_by(table.c.id.desc()).limit(self._last_n)
            with engine.connect() as conn:
                return pd.read_sql(query, conn)
        finally:
            engine.dispose()

    def _load_s3(self) -> pd.DataFrame:
        import pyarrow.dataset as ds
        import s3fs

        from plants_mlops.storage import s3_client_kwargs

        fs = s3fs.S3FileSystem(client_kwargs=s3_client_kwargs())
        root = self._path.removeprefix("s3://").rstrip("/")
        if not fs.exists(root):
            return pd.DataFrame()
        table = ds.dataset(root, filesystem=fs, format="parquet", partitioning="hive").to_table()
        frame = table.to_pandas()
        frame = frame.sort_values("created_at").tail(self._last_n)
        return frame.drop(columns=["date"], errors="ignore")

    def _save(self, data: None) -> None:
        raise DatasetError("the prediction log is written by the API, not by Kedro")

    def _exists(self) -> bool:
        return True


class ChampionModelDataset(AbstractDataset[None, Any]):
    """Loads the registry model (``models:/NAME@ALIAS``) into the serving ONNX runtime, so
    monitoring embeds reference images exactly as the API embeds requests."""

    def __init__(
        self,
        *,
        model_uri: str,
        tracking_uri: str | None = None,
        metadata: dict[str, Any] | None = None,
    ) -> None:
        self._model_uri = model_uri
        self._tracking_uri = tracking_uri or None
        self.metadata = metadata

    def _describe(self) -> dict[str, Any]:
        return {"model_uri": self._model_uri, "tracking_uri": self._tracking_uri}

    def _load(self):
        from plants_mlops.model import artifact, tracking

        try:
            cl = tracking.client(self._tracking_uri)
            return artifact.load_registered(cl, self._model_uri, threads=2)
        except Exception as exc:  # store unreachable, alias missing, broken model
            raise DatasetError(f"cannot load {self._model_uri}: {exc}") from exc

    def _save(self, data: Any) -> None:
        raise DatasetError("the champion is registered by the registry stage, not saved here")
