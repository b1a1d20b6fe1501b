"""Saves that are whole or absent: every file the project writes goes to a hidden temporary
name beside its target and is renamed over it once complete (local disk: ``os.replace``;
S3: the object is copied to its name, so a reader sees the old object or the new one).

A run killed mid-save, or a full disk, leaves the previous file untouched and at most a
temporary ``.<name>.<host>-<pid>-<random>.tmp``; :func:`sweep_stale` deletes those of
processes that are gone (and any older than a day) at the start of the next run.

``JSONDataset``, ``TextDataset``, ``ParquetDataset`` below are Kedro's, saved this way; the
catalog names them instead of Kedro's own.
"""

from __future__ import annotations

import logging
import os
import re
import secrets
import socket
import time
from pathlib import PurePosixPath
from typing import Any

from kedro.io.core import get_filepath_str
from kedro_datasets.json import JSONDataset as _JSONDataset
from kedro_datasets.text import TextDataset as _TextDataset

log = logging.getLogger(__name__)

_HOST = re.sub(r"[^A-Za-z0-9_]", "_", socket.gethostname())[:40] or "host"
# .<name>.<host>-<pid>-<random>.tmp (new) or .<name>.<8 hex>.tmp (before hosts and pids)
_TEMP = re.compile(r"^\..+\.(?:(?P<host>[A-Za-z0-9_]+)-(?P<pid>\d+)-)?[0-9a-f]{8}\.tmp$")
STALE_AFTER_S = 24 * 3600.0  # a temporary of another host, or unnamed, older than this


def temp_name(name: str) -> str:
    """The hidden temporary name a save of ``name`` writes first."""
    return f".{name}.{_HOST}-{os.getpid()}-{secrets.token_hex(4)}.tmp"


def publish(fs, protocol: str, tmp: str, final: str) -> None:
    """Move the finished temporary ``tmp`` onto ``final``."""
    if protocol == "file":
        os.replace(tmp, final)
    else:
        fs.mv(tmp, final)
    fs.invalidate_cache(final)


def discard(fs, protocol: str, tmp: str) -> None:
    try:
        if protocol == "file":
            os.unlink(tmp)
        elif fs.exists(tmp):
            fs.rm(tmp)
    except (FileNotFoundError, OSError):
        pass


def atomic_write_bytes(fs, protocol: str, path: str, data: bytes) -> None:
    """``data`` at ``path`` (a filesystem path, without protocol), whole or not at all."""
    final = PurePosixPath(path)
    tmp = str(final.parent / temp_name(final.name))
    if protocol == "file":
        os.makedirs(final.parent, exist_ok=True)
    try:
        with fs.open(tmp, "wb") as fh:
            fh.write(data)
            if protocol == "file":
                fh.flush()
                os.fsync(fh.fileno())
        publish(fs, protocol, tmp, path)
    except BaseException:
        discard(fs, protocol, tmp)
        raise


class AtomicSave:
    """Mixin for a Kedro file dataset (``_filepath``, ``_fs``, ``_protocol``): its save
    writes a temporary beside the target, then renames it into place."""

    def save(self, data: Any) -> None:
        final = self._filepath
        tmp = final.parent / temp_name(final.name)
        if self._protocol == "file":
            os.makedirs(final.parent, exist_ok=True)
        self._filepath = tmp
        try:
            super().save(data)
            publish(
                self._fs,
                self._protocol,
                get_filepath_str(tmp, self._protocol),
                get_filepath_str(final, self._protocol),
            )
        except BaseException:
            discard(self._fs, self._protocol, get_filepath_str(tmp, self._protocol))
            raise
        finally:
            self._filepath = final


class JSONDataset(AtomicSave, _JSONDataset):
    """``json.JSONDataset``, saved atomically."""


class TextDataset(AtomicSave, _TextDataset):
    """``text.TextDataset``, saved atomically."""


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def is_stale(name: str, mtime: float, now: float | None = None) -> bool:
    """Whether a file called ``name`` is a temporary nobody will finish: one of a process
    of this host that is gone, or any older than ``STALE_AFTER_S``."""
    m = _TEMP.match(name)
    if not m:
        return False
    if m["host"] == _HOST and m["pid"] and not _alive(int(m["pid"])):
        return True
    return (now or time.time()) - mtime > STALE_AFTER_S


def sweep_stale(fs, protocol: str, folder: str, *, recursive: bool = False) -> int:
    """Delete the stale temporaries in ``folder`` (and below with ``recursive``, local
    disk only); returns how many."""
    removed = 0
    if protocol == "file":
        for root, _dirs, files in os.walk(folder) if recursive else _one_level(folder):
            for name in files:
                if not name.endswith(".tmp"):
                    continue
                path = os.path.join(root, name)
                try:
                    if is_stale(name, os.stat(path).st_mtime):
                        os.unlink(path)
                        removed += 1
                except FileNotFoundError:
                    continue
    else:
        try:
            entries = fs.ls(folder, detail=True, refresh=True)
        except (FileNotFoundError, OSError):
            return 0
        for info in entries:
            name = str(info.get("name", "")).rsplit("/", 1)[-1]
            if info.get("type") == "file" and name.endswith(".tmp"):
                modified = info.get("LastModified") or info.get("mtime")
                mtime = modified.timestamp() if hasattr(modified, "timestamp") else 0.0
                if is_stale(name, mtime):
                    discard(fs, protocol, info["name"])
                    removed += 1
    if removed:
        log.warning("removed %d stale temporary file(s) of killed runs in %s", removed, folder)
    return removed


def _one_level(folder: str):
    try:
        files = [e.name for e in os.scandir(folder) if e.is_file(follow_symlinks=False)]
    except (FileNotFoundError, NotADirectoryError):
        return []
    return [(folder, [], files)]


def sweep_dataset(dataset: Any) -> int:
    """Sweep the folder a catalog dataset writes to (its parent folder; a blob store's
    whole tree on local disk). Datasets without files are skipped."""
    fs = getattr(dataset, "_fs", None)
    protocol = getattr(dataset, "_protocol", None)
    if fs is None or protocol is None:
        return 0
    if getattr(dataset, "_root", None) is not None:  # BlobStoreDataset
        if protocol != "file":
            return 0  # object stores get one PUT per blob: no temporaries there
        return sweep_stale(fs, protocol, dataset._root, recursive=True)
    filepath = getattr(dataset, "_filepath", None)
    if filepath is None:
        return 0
    return sweep_stale(fs, protocol, get_filepath_str(PurePosixPath(filepath).parent, protocol))
