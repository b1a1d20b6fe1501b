"""Real servers for the test suite on 127.0.0.1 free ports, separate processes waited on
through their health endpoints, stopped at the end."""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from plants_mlops.orchestration.dashboards import wait_http

VENV_BIN = Path(sys.executable).parent
# What coverage's subprocess patch (pyproject.toml: patch = ["subprocess"]) reads in a new
# Python process to measure it.
_COVERAGE_VARS = ("COVERAGE_PROCESS_CONFIG", "COVERAGE_PROCESS_START")


def untraced(env: dict[str, str] | None = None) -> dict[str, str]:
    """``env`` (default: this process's) for a process that runs none of this project's
    code (an MLflow or moto server, a ZenML client query): coverage would trace every line
    it runs, imports included (about 1.6x the CPU), and measure nothing of ``src/``."""
    return {
        k: v for k, v in (os.environ if env is None else env).items() if k not in _COVERAGE_VARS
    }


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class ManagedProcess:
    name: str
    argv: list[str]
    health_url: str
    env: dict[str, str] = field(default_factory=dict)
    log_path: Path | None = None
    cwd: Path | None = None
    traced: bool = True  # False: a server that runs none of the project's code (untraced)
    proc: subprocess.Popen | None = None

    def start(self, timeout: float = 90.0) -> ManagedProcess:
        env = {**os.environ, **self.env}
        if not self.traced:
            env = untraced(env)
        log = open(self.log_path, "wb") if self.log_path else subprocess.DEVNULL  # noqa: SIM115
        self.proc = subprocess.Popen(
            self.argv,
            env=env,
            cwd=self.cwd,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        try:
            wait_http(self.health_url, timeout=timeout, proc=self.proc)
        except Exception:
            self.stop()
            tail = self.log_path.read_text(errors="replace")[-3000:] if self.log_path else ""
            raise RuntimeError(f"{self.name} failed to start:\n{tail}") from None
        return self

    def stop(self) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.proc.pid, signal.SIGTERM)
        try:
            self.proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(timeout=5)


@contextlib.contextmanager
def moto_s3(log_path: Path | None = None) -> Iterator[str]:
    """An S3 API server (``moto_server``, untraced: it runs none of the project's code);
    yields its endpoint URL.

    Not moto's ``ThreadedMotoServer`` on a thread of the test process: there, coverage
    traced every request it served, its request log went through the Rich handler that an
    in-process Kedro run installs on the root logger, and it took the GIL from the tests
    (116 s of CPU samples in a profiled full run, 46 s of them formatting log lines)."""
    port = free_port()
    server = ManagedProcess(
        "moto_server",
        [str(VENV_BIN / "moto_server"), "-H", "127.0.0.1", "-p", str(port)],
        health_url=f"http://127.0.0.1:{port}/moto-api/",
        log_path=log_path,
        traced=False,
    ).start(timeout=60)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.stop()


@contextlib.contextmanager
def http_mirror(root: Path, log_path: Path) -> Iterator[str]:
    """tests/support/http_mirror.py serving ``root`` (with its fault routes); yields its
    base URL (ending in ``/``)."""
    port = free_port()
    server = ManagedProcess(
        "http mirror",
        [
            sys.executable,
            str(Path(__file__).with_name("http_mirror.py")),
            "--root",
            str(root),
            "--port",
            str(port),
        ],
        health_url=f"http://127.0.0.1:{port}/health",
        log_path=log_path,
        traced=False,
    ).start()
    try:
        yield f"http://127.0.0.1:{port}/"
    finally:
        server.stop()


@contextlib.contextmanager
def mlflow_server(
    workdir: Path,
    *,
    backend_uri: str | None = None,
    artifacts_destination: str | None = None,
    env: dict[str, str] | None = None,
) -> Iterator[str]:
    """A real ``mlflow server`` (one worker, no job runner: its huey consumers are five
    more processes the tests never use); yields its tracking URI."""
    workdir.mkdir(parents=True, exist_ok=True)
    port = free_port()
    backend_uri = backend_uri or f"sqlite:///{workdir / 'mlflow.db'}"
    artifacts_destination = artifacts_destination or str(workdir / "artifacts")
    server = ManagedProcess(
        "mlflow server",
        [
            str(VENV_BIN / "mlflow"),
            "server",
            "--backend-store-uri",
            backend_uri,
            "--artifacts-destination",
            artifacts_destination,
            "--serve-artifacts",
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--workers",
            "1",
        ],
        health_url=f"http://127.0.0.1:{port}/health",
        env={"MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false", **(env or {})},
        log_path=workdir / "mlflow-server.log",
        traced=False,
    ).start(timeout=120)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.stop()


def ensure_local_databases() -> None:
    """Start the machine's PostgreSQL and MariaDB if they are installed but stopped."""
    if shutil.which("pg_ctlcluster") and not _port_open(5432):
        versions = os.listdir("/etc/postgresql") if os.path.isdir("/etc/postgresql") else []
        for v in versions:
            subprocess.run(
                ["pg_ctlcluster", "--skip-systemctl-redirect", v, "main", "start"], check=False
            )
    if os.path.exists("/usr/sbin/mariadbd") and not _port_open(3306):
        subprocess.run(
            [
                "start-stop-daemon",
                "--start",
                "--oknodo",
                "--background",
                "--exec",
                "/usr/sbin/mariadbd",
            ],
            check=False,
        )
        for _ in range(40):
            if _port_open(3306):
                break
            time.sleep(0.5)


def _port_open(port: int) -> bool:
    with socket.socket() as s:
        s.settimeout(0.5)
        return s.connect_ex(("127.0.0.1", port)) == 0


def processes_in(cwd: Path) -> list[tuple[int, int, str]]:
    """``(pid, parent pid, command line)`` of every process working in ``cwd``."""
    found = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            if os.readlink(proc / "cwd") != str(cwd.resolve()):
                continue
            cmdline = (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode()
            ppid = int((proc / "stat").read_text().rsplit(")", 1)[1].split()[1])
        except (OSError, ValueError, IndexError):
            continue
        found.append((int(proc.name), ppid, cmdline))
    return found


def mlflow_job_runners(cwd: Path) -> list[str]:
    """Command lines of MLflow 3 job-runner processes (its Huey consumers) working in ``cwd``."""
    return [cmd for _, _, cmd in processes_in(cwd) if "mlflow.server.jobs" in cmd]


def mlflow_ui_workers(cwd: Path) -> list[str]:
    """Command lines of the worker processes that the uvicorn of an ``mlflow ui`` or
    ``mlflow server`` working in ``cwd`` forked off (none when it serves from one process).
    No such uvicorn at all is an error, not an empty list."""
    procs = processes_in(cwd)
    uvicorns = {pid for pid, _, cmd in procs if "uvicorn" in cmd and "mlflow.server" in cmd}
    assert uvicorns, f"no MLflow uvicorn process works in {cwd}"
    return [cmd for _, ppid, cmd in procs if ppid in uvicorns]
