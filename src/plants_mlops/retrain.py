"""Starts the retraining command in the background, one run at a time.

Used by the API's ``POST /admin/retrain`` and by the monitoring pipeline's drift verdict.
The command is configurable (``PLANTS_RETRAIN_COMMAND``); by default it is the ZenML
pipeline, ``plants-mlops pipeline run``, of this environment. Importing this module is
cheap (no ZenML, no Kedro): the API and the monitoring nodes both use it.
"""

from __future__ import annotations

import logging
import shutil
import subprocess
import sys
import threading
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

log = logging.getLogger("plants_mlops.retrain")


def default_retrain_command() -> list[str]:
    """``plants-mlops pipeline run``: the venv's console script when this interpreter has
    one (the API may run without the venv on PATH), else whatever PATH has."""
    local = Path(sys.executable).parent / "plants-mlops"
    script = str(local) if local.exists() else (shutil.which("plants-mlops") or "plants-mlops")
    return [script, "pipeline", "run"]


@dataclass
class RetrainRun:
    run_id: str
    command: list[str]
    reason: str
    log_path: Path
    process: subprocess.Popen
    started_at: datetime
    finished_at: datetime | None = None

    @property
    def running(self) -> bool:
        return self.process.poll() is None


def start_retrain(
    command: list[str], *, reason: str, log_dir: Path, cwd: str | None = None
) -> RetrainRun:
    """Start ``command`` detached from the caller; its output goes to a log file."""
    log_dir.mkdir(parents=True, exist_ok=True)
    run_id = f"{datetime.now(UTC):%Y%m%dT%H%M%S}-{uuid.uuid4().hex[:6]}"
    log_path = log_dir / f"retrain-{run_id}.log"
    with log_path.open("wb") as out:
        try:
            proc = subprocess.Popen(
                command, stdout=out, stderr=subprocess.STDOUT, cwd=cwd, start_new_session=True
            )
        except OSError as exc:
            raise RuntimeError(f"cannot start {command[0]!r}: {exc}") from exc
    log.info(
        "retraining started: %s",
        " ".join(command),
        extra={
            "event": "retrain_started",
            "retrain_run_id": run_id,
            "reason": reason,
            "pid": proc.pid,
        },
    )
    return RetrainRun(run_id, command, reason, log_path, proc, datetime.now(UTC))


class RetrainRunner:
    def __init__(self, command: list[str], log_dir: Path, cwd: str | None = None) -> None:
        self.command = command
        self.log_dir = log_dir
        self.cwd = cwd
        self.last: RetrainRun | None = None
        self._lock = threading.Lock()

    def trigger(self, reason: str) -> tuple[bool, RetrainRun | None, str]:
        with self._lock:
            if self.last is not None and self.last.running:
                return False, self.last, "a retraining run is already in progress"
            self.last = start_retrain(
                self.command, reason=reason, log_dir=self.log_dir, cwd=self.cwd
            )
            threading.Thread(target=self._watch, args=(self.last,), daemon=True).start()
            return True, self.last, "retraining started"

    @staticmethod
    def _watch(run: RetrainRun) -> None:
        rc = run.process.wait()
        run.finished_at = datetime.now(UTC)
        level = logging.INFO if rc == 0 else logging.ERROR
        log.log(
            level,
            "retraining run %s finished with code %s",
            run.run_id,
            rc,
            extra={"event": "retrain_finished", "retrain_run_id": run.run_id, "returncode": rc},
        )
