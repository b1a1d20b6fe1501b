"""A folder of files kept byte for byte (local disk or any fsspec URL such as ``s3://``).

Kedro's ``pillow.ImageDataset`` re-encodes on save (0 of 400 JPEGs came back identical),
so the raw layer uses this instead: the bytes a URL served are the bytes stored.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from copy import deepcopy
from pathlib import Path
from typing import Any

import fsspec
from kedro.io import AbstractDataset
from kedro.io.core import get_protocol_and_path

from plants_mlops.datasets.atomic import temp_name

Blob = bytes | Callable[[], bytes]
WRITE_THREADS = 8  # concurrent local writes (each fsync'd) and remote size lookups


class BlobStoreDataset(AbstractDataset[Mapping[str, Blob], dict[str, Callable[[], bytes]]]):
    """Loads ``{relative/key.ext: loader}`` (call a loader to read that file's bytes; nothing
    is read up front) and is empty when the folder is missing. Saving a mapping writes each
    value's bytes (or the result of calling it) to ``path/key``, atomically; keys already
    present with the same size are skipped, which is right for a content-addressed layout
    (same key, same bytes), and an empty or damaged file is written again. A save looks at
    its own keys only (a stat or HEAD each), never at a listing of the whole store.

    Hidden files (``.gitkeep``) are ignored. ``credentials``/``fs_args`` go to fsspec, e.g.
    ``{key, secret, client_kwargs: {endpoint_url}}`` for S3.
    """

    def __init__(
        self,
        *,
        path: str,
        credentials: dict[str, Any] | None = None,
        fs_args: dict[str, Any] | None = None,
        metadata: dict[str, Any] | None = None,
    ) -> None:
        protocol, root = get_protocol_and_path(path)
        fs_args = deepcopy(fs_args) or {}
        if protocol == "file":
            fs_args.setdefault("auto_mkdir", True)
        self._protocol = protocol
        self._root = root.rstrip("/")
        self._fs = fsspec.filesystem(protocol, **(deepcopy(credentials) or {}), **fs_args)
        self.metadata = metadata

    def uri(self, key: str) -> str:
        """Where ``key`` lives, as a URL (``s3://bucket/01_raw/...``) or a local path."""
        full = f"{self._root}/{key}"
        return full if self._protocol == "file" else f"{self._protocol}://{full}"

    def sizes(self) -> dict[str, int]:
        """``{key: size}`` of the stored files; an empty one (what a crash could leave
        before writes were atomic) does not count, so the next save writes it again."""
        if self._protocol == "file":
            return _local_sizes(self._root)
        self._fs.invalidate_cache(self._root)
        if not self._fs.exists(self._root):
            return {}
        prefix = self._root + "/"
        out = {}
        for found, info in self._fs.find(self._root, detail=True).items():
            key = found[len(prefix) :] if found.startswith(prefix) else found
            size = int(info.get("size") or 0)
            if size > 0 and not any(part.startswith(".") for part in key.split("/")):
                out[key] = size
        return dict(sorted(out.items()))

    def keys(self) -> list[str]:
        return list(self.sizes())

    def load(self) -> dict[str, Callable[[], bytes]]:
        return {key: _Loader(self, key) for key in self.keys()}

    def save(self, data: Mapping[str, Blob]) -> None:
        # Only the keys of this chunk are looked at (one stat/HEAD each), never a listing
        # of the whole store: saving costs what the chunk holds, however large the store.
        present = self._sizes_of(list(data))
        todo = {}
        for key, value in data.items():
            if key in present and callable(value):
                continue  # a lazy copy of a stored file: not read just to compare
            blob = value() if callable(value) else value
            # Same key, same size: the same content (the key is its sha256). A stored file
            # of another size is a damaged copy: written again.
            if present.get(key) != len(blob):
                todo[f"{self._root}/{key}"] = blob
        self._write(todo)

    def _write(self, todo: dict[str, bytes]) -> None:
        """Write ``{full path: bytes}``, each file whole or not at all."""
        if not todo:
            return
        if self._protocol == "file":
            # fsync waits on the disk, not the CPU: several at once share journal commits
            with ThreadPoolExecutor(max_workers=WRITE_THREADS) as pool:
                list(pool.map(_atomic_write, todo, todo.values()))
        else:
            # One PUT per object: an object store shows the whole object or none of it.
            self._fs.pipe(todo)  # concurrent uploads (s3fs is async)
        self._fs.invalidate_cache(self._root)

    def _sizes_of(self, keys: list[str]) -> dict[str, int]:
        """``{key: size}`` of those of ``keys`` that are stored non-empty."""
        if not keys:
            return {}
        if self._protocol == "file":
            out = {}
            for key in keys:
                try:
                    size = os.stat(f"{self._root}/{key}").st_size
                except OSError:
                    continue
                if size > 0:
                    out[key] = size
            return out
        self._fs.invalidate_cache(self._root)
        paths = [f"{self._root}/{key}" for key in keys]
        with ThreadPoolExecutor(max_workers=WRITE_THREADS) as pool:
            sizes = list(pool.map(self._remote_size, paths))
        return {k: n for k, n in zip(keys, sizes, strict=True) if n}

    def _remote_size(self, path: str) -> int:
        try:
            return int(self._fs.info(path).get("size") or 0)
        except FileNotFoundError:
            return 0

    def _exists(self) -> bool:
        return bool(self.keys())

    def _describe(self) -> dict[str, Any]:
        return {"path": self.uri(""), "protocol": self._protocol}


class _Loader:
    """Reads one stored file's bytes when called. Holds the store and the key only (a
    ``functools.partial`` with a bound method and the full path was ~300 bytes more per
    file: 30 MB per 100,000-file listing)."""

    __slots__ = ("_key", "_store")

    def __init__(self, store: BlobStoreDataset, key: str) -> None:
        self._store, self._key = store, key

    def __call__(self) -> bytes:
        return self._store._fs.cat_file(f"{self._store._root}/{self._key}")

    def __repr__(self) -> str:
        return f"<loader of {self._store.uri(self._key)}>"


class ImageStoreDataset(BlobStoreDataset):
    """The fmt layer: JPEG bytes encoded by the formatting node (which records each file's
    sha256 in the fmt index), stored byte for byte and atomically under ``{key}{suffix}``.
    Loads ``{key: loader}``: calling a loader decodes the image (RGB PIL), ``loader.read()``
    gives the stored bytes (what training hashes before its first step). A save always
    writes: the same key at another image size is other bytes, possibly of the same size.
    """

    def __init__(self, *, suffix: str = ".jpg", **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self._suffix = suffix

    def load(self) -> dict[str, _ImageLoader]:
        n = len(self._suffix)
        return {
            key[:-n] if n else key: _ImageLoader(self, key)
            for key in self.keys()
            if key.endswith(self._suffix)
        }

    def save(self, data: Mapping[str, Blob]) -> None:
        self._write(
            {
                f"{self._root}/{key}{self._suffix}": value() if callable(value) else value
                for key, value in data.items()
            }
        )


class _ImageLoader(_Loader):
    __slots__ = ()

    def read(self) -> bytes:
        return super().__call__()

    def __call__(self):
        from plants_mlops import imaging

        return imaging.decode_image(self.read()).image


def _local_sizes(root: str) -> dict[str, int]:
    """:meth:`BlobStoreDataset.sizes` of a local folder, by ``os.scandir``: no info dict
    per file (fsspec's ``find(detail=True)`` held ~1 KB per file, 100 MB at 100,000)."""
    out: dict[str, int] = {}
    stack = [("", root)]
    while stack:
        rel, folder = stack.pop()
        try:
            entries = os.scandir(folder)
        except (FileNotFoundError, NotADirectoryError):
            continue
        with entries:
            for entry in entries:
                if entry.name.startswith("."):
                    continue
                key = f"{rel}{entry.name}"
                if entry.is_dir(follow_symlinks=False):
                    stack.append((f"{key}/", entry.path))
                elif entry.is_file():
                    size = entry.stat().st_size
                    if size > 0:
                        out[key] = size
    return dict(sorted(out.items()))


def _atomic_write(path: str, blob: bytes) -> None:
    """Write to a hidden temporary name beside ``path``, then rename: a crash leaves the
    old state or the whole file, never a partial one (the temporary name is ignored)."""
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_name(temp_name(target.name))
    try:
        with open(tmp, "wb") as fh:
            fh.write(blob)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, target)
    finally:
        tmp.unlink(missing_ok=True)
