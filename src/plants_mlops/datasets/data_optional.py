"""A parquet file that may not exist yet: loads as an empty DataFrame then (the previous
fmt index before the first formatting run). It is only a hint of work already done, so a
damaged file (written by a version before saves were atomic) counts as missing, with a
warning, and is replaced by the run's own save."""

from __future__ import annotations

import logging

import pandas as pd

from plants_mlops.datasets.data_parquet import ParquetDataset


class OptionalParquetDataset(ParquetDataset):
    """``data_parquet.ParquetDataset`` whose load gives an empty DataFrame when the file is
    missing or unreadable, instead of an error."""

    def load(self) -> pd.DataFrame:
        if not self._exists():
            return pd.DataFrame()
        try:
            return super().load()
        except Exception as exc:  # kedro wraps the reader's error in a DatasetError
            logging.getLogger(__name__).warning(
                "%s is unreadable (%s): treated as missing, the run writes it again",
                self._filepath,
                str(exc).splitlines()[-1][:200],
            )
            return pd.DataFrame()
