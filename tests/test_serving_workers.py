"""Several worker processes of a real ``plants-mlops serve --workers 2``: what must be shared
lives in the database (feedback finds a prediction another worker served, one retraining at
a time), uploads answered concurrently each get their own answer and log row, each worker
listens on a socket of its own, a busy port is refused, and a reload reaches every worker.
For correctness, not timing (the speed is benchmarks/bench_serving.py).
"""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest
import sqlalchemy as sa
from support import images, servers
from support.champion import register_champion, unique_model_name
from support.serving import ADMIN_KEY, predict_burst, running_api

ADMIN = {"X-API-Key": ADMIN_KEY}


@pytest.fixture(scope="module")
def two_workers(tmp_path_factory, mlflow_tracking_uri):
    """One server, two workers, for the whole module (the reload test, last, moves the
    champion)."""
    name = unique_model_name()
    register_champion(mlflow_tracking_uri, name=name, seed=1)
    workdir = tmp_path_factory.mktemp("two-workers")
    env = {
        "PLANTS_SERVE_WORKERS": "2",  # serve --workers 2 (its default comes from here)
        "PLANTS_RETRAIN_COMMAND": "python3 -c 'import time; time.sleep(4)'",
    }
    with running_api(workdir, tracking_uri=mlflow_tracking_uri, model_name=name, env=env) as api:
        api.model_name = name
        yield api


def _each_on_its_own_connection(url: str, calls: int, send) -> list[httpx.Response]:
    """``send(client, i)`` for i in range(calls), at once, each on a new connection (the
    kernel spreads new connections over the workers' sockets)."""

    def one(i: int) -> httpx.Response:
        with httpx.Client(base_url=url, timeout=60) as c:
            return send(c, i)

    with ThreadPoolExecutor(calls) as pool:
        return list(pool.map(one, range(calls)))


def _metric(text: str, metric: str, **labels) -> float:
    """Sum of the samples of ``metric`` whose labels include ``labels``."""
    total = 0.0
    for line in text.splitlines():
        m = re.match(rf"^{metric}(?:\{{(.*)\}})? (\S+)$", line)
        if not m:
            continue
        have = dict(re.findall(r'(\w+)="([^"]*)"', m.group(1) or ""))
        if all(have.get(k) == v for k, v in labels.items()):
            total += float(m.group(2))
    return total


def _upload(i: int) -> tuple[str, bytes]:
    """Every fifth upload is a damaged JPEG; the others are sample photos."""
    if i % 5 == 4:
        return "broken.jpg", images.truncated_jpeg()
    return f"{i}.jpg", images.sample_jpeg(i % 20, "dandelion" if i % 2 else "grass")


def test_concurrent_uploads_each_get_their_own_answer_and_log_row(two_workers):
    api = two_workers
    uploads = [_upload(i) for i in range(40)]
    with httpx.Client(base_url=api.url, timeout=30) as shared:  # thread-safe, pooled

        def post(i: int) -> httpx.Response:
            fname, data = uploads[i]
            return shared.post(
                "/predict",
                files={"file": (fname, data, "image/jpeg")},
                headers={"X-Request-ID": f"burst-{i}"},
            )

        with ThreadPoolExecutor(16) as pool:
            answers = list(pool.map(post, range(len(uploads))))
        # The same images through /predict/batch: one ONNX call.
        good = [i for i in range(len(uploads)) if i % 5 != 4]
        reference = shared.post(
            "/predict/batch",
            files=[("files", (uploads[i][0], uploads[i][1], "image/jpeg")) for i in good],
        ).json()["items"]

    for i, r in enumerate(answers):
        assert r.headers["x-request-id"] == f"burst-{i}"
        if i % 5 == 4:  # a damaged image fails alone, with its own clear error
            assert r.status_code == 400 and r.json()["error"] == "damaged_image", r.text
            assert r.json()["request_id"] == f"burst-{i}"
        else:
            assert r.status_code == 200, r.text
            assert r.json()["request_id"] == f"burst-{i}"
    for i, ref in zip(good, reference, strict=True):
        got, want = answers[i].json(), ref["prediction"]
        assert got["label"] == want["label"]
        for label, p in want["probabilities"].items():
            assert got["probabilities"][label] == pytest.approx(p, abs=1e-5)
    ids = {answers[i].json()["prediction_id"] for i in good}
    assert len(ids) == len(good)  # the server's own id, one per prediction
    deadline = time.monotonic() + 30
    # Until every prediction is in (an empty log is not done: the writer flushes every
    # PLANTS_PREDICTION_LOG_FLUSH_SECONDS).
    while True:
        logged = _logged(api, "SELECT request_id, prediction_id FROM prediction_log")
        ours = [r[0] for r in logged if r[1] in ids]
        if len(ours) >= len(good):
            break
        assert time.monotonic() < deadline, "predictions missing from the log"
        time.sleep(0.2)
    assert sorted(ours) == sorted(f"burst-{i}" for i in good)


