"""A parquet file that may not exist yet: loads as an empty DataFrame then (the previous
fmt index before the first formatting run)."""

from __future__ import annotations

import pandas as pd

from plants_mlops.datasets.data_parquet import ParquetDataset


class OptionalParquetDataset(ParquetDataset):
    """``data_parquet.ParquetDataset`` whose load gives an empty DataFrame when the file is
    missing, instead of an error."""

    def load(self) -> pd.DataFrame:
        if not self._exists():
            return pd.DataFrame()
        return super().load()
