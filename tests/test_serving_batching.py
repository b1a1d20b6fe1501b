"""Micro-batching of concurrent /predict requests and several worker processes, against a
real ``plants-mlops serve`` (one test serves the app in process), for correctness, not timing
(the speed is benchmarks/bench_serving.py).
"""

from __future__ import annotations

import re
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest
import sqlalchemy as sa
from support import images
from support.champion import register_champion, unique_model_name
from support.serving import ADMIN_KEY, api_in_process, predict_burst, running_api

ADMIN = {"X-API-Key": ADMIN_KEY}


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


def test_concurrent_requests_share_model_calls_and_each_gets_its_own_answer_and_log_row(
    tmp_path, mlflow_tracking_uri
):
    name = unique_model_name()
    register_champion(mlflow_tracking_uri, name=name)
    # A long wait makes the concurrent requests certainly meet in batches.
    env = {"PLANTS_BATCH_WAIT_MS": "25", "PLANTS_BATCH_MAX": "8", "PLANTS_BATCH_RUNNERS": "1"}
    uploads = [_upload(i) for i in range(40)]
    with (
        running_api(tmp_path, tracking_uri=mlflow_tracking_uri, model_name=name, env=env) as api,
        httpx.Client(base_url=api.url, timeout=30) as shared,  # thread-safe, pooled
    ):

        def post(i: int) -> httpx.Response:
            fname, data = uploads[i]
            return shared.post(
                "/predict",
                files={"file": (fname, data, "image/jpeg")},
                headers={"X-Request-ID": f"burst-{i}"},
            )

        with ThreadPoolExecutor(16) as pool:
            answers = list(pool.map(post, range(len(uploads))))
        # The same images through /predict/batch: one ONNX call, no micro-batcher.
        good = [i for i in range(len(uploads)) if i % 5 != 4]
        reference = shared.post(
            "/predict/batch",
            files=[("files", (uploads[i][0], uploads[i][1], "image/jpeg")) for i in good],
        ).json()["items"]
        metrics = shared.get("/metrics").text
        api.stop()

    for i, r in enumerate(answers):
        assert r.headers["x-request-id"] == f"burst-{i}"
        if i % 5 == 4:  # a damaged image fails alone, with its own clear error
            assert r.status_code == 400 and r.json()["error"] == "truncated", r.text
            assert r.json()["request_id"] == f"burst-{i}"
        else:
            assert r.status_code == 200, r.text
            assert r.json()["request_id"] == f"burst-{i}"
    for i, ref in zip(good, reference, strict=True):
        got, want = answers[i].json(), ref["prediction"]
        assert got["label"] == want["label"]
        for label, p in want["probabilities"].items():
            assert got["probabilities"][label] == pytest.approx(p, abs=1e-5)

    calls = _metric(metrics, "plants_inference_batch_size_count")
    batched = _metric(metrics, "plants_inference_batch_size_sum")
    assert batched == len(good)  # every good /predict image went through the batcher once
    assert calls < len(good)  # ... in fewer model calls than images: they shared calls
    assert _metric(metrics, "plants_predictions_total", model_version="1") == 2 * len(good)
    assert _metric(metrics, "plants_rejected_inputs_total", reason="truncated") == 8

    engine = sa.create_engine(f"sqlite:///{tmp_path / 'plants.db'}")
    with engine.connect() as conn:
        logged = conn.execute(
            sa.text("SELECT request_id FROM prediction_log WHERE endpoint = 'predict'")
        ).scalars()
        logged = sorted(logged)
    engine.dispose()
    assert logged == sorted(f"burst-{i}" for i in good)


def _record_threads(service, calls: list[tuple[str, str]]) -> None:
    """Record on which thread ``service`` decodes and answers each request (wrappers around
    its own methods: the real decode, model and response still run)."""
    for method in ("_prepare", "_respond"):
        original = getattr(service, method)

        def traced(*args, _original=original, _method=method, **kwargs):
            calls.append((_method, threading.current_thread().name))
            return _original(*args, **kwargs)

        setattr(service, method, traced)