def _logged(api, query: str) -> list:
    engine = sa.create_engine(f"sqlite:///{api.workdir / 'plants.db'}")
    try:
        with engine.connect() as conn:
            return list(conn.execute(sa.text(query)))
    except sa.exc.OperationalError:  # the table comes with the first write
        return []
    finally:
        engine.dispose()


def test_feedback_finds_predictions_whichever_worker_served_them(two_workers):
    """Each prediction and each feedback on its own connection: about half the feedback
    reaches the worker that did not serve the prediction (in its memory: 404 before)."""
    api = two_workers
    predictions = _each_on_its_own_connection(
        api.url,
        12,
        lambda c, i: c.post(
            "/predict", files={"file": ("a.jpg", images.sample_jpeg(i), "image/jpeg")}
        ),
    )
    ids = [r.json()["prediction_id"] for r in predictions]
    feedback = _each_on_its_own_connection(
        api.url,
        12,
        lambda c, i: c.post(
            "/feedback", json={"prediction_id": ids[i], "label": "grass"}, headers=ADMIN
        ),
    )
    assert [r.status_code for r in feedback] == [202] * 12, [r.text for r in feedback]
    # Filed again (a client retrying, another reviewer): the same record, replaced.
    again = _each_on_its_own_connection(
        api.url,
        4,
        lambda c, i: c.post(
            "/feedback", json={"prediction_id": ids[0], "label": "dandelion"}, headers=ADMIN
        ),
    )
    assert {r.json()["feedback_id"] for r in again} == {feedback[0].json()["feedback_id"]}
    rows = _logged(api, "SELECT prediction_id, true_label, times_filed FROM feedback_candidates")
    assert sorted(r[0] for r in rows) == sorted(ids)  # one record per prediction
    assert [(r[1], r[2]) for r in rows if r[0] == ids[0]] == [("dandelion", 5)]


def test_two_retrain_calls_at_once_start_exactly_one_run(two_workers):
    """Ten calls at once, spread over both workers: the guard in the database lets one
    through (a guard per worker let each worker start its own run)."""
    api = two_workers
    answers = _each_on_its_own_connection(
        api.url, 10, lambda c, i: c.post("/admin/retrain", json={"reason": f"r{i}"}, headers=ADMIN)
    )
    codes = sorted(r.status_code for r in answers)
    assert codes == [202] + [409] * 9, [r.text for r in answers]
    started = next(r.json() for r in answers if r.status_code == 202)
    refused = [r.json() for r in answers if r.status_code == 409]
    assert all(started["run_id"] in r["detail"] for r in refused)
    # Both workers report the same run (read from the database), then its end.
    statuses = _each_on_its_own_connection(
        api.url, 6, lambda c, i: c.get("/admin/retrain", headers=ADMIN)
    )
    assert {(s.json()["run_id"], s.json()["running"]) for s in statuses} == {
        (started["run_id"], True)
    }
    deadline = time.monotonic() + 60
    with httpx.Client(base_url=api.url, timeout=30) as c:
        while (status := c.get("/admin/retrain", headers=ADMIN).json())["running"]:
            assert time.monotonic() < deadline, status
            time.sleep(0.3)
        assert status["returncode"] == 0 and status["run_id"] == started["run_id"]
        again = c.post("/admin/retrain", json={"reason": "after"}, headers=ADMIN)
        assert again.status_code == 202, again.text  # the guard was released


