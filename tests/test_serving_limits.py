"""Serving settings are checked at start (one clear line per bad value), and what the API
answers to requests it must refuse."""

from __future__ import annotations

import os

import pytest

from plants_mlops.errors import UserFacingError
from plants_mlops.serving.config import ServingConfig


@pytest.mark.parametrize(
    ("env", "line"),
    [
        (
            {"PLANTS_PREDICTION_LOG_FLUSH_SECONDS": "0"},
            "PLANTS_PREDICTION_LOG_FLUSH_SECONDS=0 is outside 0.05..3600 seconds",
        ),
        (
            {"PLANTS_MODEL_POLL_SECONDS": "0.001"},
            "PLANTS_MODEL_POLL_SECONDS=0.001 is outside 0.1..86400 seconds (or 0: off)",
        ),
        (
            {"PLANTS_MAX_UPLOAD_BYTES": "-1"},
            "PLANTS_MAX_UPLOAD_BYTES=-1 is outside 1024..104857600 bytes",
        ),
        ({"PLANTS_ORT_THREADS": "0"}, "PLANTS_ORT_THREADS=0 is outside 1..64 threads"),
        ({"PLANTS_PREDICT_THREADS": "0"}, "PLANTS_PREDICT_THREADS=0 is outside 1..256 threads"),
        ({"PLANTS_SERVE_WORKERS": "0"}, "PLANTS_SERVE_WORKERS=0 is outside 1..64 processes"),
    ],
)
def test_a_setting_outside_its_range_is_refused_in_one_line(monkeypatch, env, line):
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    with pytest.raises(UserFacingError) as caught:
        ServingConfig.from_env()
    assert line in str(caught.value).splitlines()


def test_every_bad_value_gets_its_own_line(monkeypatch):
    monkeypatch.setenv("PLANTS_PREDICTION_LOG_FLUSH_SECONDS", "0")
    monkeypatch.setenv("PLANTS_MAX_BATCH_FILES", "100000")
    with pytest.raises(UserFacingError) as caught:
        ServingConfig.from_env()
    lines = str(caught.value).splitlines()
    assert lines[0] == "bad serving settings:" and len(lines) == 3


def test_polling_off_and_the_defaults_are_accepted(monkeypatch):
    monkeypatch.setenv("PLANTS_MODEL_POLL_SECONDS", "0")
    assert ServingConfig.from_env().poll_seconds == 0
    monkeypatch.delenv("PLANTS_MODEL_POLL_SECONDS")
    assert ServingConfig.from_env().problems() == []


def _cgroup(tmp_path, membership: str, files: dict[str, str]):
    """A cgroup filesystem of our own: (mount root, /proc/self/cgroup stand-in)."""
    root = tmp_path / "cgroup"
    for rel, text in files.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_text(text + "\n")
    proc = tmp_path / "proc-self-cgroup"
    proc.write_text(membership + "\n")
    return root, proc


def test_usable_cores_are_capped_by_a_cgroup_v2_cpu_limit(tmp_path):
    from plants_mlops.serving.config import cgroup_cpu_limit, usable_cores

    # A pod limited to 500m under a parent without a limit: the tightest level wins; a
    # file that does not parse counts as no limit, it does not stop the server.
    root, proc = _cgroup(
        tmp_path,
        "0::/kubepods/pod1/api",
        {
            "cpu.max": "garbled text",
            "kubepods/cpu.max": "max 100000",
            "kubepods/pod1/cpu.max": "50000 100000",
            "kubepods/pod1/api/cpu.max": "max 100000",
        },
    )
    assert cgroup_cpu_limit(root, proc) == 0.5
    assert usable_cores(root, proc) == 1  # rounded up to one, whatever the affinity shows
    # No quota anywhere: the affinity alone.
    root, proc = _cgroup(tmp_path / "open", "0::/", {"cpu.max": "max 100000"})
    assert cgroup_cpu_limit(root, proc) is None
    assert usable_cores(root, proc) == len(os.sched_getaffinity(0))