def test_each_request_is_decoded_predicted_and_answered_on_one_lane_thread(
    tmp_path, mlflow_tracking_uri
):
    """One hand-off per request: the event loop queues the upload, a lane thread decodes
    it, runs the model and builds the answer, and the loop sends it (docs/serving.md,
    *Prediction lanes*). No thread is started per request."""
    name = unique_model_name()
    register_champion(mlflow_tracking_uri, name=name)
    calls: list[tuple[str, str]] = []
    with api_in_process(tmp_path, tracking_uri=mlflow_tracking_uri, model_name=name) as client:
        _record_threads(client.app.state.service, calls)
        before = {t.ident for t in threading.enumerate()}
        answers = [
            client.post(
                "/predict", files={"file": (f"{i}.jpg", images.sample_jpeg(i), "image/jpeg")}
            )
            for i in range(5)
        ]
        started = {t.ident for t in threading.enumerate()} - before
        metrics = client.get("/metrics").text
    assert [r.status_code for r in answers] == [200] * 5, answers[-1].text
    assert started == set()  # no thread was started for a request
    assert [m for m, _ in calls] == ["_prepare", "_respond"] * 5
    assert {t for _, t in calls} <= {"predict-lane-0", "predict-lane-1"}, calls
    for i in range(5):  # decoded and answered on the same thread
        assert calls[2 * i][1] == calls[2 * i + 1][1]
    # Each still counts as a model call of one image.
    assert _metric(metrics, "plants_inference_batch_size_count") == 5
    assert _metric(metrics, "plants_inference_batch_size_sum") == 5


def _tiny_png() -> bytes:
    import io

    from PIL import Image

    buf = io.BytesIO()
    Image.new("RGB", (64, 64), (90, 160, 60)).save(buf, format="PNG")
    return buf.getvalue()


def test_large_images_decode_beside_the_lane_and_still_get_answers(tmp_path, mlflow_tracking_uri):
    """An image over the lane's pixel limit (read from its header) decodes on a side
    thread, so it does not hold up the small uploads queued behind it; a damaged one still
    gets its own clear error."""
    name = unique_model_name()
    register_champion(mlflow_tracking_uri, name=name)
    calls: list[tuple[str, str]] = []
    big = images.sample_jpeg(1)
    with api_in_process(tmp_path, tracking_uri=mlflow_tracking_uri, model_name=name) as client:
        client.app.state.batcher.inline_pixels = 10_000  # the sample photos are ~50,000 px
        _record_threads(client.app.state.service, calls)
        good = client.post("/predict", files={"file": ("big.jpg", big, "image/jpeg")})
        broken = client.post(
            "/predict", files={"file": ("cut.jpg", images.truncated_jpeg(), "image/jpeg")}
        )
        small = client.post("/predict", files={"file": ("tiny.png", _tiny_png(), "image/png")})
    assert good.status_code == 200 and good.json()["label"] in ("dandelion", "grass"), good.text
    assert broken.status_code == 400 and broken.json()["error"] == "truncated", broken.text
    assert small.status_code == 200, small.text
    decoded_on = [t for m, t in calls if m == "_prepare"]
    assert decoded_on[0].startswith("predict-decode") and decoded_on[1].startswith(
        "predict-decode"
    ), calls
    assert decoded_on[2].startswith("predict-lane"), calls  # 64 x 64: on its lane
    answered_on = [t for m, t in calls if m == "_respond"]
    assert all(t.startswith("predict-lane") for t in answered_on), calls


def test_a_lane_does_not_wait_for_the_decode_budget_that_large_uploads_hold(
    tmp_path, mlflow_tracking_uri
):
    """The decode budget bounds the memory of large decodes; a lane decodes only small
    images (checked from the header), one at a time, so it does not queue behind them."""
    name = unique_model_name()
    register_champion(mlflow_tracking_uri, name=name)
    with api_in_process(tmp_path, tracking_uri=mlflow_tracking_uri, model_name=name) as client:
        budget = client.app.state.service.decode_budget
        budget.wait_seconds = 1.0  # a budgeted decode would give up (503 busy) after 1 s
        with budget.reserve(budget.total):  # large uploads hold the whole budget
            answer = client.post(
                "/predict", files={"file": ("a.jpg", images.sample_jpeg(2), "image/jpeg")}
            )
            big = client.app.state.batcher
            big.inline_pixels = 10_000  # now the same photo counts as large: budgeted
            refused = client.post(
                "/predict", files={"file": ("a.jpg", images.sample_jpeg(2), "image/jpeg")}
            )
    assert answer.status_code == 200, answer.text
    assert refused.status_code == 503 and refused.json()["error"] == "busy", refused.text


