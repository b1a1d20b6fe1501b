"""Start/stop the three UIs: the ZenML dashboard (local server), kedro-viz and the MLflow UI.

Each runs as a detached process group; its pid, URL and log live under
``data/dashboards/`` so that ``plants-mlops dashboards --stop`` ends exactly what was
started. Ports are free ones picked at start unless ``PLANTS_{ZENML,VIZ,MLFLOW}_PORT``
says otherwise. Every UI is waited on through an HTTP endpoint before its URL is printed.
The three start, and stop, at the same time: each is mostly a process importing its
framework and then waiting on a port, so on two cores they overlap instead of queueing.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import random
import signal
import socket
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor, as_completed
from pathlib import Path

import httpx

from plants_mlops.errors import UserFacingError

BIN = Path(sys.executable).parent
logging.getLogger("httpx").setLevel(logging.WARNING)  # one line per health poll otherwise
log = logging.getLogger(__name__)
HOST = "127.0.0.1"
_HANDED_OUT: set[int] = set()  # ports given to UIs starting now, not yet listening
_PORT_LOCK = threading.Lock()


def _state_dir(project: Path) -> Path:
    path = project / "data" / "dashboards"
    path.mkdir(parents=True, exist_ok=True)
    return path


def _ephemeral_low(path: Path = Path("/proc/sys/net/ipv4/ip_local_port_range")) -> int:
    """The lowest port the kernel hands out as the local port of outgoing connections."""
    try:
        return int(path.read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return 32768  # Linux's default range starts here


def _bindable(port: int) -> bool:
    """Nothing holds ``port`` on HOST: no listener, and no connection using it as its local
    port (a connect test sees only the first; the UI's own bind fails on either)."""
    with socket.socket() as s:
        try:
            s.bind((HOST, port))
        except OSError:
            return False
    return True


def _port(var: str) -> int:
    """``$var`` if set, else a free port from 20000 up to the kernel's ephemeral range: a port
    inside it can be taken by any outgoing connection between this check and the UI's bind
    (the ZenML daemon then died with "port not available"); kedro-viz refuses the range."""
    if os.environ.get(var):
        return int(os.environ[var])
    high = max(20001, min(45000, _ephemeral_low() - 1))
    for _ in range(200):
        port = random.randint(20000, high)
        with _PORT_LOCK:
            if port not in _HANDED_OUT and _bindable(port):
                _HANDED_OUT.add(port)
                return port
    raise UserFacingError(f"no free port found; set {var}")


def wait_http(url: str, timeout: float, proc: subprocess.Popen | None = None) -> None:
    deadline = time.monotonic() + timeout
    last: object = None
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise UserFacingError(f"the server behind {url} exited with code {proc.returncode}")
        try:
            r = httpx.get(url, timeout=3.0)
            if r.status_code < 500:
                return
            last = r.status_code
        except httpx.HTTPError as exc:
            last = exc
        time.sleep(0.5)
    raise UserFacingError(f"{url} not up after {timeout:.0f}s (last: {last})")


def _spawn(
    argv: list[str], cwd: Path, log: Path, env: dict[str, str] | None = None
) -> subprocess.Popen:
    with open(log, "ab") as out:
        return subprocess.Popen(
            argv,
            cwd=cwd,
            stdout=out,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
            env={**os.environ, **(env or {})},
        )


def mlflow_backend(project: Path) -> str:
    return os.environ.get("MLFLOW_TRACKING_URI") or f"sqlite:///{project / 'data' / 'mlflow.db'}"


def _serve(
    name: str,
    argv: list[str],
    port: int,
    health: str,
    project: Path,
    state: Path,
    timeout: float,
    env: dict[str, str] | None = None,
) -> tuple[str, int]:
    """Start a UI server detached (its own process group), wait on ``health``."""
    proc = _spawn(argv, project, state / f"{name}.log", env)
    url = f"http://{HOST}:{port}"
    wait_http(f"{url}{health}", timeout, proc)
    return url, proc.pid


def start_kedro_viz(project: Path, state: Path) -> tuple[str, int]:
    port = _port("PLANTS_VIZ_PORT")
    argv = [str(BIN / "kedro"), "viz", "run", "--host", HOST, "--port", str(port), "--no-browser"]
    return _serve("kedro-viz", argv, port, "/api/main", project, state, 180)


def start_mlflow_ui(project: Path, state: Path) -> tuple[str, int]:
    backend = mlflow_backend(project)
    if backend.startswith(("http://", "https://")):
        return backend, 0  # a tracking server already serves the UI
    port = _port("PLANTS_MLFLOW_PORT")
    argv = [
        str(BIN / "mlflow"),
        "ui",
        "--backend-store-uri",
        backend,
        "--host",
        HOST,
        "--port",
        str(port),
        # A local UI for one user: one process, not `mlflow ui`'s default of four uvicorn
        # workers (each imports mlflow: four times the start-up CPU and the memory).
        "--workers",
        "1",
    ]
    # MLflow 3 starts a job runner beside the UI (it and its eight Huey consumers: nine
    # processes, each importing mlflow) for GenAI jobs this project never submits: off,
    # unless the environment asks for it.
    jobs = "MLFLOW_SERVER_ENABLE_JOB_EXECUTION"
    env = {jobs: os.environ.get(jobs, "false")}
    return _serve("mlflow-ui", argv, port, "/health", project, state, 120, env)


def start_zenml(project: Path, state: Path) -> tuple[str, int]:
    """``zenml login --local`` (detached daemon), waited on via its /health endpoint; then
    marks the onboarding survey done so the dashboard opens on the runs, not on a form."""
    port = _port("PLANTS_ZENML_PORT")
    env = {"ZENML_AUTO_OPEN_DASHBOARD": "false", "ZENML_ANALYTICS_OPT_IN": "false"}
    with open(state / "zenml.log", "ab") as log:
        proc = subprocess.run(
            [str(BIN / "zenml"), "login", "--local", "--port", str(port)],
            cwd=project,
            stdout=log,
            stderr=subprocess.STDOUT,
            env={**os.environ, **env},
            timeout=300,
            check=False,
        )
    if proc.returncode != 0:
        raise UserFacingError(f"zenml login --local failed; see {state / 'zenml.log'}")
    url = f"http://{HOST}:{port}"
    wait_http(f"{url}/health", 120)
    skip_onboarding(url)
    return url, 0


def zenml_token(url: str) -> str:
    r = httpx.post(f"{url}/api/v1/login", data={"username": "default", "password": ""}, timeout=10)
    r.raise_for_status()
    return r.json()["access_token"]


def skip_onboarding(url: str) -> None:
    """Mark the onboarding survey done so the dashboard opens on the runs, not on a form.

    The dashboard (0.98) shows the survey while ``email_opted_in`` is null *or*
    ``user_metadata.finished_onboarding_survey`` is unset: both are set here.
    """
    try:
        token = zenml_token(url)
        httpx.put(
            f"{url}/api/v1/current-user",
            json={
                "email_opted_in": False,
                "user_metadata": {"finished_onboarding_survey": True},
            },
            headers={"Authorization": f"Bearer {token}"},
            timeout=10,
        ).raise_for_status()
    except httpx.HTTPError as exc:  # the dashboard still works, it just asks first
        print(f"note: could not skip the ZenML onboarding form: {exc}", file=sys.stderr)


def latest_run_url(url: str) -> str | None:
    """The dashboard page of the newest pipeline run on the ZenML server at ``url``."""
    try:
        token = zenml_token(url)
        r = httpx.get(
            f"{url}/api/v1/runs",
            params={"sort_by": "desc:created", "size": 1, "hydrate": False},
            headers={"Authorization": f"Bearer {token}"},
            timeout=10,
        )
        r.raise_for_status()
        items = r.json().get("items") or []
    except httpx.HTTPError:
        return None
    if not items:
        return None
    project = (items[0].get("body") or {}).get("project_id") or "default"
    return f"{url}/projects/{_project_name(url, token, project)}/runs/{items[0]['id']}"


def _project_name(url: str, token: str, project_id: str) -> str:
    try:
        r = httpx.get(
            f"{url}/api/v1/projects/{project_id}",
            headers={"Authorization": f"Bearer {token}"},
            timeout=10,
        )
        r.raise_for_status()
        return r.json().get("name") or "default"
    except httpx.HTTPError:
        return "default"


STARTERS = {"zenml": start_zenml, "kedro-viz": start_kedro_viz, "mlflow": start_mlflow_ui}


def start_all(project: Path, only: list[str] | None = None) -> dict[str, str]:
    """Start the UIs not already running, all at once; record each that came up (so that
    ``--stop`` finds it even when another failed), then raise the first failure."""
    state_dir = _state_dir(project)
    state_file = state_dir / "state.json"
    state = json.loads(state_file.read_text()) if state_file.exists() else {}
    wanted = [name for name in STARTERS if not only or name in only]
    running = {n: state[n]["url"] for n in wanted if state.get(n) and _alive(state[n])}
    pending = [n for n in wanted if n not in running]
    futures = {}
    if pending:
        # the ZenML server alone takes 35-55 s: say so, then one line per UI as it comes up
        log.info("starting %s (up to a minute)...", ", ".join(pending))
        started = time.monotonic()
        with ThreadPoolExecutor(len(pending), thread_name_prefix="dashboard") as pool:
            futures = {pool.submit(STARTERS[n], project, state_dir): n for n in pending}
            for future in as_completed(futures):
                state_word = "up" if future.exception() is None else "failed"
                log.info(
                    "  %s %s after %.0f s", futures[future], state_word, time.monotonic() - started
                )
            futures = {n: f for f, n in futures.items()}
    urls: dict[str, str] = {}
    for name in wanted:
        if name in running:
            urls[name] = running[name]
        elif futures[name].exception() is None:
            url, pid = futures[name].result()
            state[name] = {"url": url, "pid": pid}
            urls[name] = url
    state_file.write_text(json.dumps(state, indent=2))
    failed = [f.exception() for f in futures.values() if f.exception() is not None]
    if failed:
        raise failed[0]
    return urls


def _alive(entry: dict) -> bool:
    try:
        return httpx.get(entry["url"], timeout=3).status_code < 500
    except httpx.HTTPError:
        return False


def _stop_group(pgid: int, grace: float = 15.0) -> None:
    """SIGTERM the process group, wait for it to go, SIGKILL what is left after ``grace``."""
    try:
        os.killpg(pgid, signal.SIGTERM)
    except ProcessLookupError:
        return
    deadline = time.monotonic() + grace
    while time.monotonic() < deadline:
        # A leader that is this process's own child stays a zombie, and so "alive" to
        # killpg, until it is reaped (the others are reaped by whoever adopted them).
        with contextlib.suppress(ChildProcessError):
            os.waitpid(pgid, os.WNOHANG)
        try:
            os.killpg(pgid, 0)
        except ProcessLookupError:
            return
        time.sleep(0.2)
    with contextlib.suppress(ProcessLookupError):
        os.killpg(pgid, signal.SIGKILL)


def stop_all(project: Path) -> list[str]:
    state_file = _state_dir(project) / "state.json"
    if not state_file.exists():
        return ["nothing to stop"]
    entries = json.loads(state_file.read_text())

    def stop(name: str, entry: dict) -> None:
        if name == "zenml":
            subprocess.run(
                [str(BIN / "zenml"), "logout", "--local"],
                cwd=project,
                capture_output=True,
                check=False,
                timeout=120,
            )
        elif entry.get("pid"):
            _stop_group(entry["pid"])

    if entries:
        with ThreadPoolExecutor(len(entries), thread_name_prefix="dashboard") as pool:
            for future in [pool.submit(stop, n, e) for n, e in entries.items()]:
                future.result()
    state_file.unlink()
    return [f"stopped {name} ({entry['url']})" for name, entry in entries.items()]