def test_usable_cores_read_a_cgroup_v1_cfs_quota(tmp_path):
    from plants_mlops.serving.config import cgroup_cpu_limit, usable_cores

    # Docker on cgroup v1: the host's path in /proc/self/cgroup, the container's own
    # cgroup mounted at the controller's root.
    root, proc = _cgroup(
        tmp_path,
        "4:memory:/docker/abc\n2:cpu,cpuacct:/docker/abc",
        {"cpu,cpuacct/cpu.cfs_quota_us": "150000", "cpu,cpuacct/cpu.cfs_period_us": "100000"},
    )
    assert cgroup_cpu_limit(root, proc) == 1.5
    assert usable_cores(root, proc) == min(2, len(os.sched_getaffinity(0)))
    root, proc = _cgroup(
        tmp_path / "open",
        "2:cpu,cpuacct:/",
        {"cpu,cpuacct/cpu.cfs_quota_us": "-1", "cpu,cpuacct/cpu.cfs_period_us": "100000"},
    )
    assert cgroup_cpu_limit(root, proc) is None


def test_serve_runs_one_worker_per_usable_core_unless_told(monkeypatch):
    from plants_mlops.serving.config import default_workers, resolve_workers, usable_cores

    assert default_workers() == min(64, usable_cores())
    monkeypatch.delenv("PLANTS_SERVE_WORKERS", raising=False)
    config = ServingConfig.from_env()
    assert config.workers == default_workers()
    # One prediction at a time per core, across the workers.
    assert config.predict_threads == max(1, usable_cores() // config.workers)
    monkeypatch.setenv("PLANTS_SERVE_WORKERS", "auto")
    assert ServingConfig.from_env().workers == default_workers()
    monkeypatch.setenv("PLANTS_SERVE_WORKERS", "1")
    assert ServingConfig.from_env().workers == 1
    assert ServingConfig.from_env().predict_threads == usable_cores()
    assert resolve_workers("3", "--workers") == 3
    with pytest.raises(UserFacingError, match="--workers='two' is not a number of processes"):
        resolve_workers("two", "--workers")


def test_responses_carry_security_headers_and_the_page_a_csp(tmp_path):
    from fastapi.testclient import TestClient

    from plants_mlops.serving.app import create_app

    config = ServingConfig(
        tracking_uri=f"sqlite:///{tmp_path / 'mlflow.db'}",
        prediction_log="off",
        poll_seconds=0,
        startup_retry_seconds=3600,
    )
    with TestClient(create_app(config)) as client:
        page, health = client.get("/"), client.get("/health")
    for response in (page, health):
        assert response.headers["x-content-type-options"] == "nosniff"
        assert response.headers["x-frame-options"] == "DENY"
        assert response.headers["referrer-policy"] == "no-referrer"
    csp = page.headers["content-security-policy"]
    assert "default-src 'self'" in csp and "frame-ancestors 'none'" in csp
    assert "content-security-policy" not in health.headers


def _client(tmp_path, **settings):
    from fastapi.testclient import TestClient

    from plants_mlops.serving.app import create_app

    config = ServingConfig(
        tracking_uri=f"sqlite:///{tmp_path / 'mlflow.db'}",
        prediction_log="off",
        poll_seconds=0,
        startup_retry_seconds=3600,
        **settings,
    )
    return TestClient(create_app(config))


BOUNDARY = "plantsboundary"


def _part(name: str = "file", filename: str = "big.jpg") -> bytes:
    return (
        f'--{BOUNDARY}\r\nContent-Disposition: form-data; name="{name}"; '
        f'filename="{filename}"\r\nContent-Type: image/jpeg\r\n\r\n'
    ).encode()


MULTIPART = {"content-type": f"multipart/form-data; boundary={BOUNDARY}"}


def test_a_chunked_upload_over_the_limit_gets_413_too_large(tmp_path):
    boundary = BOUNDARY

    def chunks():  # no Content-Length: the limit can only be enforced while reading
        yield (
            f'--{boundary}\r\nContent-Disposition: form-data; name="file"; '
            'filename="big.jpg"\r\nContent-Type: image/jpeg\r\n\r\n'
        ).encode()
        for _ in range(40):
            yield b"\xff" * 8192
        yield f"\r\n--{boundary}--\r\n".encode()

    with _client(tmp_path, max_upload_bytes=1024) as client:
        response = client.post("/predict", content=chunks(), headers=MULTIPART)
    assert response.status_code == 413
    assert response.json()["error"] == "too_large"
    assert response.headers["x-content-type-options"] == "nosniff"


def test_a_batch_is_bounded_in_total_bytes_not_only_per_file(tmp_path):
    files = [("files", (f"{i}.jpg", b"\xff" * 60_000, "image/jpeg")) for i in range(4)]
    with _client(tmp_path, max_batch_bytes=128 * 1024) as client:
        response = client.post("/predict/batch", files=files)
    assert response.status_code == 413 and response.json()["error"] == "too_large"


@pytest.mark.parametrize(
    "headers",
    [
        {f"x-flood-{i}": "1" for i in range(200)},
        {"x-huge": "a" * 100_000},
    ],
    ids=["200 headers", "100 kB header"],
)
def test_header_floods_get_431(tmp_path, headers):
    with _client(tmp_path) as client:
        response = client.get("/health", headers=headers)
    assert response.status_code == 431 and response.json()["error"] == "headers_too_large"


def test_a_client_that_stops_sending_the_body_gets_408(tmp_path):
    """The app called as the ASGI server calls it, with a client that sends the first part
    of a multipart body and then nothing (an HTTP client in process would buffer it)."""
    import asyncio
    import json

    from plants_mlops.serving.app import create_app

    config = ServingConfig(
        tracking_uri=f"sqlite:///{tmp_path / 'mlflow.db'}",
        prediction_log="off",
        body_timeout_seconds=1.0,
    )
    app = create_app(config)
    parts = [_part(), None]  # then silence

    async def receive():
        chunk = parts.pop(0) if parts else None
        if chunk is None:
            await asyncio.sleep(30)
        return {"type": "http.request", "body": chunk, "more_body": True}

    sent: list[dict] = []

    async def send(message):
        sent.append(message)

    scope = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": "POST",
        "scheme": "http",
        "path": "/predict",
        "raw_path": b"/predict",
        "query_string": b"",
        "root_path": "",
        "headers": [(b"content-type", MULTIPART["content-type"].encode())],
        "client": ("127.0.0.1", 50000),
        "server": ("127.0.0.1", 8000),
    }
    asyncio.run(asyncio.wait_for(app(scope, receive, send), 10))
    start = next(m for m in sent if m["type"] == "http.response.start")
    body = b"".join(m.get("body", b"") for m in sent if m["type"] == "http.response.body")
    assert start["status"] == 408 and json.loads(body)["error"] == "request_timeout"