def _serve(port: int, workers: int, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run(
        [str(servers.VENV_BIN / "plants-mlops"), "serve", "--port", str(port)]
        + ["--workers", str(workers)],
        capture_output=True,
        text=True,
        timeout=90,
        cwd=cwd,
    )


@pytest.mark.parametrize("workers", [1, 2])
def test_serve_on_a_busy_port_exits_1_with_address_in_use(two_workers, tmp_path, workers):
    """Another server of ours (its workers listen with SO_REUSEPORT) or any other listener:
    a second serve must not join the port and take part of its traffic."""
    port = int(two_workers.url.rsplit(":", 1)[1])
    other = socket.socket()
    other.bind(("127.0.0.1", 0))
    other.listen()
    try:
        for busy in (port, other.getsockname()[1]):
            done = _serve(busy, workers, tmp_path)
            assert done.returncode == 1, done.stderr[-2000:]
            assert f"cannot listen on 127.0.0.1:{busy}: address in use" in done.stderr
    finally:
        other.close()


def _listening_sockets(pid: int, port: int) -> set[str]:
    """Inodes of the TCP sockets listening on ``port`` that process ``pid`` holds."""
    import glob
    import os

    listening = set()
    for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        fields = line.split()
        if fields[3] == "0A" and int(fields[1].rsplit(":", 1)[1], 16) == port:  # LISTEN
            listening.add(fields[9])
    held = set()
    for fd in glob.glob(f"/proc/{pid}/fd/*"):
        try:
            held.add(os.readlink(fd))
        except OSError:  # closed meanwhile
            continue
    return {inode for inode in listening if f"socket:[{inode}]" in held}


def test_two_workers_each_listen_and_share_keep_alive_connections_opened_at_once(two_workers):
    """Each worker listens on a socket of its own (SO_REUSEPORT), and 16 keep-alive
    connections opened together (a proxy's pool, a load generator) are served by both. On
    one listening socket shared by the workers, the first worker to wake accepted every
    pending connection and the other idled (docs/serving.md)."""
    import psutil

    api = two_workers
    port = int(api.url.rsplit(":", 1)[1])
    children = psutil.Process(api.process.proc.pid).children(recursive=True)
    listeners = {c.pid: _listening_sockets(c.pid, port) for c in children}
    listeners = {pid: inodes for pid, inodes in listeners.items() if inodes}
    assert len(listeners) == 2, listeners  # the two workers
    assert len(set().union(*listeners.values())) == 2, listeners  # not one shared socket
    # All 16 handshakes at once (non-blocking connects), before any worker accepts.
    conns = [socket.socket() for _ in range(16)]
    for s in conns:
        s.setblocking(False)
        s.connect_ex(("127.0.0.1", port))
    for s in conns:
        s.setblocking(True)
        s.settimeout(30)
    try:
        for s in conns:
            s.sendall(b"GET /health HTTP/1.1\r\nHost: test\r\n\r\n")
        for s in conns:
            assert s.recv(4096).startswith(b"HTTP/1.1 200")
        # The two workers only: another child of the server (a short-lived helper
        # process) may be gone by now.
        per_worker = {
            pid: sum(
                1
                for c in psutil.Process(pid).net_connections(kind="tcp")
                if c.status == psutil.CONN_ESTABLISHED and c.laddr.port == port
            )
            for pid in listeners
        }
    finally:
        for s in conns:
            s.close()
    served = sorted(n for n in per_worker.values() if n)
    assert sum(served) == 16 and len(served) == 2, per_worker


def _loaded_pids(url: str) -> list[int]:
    """The pids /metrics lists with a model loaded (a new connection: any live worker)."""
    text = httpx.get(f"{url}/metrics", timeout=30).text
    return sorted(
        int(m.group(1))
        for m in re.finditer(r'^plants_model_loaded\{pid="(\d+)"\} 1\.0$', text, re.M)
    )


def test_a_killed_worker_is_replaced_and_no_longer_counted(two_workers):
    """A worker killed (the kernel's OOM killer, kill -9) left its live gauges behind:
    /metrics listed its pid with a model beside its replacement's, and /ready counted it
    as a worker with a model."""
    before = _loaded_pids(two_workers.url)
    assert len(before) == 2, before
    victim = before[0]
    os.kill(victim, signal.SIGKILL)
    deadline = time.monotonic() + 90
    while victim in (pids := _loaded_pids(two_workers.url)) or len(pids) != 2:
        assert time.monotonic() < deadline, f"after 90 s /metrics lists {pids} ({victim} died)"
        time.sleep(0.5)
    assert httpx.get(f"{two_workers.url}/ready", timeout=30).status_code == 200


def test_two_workers_each_load_the_model_and_a_reload_reaches_both_without_failures(
    two_workers, mlflow_tracking_uri
):
    """Last in the module: it moves the champion of the shared server."""
    api, name = two_workers, two_workers.model_name
    v1 = httpx.get(f"{api.url}/ready", timeout=30).json()["model_version"]
    # /ready answered 200: both workers have a model (one value per worker, pid label).
    with httpx.Client(base_url=api.url, timeout=30) as c:
        loaded = [
            line
            for line in c.get("/metrics").text.splitlines()
            if line.startswith("plants_model_loaded{")
        ]
    assert len(loaded) == 2 and all(line.endswith(" 1.0") for line in loaded), loaded

    with predict_burst(api.url) as results:
        time.sleep(1.0)
        v2 = register_champion(mlflow_tracking_uri, name=name, seed=2).version
        with httpx.Client(base_url=api.url, timeout=60) as c:
            # One request reaches one worker; it tells the other through the signal file.
            assert c.post("/admin/reload", headers=ADMIN).json()["model_version"] == v2
            # The other worker sees the signal within 0.25 s, then downloads and loads
            # v2 (seconds on a busy machine): settled once no worker reports v1 any more.
            deadline = time.monotonic() + 120
            while _metric(
                c.get("/metrics").text, "plants_model_version_info", name=name, version=v1
            ):
                assert time.monotonic() < deadline, "a worker still serves v1 after 120 s"
                time.sleep(0.25)
        swapped_at = time.monotonic()
        time.sleep(2.5)  # requests after the swap settled
    with httpx.Client(base_url=api.url, timeout=30) as c:
        metrics = c.get("/metrics").text
    api.stop()

    assert results and all(status == 200 for status, _, _ in results)  # nothing dropped
    late = [version for _, version, at in results if at > swapped_at + 0.5]
    assert late and set(late) == {v2}, late  # after the swap settled, every worker serves v2
    assert _metric(metrics, "plants_model_version_info", name=name, version=v2) == 1
    assert _metric(metrics, "plants_model_version_info", name=name, version=v1) == 0
    # The counters of both workers add up in /metrics (v2 served only this burst), and
    # after the shutdown's flush every prediction of the module has its row.
    served = [v for status, v, at in results if status == 200]
    assert _metric(metrics, "plants_predictions_total", model_version=v2) == served.count(v2)
    total = _metric(metrics, "plants_predictions_total")
    assert _logged(api, "SELECT count(*) FROM prediction_log")[0][0] == total
