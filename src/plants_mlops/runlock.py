"""One run at a time per stage and data root.

Two ingestion runs on the same data root would fetch everything twice (800 downloads for
400 rows) and race on the same files. A run takes a lock per stage it covers before its
first node; a second run of a covered stage on the same root exits at once with "ingestion
is already running on data since ... (pid, host)".

- Local root: ``<root>/.locks/<stage>.lock``, an exclusive ``flock``. The kernel drops it
  when the holding process ends, however it ends (kill -9 included): no stale locks.
- Object-store root (``s3://...``): a lock object ``<root>/.locks/<stage>.lock`` holding
  its owner and a heartbeat rewritten every ``HEARTBEAT_S``; a lock whose heartbeat is
  older than ``STALE_S`` (a killed run) is taken over, and so is at once a lock whose
  owner ran on this host and is gone.
"""

from __future__ import annotations

import datetime as dt
import fcntl
import json
import logging
import os
import socket
import threading
from dataclasses import dataclass, field
from typing import Any

from plants_mlops.errors import UserFacingError

log = logging.getLogger(__name__)

HEARTBEAT_S = 20.0
STALE_S = 90.0


class AlreadyRunning(UserFacingError):
    """Another run holds the stage's lock on this data root."""


def _owner() -> dict[str, Any]:
    return {
        "pid": os.getpid(),
        "host": socket.gethostname(),
        "since": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
    }


def _gone_from_this_host(owner: dict) -> bool:
    """The owner ran on this host and its process no longer exists (killed, kill -9 too)."""
    if owner.get("host") != socket.gethostname() or not isinstance(owner.get("pid"), int):
        return False
    try:
        os.kill(owner["pid"], 0)
    except ProcessLookupError:
        return True
    except PermissionError:  # alive, another user's
        return False
    return False


def _refusal(stage: str, root: str, owner: dict) -> AlreadyRunning:
    return AlreadyRunning(
        f"{stage} is already running on {root} since {owner.get('since', '?')} (pid "
        f"{owner.get('pid', '?')} on {owner.get('host', '?')}): wait for it to finish, or stop "
        "it; this run changed nothing"
    )


@dataclass
class RunLocks:
    """The locks of one run; ``release`` gives them back (also done by process exit)."""

    root: str
    held: list[Any] = field(default_factory=list)
    _stop: threading.Event = field(default_factory=threading.Event)

    def acquire(self, stages: list[str], storage_options: dict | None = None) -> None:
        try:
            for stage in sorted(set(stages)):
                if "://" in self.root and not self.root.startswith("file://"):
                    self.held.append(_ObjectLock(self.root, stage, storage_options or {}))
                else:
                    self.held.append(_FileLock(self.root, stage))
                self.held[-1].take()
        except BaseException:
            self.held.pop()  # the one that refused holds nothing
            self.release()
            raise
        if any(isinstance(lock, _ObjectLock) for lock in self.held):
            threading.Thread(target=self._beat, name="run-lock", daemon=True).start()

    def _beat(self) -> None:
        while not self._stop.wait(HEARTBEAT_S):
            for lock in list(self.held):
                if isinstance(lock, _ObjectLock):
                    lock.write()

    def release(self) -> None:
        self._stop.set()
        while self.held:
            try:
                self.held.pop().release()
            except Exception as exc:  # never hide the run's own outcome
                log.warning("could not release a run lock: %s", exc)


class _FileLock:
    def __init__(self, root: str, stage: str) -> None:
        self.root, self.stage = root.removeprefix("file://"), stage
        folder = os.path.join(self.root, ".locks")
        os.makedirs(folder, exist_ok=True)
        self.path = os.path.join(folder, f"{stage}.lock")
        self.fd: int | None = None

    def take(self) -> None:
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            try:
                owner = json.loads(os.pread(fd, 4096, 0) or b"{}")
            except ValueError:
                owner = {}
            os.close(fd)
            raise _refusal(self.stage, self.root, owner) from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, json.dumps(_owner()).encode(), 0)
        self.fd = fd

    def release(self) -> None:
        if self.fd is not None:
            os.ftruncate(self.fd, 0)
            os.close(self.fd)  # closing drops the flock
            self.fd = None


class _ObjectLock:
    def __init__(self, root: str, stage: str, storage_options: dict) -> None:
        import fsspec

        self.root, self.stage = root, stage
        self.fs, _, (self.path,) = fsspec.get_fs_token_paths(
            f"{root.rstrip('/')}/.locks/{stage}.lock", storage_options=storage_options
        )
        self.owner = _owner()

    def _read(self) -> dict | None:
        try:
            self.fs.invalidate_cache(self.path)
            return json.loads(self.fs.cat_file(self.path))
        except (FileNotFoundError, ValueError):
            return None

    def write(self) -> None:
        beat = dt.datetime.now(dt.UTC).isoformat(timespec="seconds")
        self.fs.pipe_file(self.path, json.dumps({**self.owner, "heartbeat": beat}).encode())

    def take(self) -> None:
        current = self._read()
        if current and current.get("pid") != self.owner["pid"]:
            beat = dt.datetime.fromisoformat(current.get("heartbeat") or current["since"])
            fresh = (dt.datetime.now(dt.UTC) - beat).total_seconds() < STALE_S
            if fresh and not _gone_from_this_host(current):
                raise _refusal(self.stage, self.root, current)
            log.warning("taking over the stale run lock of %s (%s)", self.stage, current)
        self.write()
        mine = self._read()  # two takers at once: the last writer wins, the other refuses
        if (
            not mine
            or mine.get("since") != self.owner["since"]
            or mine.get("pid") != self.owner["pid"]
        ):
            raise _refusal(self.stage, self.root, mine or {})

    def release(self) -> None:
        current = self._read()
        if current and current.get("pid") == self.owner["pid"]:
            self.fs.rm_file(self.path)
