"""``ModelFileDataset``: one binary file (checkpoint, ONNX model) as ``bytes``, on any
fsspec filesystem (local disk or S3/MinIO), written as-is and atomically."""

from __future__ import annotations

from copy import deepcopy
from pathlib import PurePosixPath
from typing import Any

import fsspec
from kedro.io.core import AbstractDataset, DatasetError, get_filepath_str, get_protocol_and_path

from plants_mlops.datasets.atomic import atomic_write_bytes


class ModelFileDataset(AbstractDataset[bytes, bytes]):
    """Loads and saves the exact bytes of one file.

    Example catalog entry::

        serving_model:
          type: plants_mlops.datasets.model_files.ModelFileDataset
          filepath: ${globals:root}/06_models/model.onnx
          credentials: storage
    """

    def __init__(
        self,
        *,
        filepath: str,
        credentials: dict[str, Any] | None = None,
        fs_args: dict[str, Any] | None = None,
        metadata: dict[str, Any] | None = None,
    ) -> None:
        protocol, path = get_protocol_and_path(filepath)
        fs_args = deepcopy(fs_args) or {}
        if protocol == "file":
            fs_args.setdefault("auto_mkdir", True)
        self._protocol = protocol
        self._filepath = PurePosixPath(path)
        self._fs = fsspec.filesystem(protocol, **(credentials or {}), **fs_args)
        self.metadata = metadata

    def _describe(self) -> dict[str, Any]:
        return {"filepath": str(self._filepath), "protocol": self._protocol}

    def load(self) -> bytes:
        path = get_filepath_str(self._filepath, self._protocol)
        if not self._fs.exists(path):
            raise DatasetError(
                f"{self._protocol}://{path} does not exist (run the training pipeline)"
            )
        with self._fs.open(path, "rb") as f:
            return f.read()

    def save(self, data: bytes) -> None:
        if not isinstance(data, bytes | bytearray):
            raise DatasetError(f"ModelFileDataset saves bytes, got {type(data).__name__}")
        path = get_filepath_str(self._filepath, self._protocol)
        atomic_write_bytes(self._fs, self._protocol, path, bytes(data))

    def _exists(self) -> bool:
        return self._fs.exists(get_filepath_str(self._filepath, self._protocol))