def test_concurrent_decodes_stay_within_the_pixel_budget():
    import io
    import threading

    from PIL import Image

    from plants_mlops import imaging

    buf = io.BytesIO()
    Image.new("RGBA", (3000, 3000), (10, 200, 30, 128)).save(buf, "PNG")
    data = buf.getvalue()
    budget = imaging.DecodeBudget(10_000_000)  # room for one 9 Mpx image at a time
    peak = {"pixels": 0}
    done = threading.Event()

    def watch():
        while not done.is_set():
            peak["pixels"] = max(peak["pixels"], budget.total - budget.free)

    watcher = threading.Thread(target=watch)
    watcher.start()
    threads = [
        threading.Thread(target=imaging.decode_image, args=(data,), kwargs={"budget": budget})
        for _ in range(4)
    ]
    [t.start() for t in threads]
    [t.join() for t in threads]
    done.set()
    watcher.join()
    assert peak["pixels"] == 9_000_000  # one at a time, never two
    assert budget.free == budget.total


def test_a_budget_with_no_room_in_time_answers_busy():
    import io

    import pytest
    from PIL import Image

    from plants_mlops import imaging

    buf = io.BytesIO()
    Image.new("RGB", (100, 100)).save(buf, "PNG")
    budget = imaging.DecodeBudget(20_000, wait_seconds=0.2)
    with budget.reserve(20_000), pytest.raises(imaging.ImageDecodeError) as caught:
        imaging.decode_image(buf.getvalue(), budget=budget)
    assert caught.value.reason == "busy"
    # the API's answer: 503 busy with a Retry-After, like a refusal over the bytes in flight
    from plants_mlops.serving.errors import ApiError

    answer = ApiError.from_decode(caught.value)
    assert (answer.status, answer.code, answer.headers) == (503, "busy", {"Retry-After": "1"})