def test_an_unexpected_error_fails_only_its_request_and_the_lane_keeps_serving(
    tmp_path, mlflow_tracking_uri
):
    name = unique_model_name()
    register_champion(mlflow_tracking_uri, name=name)
    with api_in_process(tmp_path, tracking_uri=mlflow_tracking_uri, model_name=name) as client:
        service = client.app.state.service
        respond = service._respond

        def respond_or_fail(model, prep, probs, emb, request_id, endpoint):
            if request_id == "boom":
                raise RuntimeError("a bug while answering")
            return respond(model, prep, probs, emb, request_id, endpoint)

        service._respond = respond_or_fail
        answers = [
            client.post(
                "/predict",
                files={"file": ("a.jpg", images.sample_jpeg(i), "image/jpeg")},
                headers={"X-Request-ID": rid},
            )
            for i, rid in enumerate(["ok-1", "boom", "ok-2"])
        ]
    assert [r.status_code for r in answers] == [200, 500, 200], [r.text for r in answers]
    assert answers[1].json()["error"] == "internal_error"
    assert answers[1].json()["request_id"] == "boom"


def test_batching_off_still_predicts_one_call_per_request(tmp_path, mlflow_tracking_uri):
    name = unique_model_name()
    register_champion(mlflow_tracking_uri, name=name)
    env = {"PLANTS_BATCH_WAIT_MS": "0"}
    with (
        running_api(tmp_path, tracking_uri=mlflow_tracking_uri, model_name=name, env=env) as api,
        httpx.Client(base_url=api.url, timeout=30) as c,
    ):
        r = c.post("/predict", files={"file": ("a.jpg", images.sample_jpeg(3), "image/jpeg")})
        assert r.status_code == 200 and r.json()["label"] in ("dandelion", "grass")
        assert _metric(c.get("/metrics").text, "plants_inference_batch_size_count") == 0


def test_two_workers_each_load_the_model_and_a_reload_reaches_both_without_failures(
    tmp_path, mlflow_tracking_uri
):
    name = unique_model_name()
    v1 = register_champion(mlflow_tracking_uri, name=name, seed=1).version
    env = {"PLANTS_SERVE_WORKERS": "2"}  # serve --workers 2 (its default comes from here)
    with running_api(tmp_path, tracking_uri=mlflow_tracking_uri, model_name=name, env=env) as api:
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
    # The counters of both workers add up in /metrics, and each prediction has its row.
    served = [v for status, v, at in results if status == 200]
    for version in (v1, v2):
        assert _metric(metrics, "plants_predictions_total", model_version=version) == sum(
            1 for v in served if v == version
        )
    engine = sa.create_engine(f"sqlite:///{tmp_path / 'plants.db'}")
    with engine.connect() as conn:
        rows = conn.execute(sa.text("SELECT count(*) FROM prediction_log")).scalar()
    engine.dispose()
    assert rows == len(served)


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


def test_two_workers_each_listen_and_share_keep_alive_connections_opened_at_once(
    tmp_path, mlflow_tracking_uri
):
    """Each worker listens on a socket of its own (SO_REUSEPORT), and 16 keep-alive
    connections opened together (a proxy's pool, a load generator) are served by both. On
    one listening socket shared by the workers, the first worker to wake accepted every
    pending connection and the other idled (docs/serving.md)."""
    import socket

    import psutil

    name = unique_model_name()
    register_champion(mlflow_tracking_uri, name=name)
    env = {"PLANTS_SERVE_WORKERS": "2"}
    with running_api(tmp_path, tracking_uri=mlflow_tracking_uri, model_name=name, env=env) as api:
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
            per_worker = {
                child.pid: sum(
                    1
                    for c in child.net_connections(kind="tcp")
                    if c.status == psutil.CONN_ESTABLISHED and c.laddr.port == port
                )
                for child in children
            }
        finally:
            for s in conns:
                s.close()
    served = sorted(n for n in per_worker.values() if n)
    assert sum(served) == 16 and len(served) == 2, per_worker


