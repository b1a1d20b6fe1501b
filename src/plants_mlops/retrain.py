"""Starts the retraining command in the background, one run at a time across every API
worker, replica and monitoring run (the guard is a row in the database:
``plants_mlops.db.retrain``).

Used by the API's ``POST /admin/retrain`` and by the monitoring pipeline's drift verdict.
The command is configurable (``PLANTS_RETRAIN_COMMAND``); by default it is the ZenML
pipeline, ``plants-mlops pipeline run --env ENV``, of the caller's Kedro environment (a
task's API, ``serve --env``, or monitoring run, ``kedro run --env``; none for the base
task). It runs under a small watcher process (``python -m plants_mlops.retrain``,
detached from the caller) that beats the guard while the command runs and releases it
with the return code when it ends, so the caller may exit (a monitoring run) or be
restarted (an API worker) meanwhile.
Importing this module is cheap (no ZenML, no Kedro).
"""

from __future__ import annotations

import logging
import os
import shlex
import shutil
import socket
import subprocess
import sys
import uuid
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

log = logging.getLogger("plants_mlops.retrain")


def default_retrain_command(env: str | None = None) -> list[str]:
    """``plants-mlops pipeline run [--env ENV]``: the venv's console script when this
    interpreter has one (the API may run without the venv on PATH), else whatever PATH
    has. ``env``: the Kedro environment (a task's, conf/ENV) the caller belongs to, so a
    task's API or monitoring run retrains that task, not the base one."""
    local = Path(sys.executable).parent / "plants-mlops"
    script = str(local) if local.exists() else (shutil.which("plants-mlops") or "plants-mlops")
    return [script, "pipeline", "run", *(["--env", env] if env else [])]


class RetrainRunner:
    def __init__(
        self, command: list[str], log_dir: Path, db_url: str | None = None, cwd: str | None = None
    ) -> None:
        self.command = command
        self.log_dir = Path(log_dir)
        self.db_url = db_url
        self.cwd = cwd
        self._engine = None

    def engine(self):
        from plants_mlops import db

        if self._engine is None:
            self._engine = db.make_engine(self.db_url)
        return self._engine

    def trigger(self, reason: str) -> tuple[bool, dict[str, Any], str]:
        """(started, the run started or the one in progress, what happened)."""
        from plants_mlops.db import retrain as guard

        engine = self.engine()
        run_id = f"{datetime.now(UTC):%Y%m%dT%H%M%S}-{uuid.uuid4().hex[:6]}"
        holder = guard.take_guard(engine, run_id)
        if holder is not None:
            return False, {"run_id": holder}, "a retraining run is already in progress"
        self.log_dir.mkdir(parents=True, exist_ok=True)
        log_path = (self.log_dir / f"retrain-{run_id}.log").resolve()
        run = {"run_id": run_id, "command": self.command, "log_path": str(log_path)}
        guard.record_run(
            engine,
            run_id=run_id,
            reason=reason,
            command=shlex.join(self.command),
            log_path=str(log_path),
            host=socket.gethostname(),
        )
        watcher = [sys.executable, "-m", "plants_mlops.retrain", run_id, "--", *self.command]
        from plants_mlops import db

        env = {**os.environ, "PLANTS_DB_URL": db.resolve_url(self.db_url)}
        try:
            with log_path.open("wb") as out:
                proc = subprocess.Popen(
                    watcher,
                    stdout=out,
                    stderr=subprocess.STDOUT,
                    cwd=self.cwd,
                    env=env,
                    start_new_session=True,  # not stopped with the API
                )
        except OSError as exc:
            guard.release_guard(engine, run_id)
            raise RuntimeError(f"cannot start {self.command[0]!r}: {exc}") from exc
        log.info(
            "retraining started: %s",
            shlex.join(self.command),
            extra={"event": "retrain_started", "retrain_run_id": run_id, "reason": reason},
        )
        return True, {**run, "pid": proc.pid}, "retraining started"

    def status(self) -> dict[str, Any] | None:
        from plants_mlops.db import retrain as guard

        return guard.last_run(self.engine())


def _watch(run_id: str, command: list[str]) -> int:
    """The watcher process: run ``command``, beat the guard, release it when done."""
    from plants_mlops import db
    from plants_mlops.db import retrain as guard

    engine = db.make_engine()
    rc = None
    try:
        proc = subprocess.Popen(command)
        guard.update_run(engine, run_id, pid=proc.pid)
        while rc is None:
            try:
                rc = proc.wait(timeout=guard.HEARTBEAT_SECONDS)
            except subprocess.TimeoutExpired:
                guard.beat(engine, run_id)
    except OSError as exc:
        print(f"cannot start {command[0]!r}: {exc}", flush=True)
        rc = 127
    finally:
        guard.release_guard(engine, run_id, rc)
    print(f"retraining run {run_id} finished with code {rc}", flush=True)
    return rc


if __name__ == "__main__":  # python -m plants_mlops.retrain RUN_ID -- COMMAND...
    sys.exit(_watch(sys.argv[1], sys.argv[3:]))