def test_alpha_is_composited_on_white_without_full_size_copies():
    from PIL import Image

    from plants_mlops import imaging

    half_red = Image.new("RGBA", (4, 4), (255, 0, 0, 128))
    rgb = imaging.to_rgb(half_red)
    assert rgb.mode == "RGB"
    r, g, b = rgb.getpixel((0, 0))
    assert r == 255 and abs(g - 127) <= 1 and abs(b - 127) <= 1


@pytest.mark.parametrize("size", [(700, 300), (300, 701), (517, 517), (160, 160), (90, 120)])
@pytest.mark.parametrize("mode", ["RGBA", "LA", "P+transparency", "RGB", "L", "CMYK", "I;16", "F"])
def test_fit_rgb_is_square_resize_of_to_rgb_pixel_for_pixel(mode, size):
    """The API's lean path (alpha composited in place, resampled from RGBA) gives the
    model the very pixels of the full-size RGB path."""
    import numpy as np
    from PIL import Image

    from plants_mlops import imaging

    rng = np.random.default_rng(sum(size))
    noise = rng.integers(0, 256, (size[1], size[0], 4), dtype=np.uint8)
    noise[: size[1] // 3, :, 3] = 0  # fully transparent, opaque and half-way rows
    noise[size[1] // 3 : size[1] // 2, :, 3] = 255
    img = Image.fromarray(noise, "RGBA")
    if mode == "P+transparency":
        img = img.convert("RGB").quantize(64)
        img.info["transparency"] = 5
    elif mode == "I;16":
        img = Image.fromarray(noise[..., 0].astype(np.uint16) * 257).convert("I;16")
    elif mode == "F":
        img = Image.fromarray(noise[..., 0].astype(np.float32) / 255, "F")
    elif mode != "RGBA":
        img = img.convert(mode)
    expected = imaging.square_resize(imaging.to_rgb(img.copy()), 160)
    got = imaging.fit_rgb(img.copy(), 160)
    assert got.mode == "RGB" and got.size == (160, 160)
    assert np.array_equal(np.asarray(got), np.asarray(expected))


def test_a_decode_is_charged_the_bytes_per_pixel_it_really_holds():
    """The budget's unit is a pixel of 4 bytes: a progressive JPEG (its coefficients held
    for the whole image) or a 16-bit or float greyscale image is charged more than a
    baseline JPEG of as many pixels, an 8-bit grey PNG (resampled as grey) less."""
    import io

    import numpy as np
    from PIL import Image

    from plants_mlops import imaging

    def encoded(img, fmt: str, **kw) -> bytes:
        buf = io.BytesIO()
        img.save(buf, format=fmt, **kw)
        return buf.getvalue()

    size, pixels = (400, 300), 400 * 300
    rgb = Image.new("RGB", size, (40, 90, 20))
    baseline = imaging.decode_cost(encoded(rgb, "JPEG"))
    assert baseline == pixels
    assert imaging.decode_cost(encoded(rgb, "PNG")) == pixels
    progressive = imaging.decode_cost(encoded(rgb, "JPEG", progressive=True))
    full_chroma = imaging.decode_cost(encoded(rgb, "JPEG", progressive=True, subsampling=0))
    assert baseline < progressive < full_chroma
    grey16 = Image.fromarray(np.full(size[::-1], 30000, np.uint16)).convert("I;16")
    floats = Image.fromarray(np.full(size[::-1], 0.5, np.float32), "F")
    assert imaging.decode_cost(encoded(grey16, "PNG")) > baseline
    assert imaging.decode_cost(encoded(floats, "TIFF")) > baseline
    assert imaging.decode_cost(encoded(rgb.convert("L"), "PNG")) < baseline
    assert imaging.decode_cost(b"not an image") == 0
    # the budget holds the charged cost while the image decodes
    data = encoded(grey16, "PNG")
    budget = imaging.DecodeBudget(10_000_000)
    with imaging.decoded_within(data, budget, fit=160):
        assert budget.total - budget.free == imaging.decode_cost(data) > pixels


def test_header_pixels_reads_the_size_every_decoder_would_see():
    """The decode budget reserves an upload's pixels from its header: JPEG and PNG headers are read directly, others through Pillow; bytes that are no image
    give 0 (decode_image then names the problem)."""
    import io

    from PIL import Image
    from support import images

    from plants_mlops import imaging

    def encoded(fmt: str, size=(123, 45), **kw) -> bytes:
        buf = io.BytesIO()
        Image.new("RGB", size, (40, 90, 20)).save(buf, format=fmt, **kw)
        return buf.getvalue()

    exif = Image.Exif()
    exif[0x0112] = 6  # rotated: the header's size is still the stored one
    cases = {
        "jpeg": encoded("JPEG"),
        "progressive": encoded("JPEG", size=(300, 200), progressive=True),
        "exif": encoded("JPEG", size=(301, 199), exif=exif),
        "png": encoded("PNG"),
        "webp": encoded("WEBP"),
        "gif": encoded("GIF"),
        "sample": images.sample_jpeg(7),
        "greyscale": images.greyscale_jpeg(),
        "cmyk": images.cmyk_jpeg(),
        "bomb": images.decompression_bomb_png(),
    }
    for name, data in cases.items():
        width, height = Image.open(io.BytesIO(data)).size
        assert imaging.header_pixels(data) == width * height, name
    assert imaging.header_pixels(images.truncated_jpeg()) > 0  # its header is whole
    # Two start-of-frame segments: Pillow takes the last one, and so must the budget's check
    # (a small first one must not let a large image pass for a small one).
    small = encoded("JPEG", size=(16, 8))
    at = small.index(b"\xff\xc0")
    sof = bytearray(small[at : at + 2 + int.from_bytes(small[at + 2 : at + 4], "big")])
    sof[5:9] = (3000).to_bytes(2, "big") + (4000).to_bytes(2, "big")
    twice = small[: at + len(sof)] + bytes(sof) + small[at + len(sof) :]
    assert Image.open(io.BytesIO(twice)).size == (4000, 3000)
    assert imaging.header_pixels(twice) == 4000 * 3000
    for junk in (b"", b"\xff\xd8", b"\xff\xd8\x00\x00garbage" * 3, b"<html></html>", b"\x89PNG"):
        assert imaging.header_pixels(junk) == 0, junk


def test_without_a_champion_the_api_says_once_how_to_train_one(tmp_path, caplog):
    """A fresh clone: no model registered. One warning naming the commands that make one,
    not an error every few seconds."""
    import logging
    import time

    from plants_mlops.serving.model import ModelManager

    config = ServingConfig(
        tracking_uri=f"sqlite:///{tmp_path / 'mlflow.db'}",
        prediction_log="off",
        startup_retry_seconds=0.05,
    )
    manager = ModelManager(config)
    caplog.set_level(logging.DEBUG, logger="plants_mlops.serving")

    def retries() -> int:
        return sum("retrying" in r.getMessage() for r in caplog.records)

    manager.start()
    deadline = time.monotonic() + 60
    while retries() < 3 and time.monotonic() < deadline:
        time.sleep(0.05)
    manager.stop()
    assert retries() >= 3
    said = [r for r in caplog.records if r.levelno >= logging.WARNING]
    assert len(said) == 1, [r.getMessage() for r in said]
    message = said[0].getMessage()
    assert "`make demo`" in message
    assert "`kedro run --pipelines training,evaluation,behaviour,registry`" in message
    assert manager.current is None and manager.last_error is not None


def test_a_middleware_added_to_the_app_applies_to_predict_like_every_route(tmp_path):
    """POST /predict is an ordinary route under the app's middleware stack: CORS added with
    app.add_middleware answers its preflight and marks its answers (here the 503 of a server
    with no model yet) as it does /ready's."""
    from fastapi.middleware.cors import CORSMiddleware

    client = _client(tmp_path)
    client.app.add_middleware(
        CORSMiddleware, allow_origins=["https://plants.example"], allow_methods=["GET", "POST"]
    )
    origin = {"Origin": "https://plants.example"}
    with client:
        answers = [
            client.post("/predict", files={"file": ("a.jpg", b"x", "image/jpeg")}, headers=origin),
            client.get("/ready", headers=origin),
            client.options("/predict", headers={**origin, "Access-Control-Request-Method": "POST"}),
        ]
    assert [r.status_code for r in answers] == [503, 503, 200]
    for r in answers:
        assert r.headers["access-control-allow-origin"] == "https://plants.example"


def _encoded(img, fmt: str) -> bytes:
    import io

    buf = io.BytesIO()
    img.save(buf, format=fmt)
    return buf.getvalue()


@pytest.mark.parametrize("fmt", ["PNG", "TIFF"])
def test_a_16_bit_greyscale_image_is_the_same_picture_as_its_8_bit_copy(fmt):
    """Pillow opens a 16-bit greyscale PNG or TIFF as mode I;16 and its convert("RGB")
    clips every value over 255 to white: the model saw a blank square."""
    import io

    import numpy as np
    from PIL import Image

    from plants_mlops import imaging

    rng = np.random.default_rng(7)
    grey8 = rng.integers(0, 256, (120, 90), dtype=np.uint8)
    grey16 = Image.fromarray(grey8.astype(np.uint16) * 257)
    assert Image.open(io.BytesIO(_encoded(grey16, fmt))).mode == "I;16"
    got = imaging.decode_image(_encoded(grey16, fmt), fit=64).image
    expected = imaging.decode_image(_encoded(Image.fromarray(grey8), fmt), fit=64).image
    assert got.mode == "RGB"
    assert np.array_equal(np.asarray(got), np.asarray(expected))


def test_float_pixels_are_read_in_0_to_1_and_refused_outside_it():
    import numpy as np
    from PIL import Image

    from plants_mlops import imaging

    grey8 = np.random.default_rng(8).integers(0, 256, (50, 70), dtype=np.uint8)
    unit = Image.fromarray(grey8.astype(np.float32) / 255)
    got = imaging.decode_image(_encoded(unit, "TIFF")).image
    assert np.array_equal(np.asarray(got)[..., 0], grey8)
    wide = Image.fromarray(grey8.astype(np.float32) * 100)
    with pytest.raises(imaging.ImageDecodeError) as caught:
        imaging.decode_image(_encoded(wide, "TIFF"))
    assert caught.value.reason == "unsupported_image"
    assert "float" in caught.value.detail and "8 or 16 bits" in caught.value.detail


def test_the_pixel_limit_is_the_callers_above_and_below_pillows_own():
    """``max_pixels`` decides, in the project's words: an image of 49 Mpx passes a limit of
    100 M (Pillow's bomb check refused it at 40 M) and a 400 Mpx bomb is refused naming
    the limit set (Pillow's message named its own 80 M)."""
    from PIL import Image

    from plants_mlops import imaging

    big = _encoded(Image.new("L", (7000, 7000)), "PNG")
    assert imaging.decode_image(big, max_pixels=100_000_000, fit=64).original_size == (7000, 7000)
    with pytest.raises(imaging.ImageDecodeError) as caught:
        imaging.decode_image(big, max_pixels=30_000_000)
    assert caught.value.reason == "too_large"
    assert caught.value.detail == "7000x7000 pixels exceeds the limit of 30000000"
    bomb = _encoded(Image.new("1", (20_000, 20_000)), "PNG")
    with pytest.raises(imaging.ImageDecodeError) as caught:
        imaging.decode_image(bomb, max_pixels=50_000_000)
    assert caught.value.reason == "too_large" and "50000000" in caught.value.detail
    assert "decompression bomb DOS" not in caught.value.detail


def _send_upload_start(url: str, body: bytes, *, chunked: bool = False, sent: int = 0):
    """A socket that sent /predict's request headers (with the body's Content-Length, or
    chunked) and the first ``sent`` bytes of the body, and is left open."""
    import socket
    from urllib.parse import urlsplit

    where = urlsplit(url)
    sock = socket.create_connection((where.hostname, where.port), timeout=30)
    framing = "Transfer-Encoding: chunked" if chunked else f"Content-Length: {len(body)}"
    head = (
        f"POST /predict HTTP/1.1\r\nHost: {where.netloc}\r\n"
        f"Content-Type: {MULTIPART['content-type']}\r\n{framing}\r\n\r\n"
    )
    part = body[:sent]
    if chunked:
        part = f"{len(part):x}\r\n".encode() + part + b"\r\n"
    sock.sendall(head.encode() + part)
    return sock


def _response_of(sock) -> tuple[int, bytes]:
    """(status, the whole response) of a connection the server answers and closes, or
    answers with a Content-Length."""
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(65536)
        if not chunk:
            break
        data += chunk
    head, _, rest = data.partition(b"\r\n\r\n")
    length = next(
        (
            int(line.split(b":")[1])
            for line in head.split(b"\r\n")
            if line.lower().startswith(b"content-length:")
        ),
        0,
    )
    while len(rest) < length:
        chunk = sock.recv(65536)
        if not chunk:
            break
        rest += chunk
    sock.close()
    return int(head.split(b" ")[1]), head + b"\r\n\r\n" + rest


def test_request_bodies_in_flight_are_bounded_per_worker(tmp_path, mlflow_tracking_uri):
    """Uploads held open count against PLANTS_MAX_INFLIGHT_BYTES from their Content-Length
    (a chunked one as its bytes arrive): the ones over it get 503 busy with Retry-After at
    once, and once the held ones finish a new upload is served."""
    import time

    import httpx
    from support import images
    from support.champion import register_champion, unique_model_name
    from support.serving import running_api

    name = unique_model_name()
    register_champion(mlflow_tracking_uri, name=name)
    jpeg = images.sample_jpeg(0)
    body = _part() + jpeg + f"\r\n--{BOUNDARY}--\r\n".encode()
    limit = len(body) * 5 // 2  # room for two uploads, not three
    env = {"PLANTS_MAX_INFLIGHT_BYTES": str(limit), "PLANTS_PREDICTION_LOG": "off"}
    with running_api(tmp_path, tracking_uri=mlflow_tracking_uri, model_name=name, env=env) as api:
        held = [_send_upload_start(api.url, body, sent=100) for _ in range(2)]
        time.sleep(1.0)  # the server has both requests' headers
        t0 = time.monotonic()
        extra = httpx.post(
            f"{api.url}/predict", files={"file": ("x.jpg", jpeg, "image/jpeg")}, timeout=30
        )
        assert extra.status_code == 503, extra.text
        assert extra.json()["error"] == "busy" and extra.headers["retry-after"] == "1"
        assert time.monotonic() - t0 < 5
        chunked = _send_upload_start(api.url, body, chunked=True, sent=len(body) - 10)
        status, response = _response_of(chunked)
        assert status == 503 and b'"busy"' in response and b"retry-after: 1" in response.lower()
        for sock in held:  # the held uploads finish and are served
            sock.sendall(body[100:])
        assert [_response_of(sock)[0] for sock in held] == [200, 200]
        again = httpx.post(
            f"{api.url}/predict", files={"file": ("x.jpg", jpeg, "image/jpeg")}, timeout=30
        )
        assert again.status_code == 200, again.text