def test_predict_answers_the_same_through_the_shortcut_and_through_fastapi_routing(
    tmp_path, mlflow_tracking_uri
):
    """The server answers POST /predict in raw ASGI (``PlantsAPI`` shortcut); without the
    shortcut (as with a root path, behind a proxy) the request goes through Starlette and
    FastAPI's routing to the route that documents it. Both give the same answers, errors
    and headers."""
    name = unique_model_name()
    register_champion(mlflow_tracking_uri, name=name)
    calls = {"predict_asgi": 0}
    with api_in_process(tmp_path, tracking_uri=mlflow_tracking_uri, model_name=name) as client:
        app = client.app
        route, shortcut = app.shortcuts[("POST", "/predict")]
        assert route.path == "/predict"

        async def counted(scope, receive, send, _inner=shortcut):
            calls["predict_asgi"] += 1
            await _inner(scope, receive, send)

        answers = {}
        for way, shortcuts in (
            ("shortcut", {("POST", "/predict"): (route, counted)}),
            ("routed", {}),
        ):
            app.shortcuts = shortcuts
            answers[way] = [
                client.post(
                    "/predict", files={"file": ("a.jpg", images.sample_jpeg(3), "image/jpeg")}
                ),
                client.post("/predict", files={"file": ("a.txt", b"hello", "text/plain")}),
                client.post(
                    "/predict",
                    files={"file": ("cut.jpg", images.truncated_jpeg(), "image/jpeg")},
                ),
                client.post("/predict", json={"image": "x"}),
            ]
        metrics = client.get("/metrics").text
    assert calls["predict_asgi"] == 4  # the shortcut served the first four, not the rest
    for fast, slow in zip(answers["shortcut"], answers["routed"], strict=True):
        assert fast.status_code == slow.status_code, (fast.text, slow.text)
        assert fast.headers["content-type"] == slow.headers["content-type"] == "application/json"
        for header in ("x-request-id", "x-content-type-options", "x-frame-options"):
            assert header in fast.headers and header in slow.headers
        a, b = fast.json(), slow.json()
        assert a["request_id"] == fast.headers["x-request-id"]
        assert b["request_id"] == slow.headers["x-request-id"]
        if fast.status_code == 200:
            assert a["label"] == b["label"] and a["probabilities"] == b["probabilities"]
        else:
            assert a["error"] == b["error"] and a["detail"] == b["detail"]
    assert [r.status_code for r in answers["shortcut"]] == [200, 415, 400, 422]
    # Both count under the route's own label.
    assert _metric(metrics, "plants_http_requests_total", route="/predict", status="200") == 2


def test_the_shortcut_leaves_requests_under_a_root_path_to_fastapi_routing():
    """Behind a proxy's root path the path to match is not scope["path"] alone; such a
    request goes through Starlette's routing, which strips the root path."""
    import asyncio

    from plants_mlops.serving.app import PlantsAPI

    app = PlantsAPI()
    seen = []

    async def shortcut(scope, receive, send):
        seen.append(scope["path"])

    class Route:
        path = "/predict"
        methods = {"POST"}

    app.add_shortcut(Route, shortcut)
    base = {"type": "http", "method": "POST", "headers": [], "query_string": b""}
    asyncio.run(app({**base, "path": "/predict", "root_path": ""}, None, None))
    assert seen == ["/predict"]
    sent = []

    async def receive():
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message):
        sent.append(message)

    scope = {**base, "path": "/api/predict", "root_path": "/api", "raw_path": b"/api/predict"}
    asyncio.run(app({**scope, "scheme": "http", "server": ("t", 80)}, receive, send))
    assert seen == ["/predict"]  # not taken: FastAPI answered (no such route here: 404)
    assert sent[0]["status"] == 404
