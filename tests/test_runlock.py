"""The run lock on an object-store data root (a lock object on the S3 API server)."""

from __future__ import annotations

import datetime as dt
import json
import os
import socket
import subprocess
import sys

import pytest

from plants_mlops import runlock


def test_an_object_store_lock_refuses_a_live_owner_and_takes_over_a_killed_ones_at_once(
    s3_endpoint, s3_bucket
):
    opts = {"client_kwargs": {"endpoint_url": s3_endpoint}}
    lock = runlock._ObjectLock(f"s3://{s3_bucket}", "ingestion", opts)
    live = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"])
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    now = dt.datetime.now(dt.UTC).isoformat(timespec="seconds")

    def held_by(pid: int) -> None:
        owner = {"pid": pid, "host": socket.gethostname(), "since": now, "heartbeat": now}
        lock.fs.pipe_file(lock.path, json.dumps(owner).encode())

    try:
        held_by(live.pid)  # a fresh heartbeat of a process that still runs
        with pytest.raises(runlock.AlreadyRunning, match="ingestion is already running"):
            lock.take()
        held_by(dead.pid)  # the same fresh heartbeat, but its process was killed
        lock.take()
        assert lock._read()["pid"] == os.getpid()
        lock.release()
        assert lock._read() is None
    finally:
        live.kill()
        live.wait()
