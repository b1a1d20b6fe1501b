"""Prediction API benchmark: cold start to ready, latency at concurrency 1, throughput at
concurrency 8, over HTTP on 127.0.0.1 with real JPEG uploads (decode included), each
figure also as a ratio to the in-process floor (decode + preprocess + model, no HTTP).

By default it trains nothing: it builds the product architecture (``training.architecture``
at ``training.image_size`` after the formatting size's square resize, with its bundled
ImageNet weights and an untrained head, so the compute is exactly the real champion's) in
the precision training would serve here (``--precision auto``: static int8 when it is
faster, as ``training.serving_precision`` decides; or ``fp32`` / ``int8``),
registers it in a throw-away local MLflow registry and serves it. Point it at
an existing champion with ``--tracking-uri URI [--model-uri models:/plants-classifier@champion]``.

The floor is measured in this process before the server starts and again after it stops,
with the same ONNX Runtime session options the server uses: latency of one image at batch
1 on one thread, and the best images/s of one thread per core each decoding, preprocessing
and predicting batches of 1, 2, 4, 8 or 16 images (the mean of the two runs per batch
size: the host's speed drifts while other tenants load the shared cores).

The load generator is a raw asyncio HTTP/1.1 client sending pre-encoded multipart requests
over keep-alive connections, so that the client costs little of the 2 shared cores.

    .venv/bin/python benchmarks/bench_serving.py [--requests 400] [--seconds 10]
"""

from __future__ import annotations

import argparse
import asyncio
import math
import os
import statistics
import sys
import tempfile
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import numpy as np
from memory import process_peak_rss_mb  # benchmarks/memory.py

ROOT = Path(__file__).resolve().parents[1]
SAMPLES = ROOT / "samples" / "plants"
sys.path.insert(0, str(ROOT / "tests"))

from product_model import start_server  # noqa: E402  (benchmarks/product_model.py)

# the test suite's helpers; bench_decode_memory.py imports them from here
from support.images import enlarge_jpeg, mosaic_jpeg  # noqa: E402
from support.servers import VENV_BIN, free_port  # noqa: E402, F401

from plants_mlops.serving.config import resolve_workers, usable_cores  # noqa: E402

# Settings a benchmark run may vary (docs/serving.md); printed with the figures.
SERVER_SETTINGS = ("PLANTS_PREDICT_THREADS", "PLANTS_SERVE_WORKERS", "PLANTS_PREDICTION_LOG")
RESULTS = ROOT / "benchmarks" / "results" / "serving.jsonl"


def serving_precision(onnx: bytes, meta, precision: str) -> tuple[bytes, object, str]:
    """The model in the precision the training pipeline would serve, by its own rule
    (``quantize.choose_precision`` with ``training.serving_precision``): ``int8`` (static
    QDQ, calibrated on sample images), ``fp32``, or ``auto``: int8 when it is
    ``min_speedup`` times faster at batch 1 here. The F1 limit is lifted: this model's
    head is untrained, so its F1 says nothing."""
    from product_model import stage_defaults  # benchmarks/product_model.py

    from plants_mlops import imaging
    from plants_mlops.model import quantize
    from plants_mlops.params import ServingPrecision

    policy = ServingPrecision.model_validate(
        {
            **stage_defaults("training")["serving_precision"],
            "mode": precision,
            "max_f1_drop": math.inf,
        }
    )
    calib = sorted(SAMPLES.glob("*/*.jpg"))[1::6]  # not the request images ([::4])
    images = [imaging.decode_image(p.read_bytes()).image for p in calib]
    labels = np.array([meta.labels.index(p.parent.name) for p in calib])
    model, record = quantize.choose_precision(onnx, meta, images, images, labels, policy)
    chosen = record["precision"]
    why = f"auto: {record['reason']}" if precision == "auto" else "asked"
    return model, meta.model_copy(update={"precision": chosen}), f"{chosen} ({why})"


def absolute_sqlite(uri: str | None) -> str | None:
    """A relative SQLite tracking URI made absolute: the server runs in a temporary folder,
    where ``sqlite:///data/mlflow.db`` would name an empty new store."""
    if uri and uri.startswith("sqlite:///") and not uri.startswith("sqlite:////"):
        return f"sqlite:///{Path(uri.removeprefix('sqlite:///')).resolve()}"
    return uri


def register_benchmark_model(
    tracking_uri: str, architecture: str, image_size: int, resize_size: int, precision: str
) -> str:
    """Build, export (ONNX contract), quantize if asked and register a model; return its
    models:/ URI."""
    from product_model import untrained_product_model  # benchmarks/product_model.py

    from plants_mlops.model import artifact, registry, tracking

    name = f"bench-{architecture}-{uuid.uuid4().hex[:6]}"
    cl = tracking.client(tracking_uri)
    with tracking.open_run(cl, "bench-serving") as run:
        onnx, meta = untrained_product_model(architecture, image_size, resize_size, run.run_id)
        onnx, meta, chosen = serving_precision(onnx, meta, precision)
        print(f"serving precision: {chosen}")
        logged = artifact.log_serving_model(cl, run.run_id, onnx, meta)
    version = registry.register_version(cl, logged, {"verdict": "benchmark"}, name)
    # Not gated (an untrained head): champion only through the recorded override, the one
    # way the API serves an ungated champion.
    registry.move_champion(
        cl, version, action="promote", reason="benchmark model", name=name, force=True
    )
    return f"models:/{name}@champion"


def _floor_images(model, blobs: list[bytes], batch: int, offset: int) -> int:
    """Decode, preprocess and predict ``batch`` images (the API's code path, no HTTP)."""
    from plants_mlops import imaging

    xs = [
        model.preprocess(imaging.decode_image(blobs[(offset + i) % len(blobs)]).image)[0]
        for i in range(batch)
    ]
    model.run(np.stack(xs))
    return batch


def measure_floor(
    tracking_uri: str, model_uri: str, blobs: list[bytes], threads: int, seconds: float
) -> dict:
    """The in-process floor: batch-1 latency on one thread, and the best throughput of one
    thread per core over batch sizes (each thread its own batches on the one session)."""
    from plants_mlops.model import artifact, tracking

    model = artifact.load_registered(tracking.client(tracking_uri), model_uri, threads=threads)
    for i in range(30):  # warm-up
        _floor_images(model, blobs, 1, i)
    lat = []
    for i in range(200):
        t0 = time.perf_counter()
        _floor_images(model, blobs, 1, i)
        lat.append(time.perf_counter() - t0)
    cores = os.cpu_count() or 1
    rates, cpu_ms = {}, {}
    for batch in (1, 2, 4, 8, 16):
        counts = [0] * cores
        cpu0 = time.process_time()
        until = time.perf_counter() + seconds

        def loop(slot: int, batch: int = batch, until: float = until, counts=counts) -> None:
            i = slot * 997
            while time.perf_counter() < until:
                counts[slot] += _floor_images(model, blobs, batch, i)
                i += batch

        started = time.perf_counter()
        with ThreadPoolExecutor(cores) as pool:
            list(pool.map(loop, range(cores)))
        rates[batch] = sum(counts) / (time.perf_counter() - started)
        cpu_ms[batch] = (time.process_time() - cpu0) * 1000 / max(1, sum(counts))
    best = max(rates, key=rates.get)
    return {"lat": lat, "cores": cores, "rates": rates, "best": best, "cpu_ms": cpu_ms}


def bracket_floors(before: dict, after: dict) -> dict:
    """One floor from the floors measured before and after the HTTP load: the host's speed
    drifts (other tenants on shared cores), so the HTTP figures are compared with the mean
    of the two, batch size by batch size, and the best batch is the best of those means."""
    rates = {b: (before["rates"][b] + after["rates"][b]) / 2 for b in before["rates"]}
    cpu_ms = {b: (before["cpu_ms"][b] + after["cpu_ms"][b]) / 2 for b in before["cpu_ms"]}
    best = max(rates, key=rates.get)
    return {
        "lat": before["lat"] + after["lat"],
        "cores": before["cores"],
        "rates": rates,
        "best": best,
        "cpu_ms": cpu_ms,
        "bracket": (before["rates"][before["best"]], after["rates"][after["best"]]),
    }


def process_tree(pid: int) -> list[int]:
    """``pid`` and its descendants (uvicorn's supervisor and its workers)."""
    parents = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            parents[int(stat.parent.name)] = int(stat.read_text().rsplit(")", 1)[1].split()[1])
        except (OSError, ValueError):
            continue
    tree, todo = [], [pid]
    while todo:
        p = todo.pop()
        tree.append(p)
        todo += [c for c, ppid in parents.items() if ppid == p]
    return tree


def cpu_ticks(stat: str) -> int:
    """utime + stime, in clock ticks, of a /proc/<pid>/stat or /proc/<pid>/task/<tid>/stat."""
    fields = Path(stat).read_text().rsplit(")", 1)[1].split()
    return int(fields[11]) + int(fields[12])


def tree_cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of ``pid`` and its descendants (uvicorn's workers), from
    /proc: a cost per request that other sessions' load on the shared cores barely moves."""
    total = 0
    for p in process_tree(pid):
        try:
            total += cpu_ticks(f"/proc/{p}/stat")
        except OSError:  # ended meanwhile
            continue
    return total / os.sysconf("SC_CLK_TCK")


def multipart_request(port: int, data: bytes, filename: str) -> bytes:
    boundary = uuid.uuid4().hex
    body = (
        f'--{boundary}\r\nContent-Disposition: form-data; name="file"; '
        f'filename="{filename}"\r\nContent-Type: image/jpeg\r\n\r\n'
    ).encode()
    body += data + f"\r\n--{boundary}--\r\n".encode()
    head = (
        f"POST /predict HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n"
        f"Content-Type: multipart/form-data; boundary={boundary}\r\n"
        f"Content-Length: {len(body)}\r\n\r\n"
    ).encode()
    return head + body


async def _read_response(reader: asyncio.StreamReader) -> int:
    head = await reader.readuntil(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split()[1])
    length = 0
    for line in lines[1:]:
        if line.lower().startswith("content-length:"):
            length = int(line.split(":", 1)[1])
    await reader.readexactly(length)
    return status


async def _worker(
    port: int,
    requests: list[bytes],
    count: int | None,
    until: float | None,
    latencies: list[float],
    failures: list[int],
    offset: int,
) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    i = offset
    try:
        while (count is None or i - offset < count) and (
            until is None or time.perf_counter() < until
        ):
            req = requests[i % len(requests)]
            t0 = time.perf_counter()
            writer.write(req)
            await writer.drain()
            status = await _read_response(reader)
            latencies.append(time.perf_counter() - t0)
            if status != 200:
                failures.append(status)
            i += 1
    finally:
        writer.close()


async def run_load(
    port: int,
    requests: list[bytes],
    concurrency: int,
    *,
    count: int | None = None,
    seconds: float | None = None,
):
    latencies: list[float] = []
    failures: list[int] = []
    until = time.perf_counter() + seconds if seconds else None
    per_worker = None if count is None else count // concurrency
    started = time.perf_counter()
    await asyncio.gather(
        *[
            _worker(port, requests, per_worker, until, latencies, failures, w * 97)
            for w in range(concurrency)
        ]
    )
    return latencies, failures, time.perf_counter() - started


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(q / 100 * (len(ordered) - 1))))] * 1000


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--tracking-uri", help="use this registry instead of a throw-away one")
    ap.add_argument("--model-uri", default=None)
    from product_model import product_defaults  # benchmarks/product_model.py

    product = product_defaults()  # parameters_training.yml / parameters_formatting.yml
    ap.add_argument("--architecture", default=product["architecture"])
    ap.add_argument("--image-size", type=int, default=product["image_size"])
    ap.add_argument("--resize-size", type=int, default=product["resize_size"])
    ap.add_argument(
        "--precision",
        choices=["auto", "fp32", "int8"],
        default="auto",
        help="of the built model (auto: as training.serving_precision would choose here)",
    )
    ap.add_argument("--requests", type=int, default=400, help="requests at concurrency 1")
    ap.add_argument("--seconds", type=float, default=10.0, help="duration at concurrency 8")
    ap.add_argument("--concurrency", type=int, default=8)
    ap.add_argument("--ort-threads", default=os.environ.get("PLANTS_ORT_THREADS", "1"))
    ap.add_argument("--floor-seconds", type=float, default=3.0, help="per batch size")
    ap.add_argument("--no-floor", action="store_true", help="skip the in-process floor")
    ap.add_argument(
        "--photo-size",
        metavar="WxH",
        help="send every sample enlarged to this size, as a phone camera's JPEG (4032x3024)",
    )
    ap.add_argument(
        "--mosaic",
        action="store_true",
        help="with --photo-size: photos tiled from the samples (a real photo's fine detail)",
    )
    ap.add_argument("--record", action="store_true", help=f"append the figures to {RESULTS}")
    args = ap.parse_args()
    load_before = os.getloadavg()

    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    work = Path(tempfile.mkdtemp(prefix="bench-serving-"))
    tracking_uri = absolute_sqlite(args.tracking_uri) or f"sqlite:///{work / 'mlflow.db'}"
    model_uri = args.model_uri
    if model_uri is None:
        if args.tracking_uri:
            model_uri = "models:/plants-classifier@champion"
        else:
            print(f"registering a {args.architecture}@{args.image_size} model in {work} ...")
            model_uri = register_benchmark_model(
                tracking_uri, args.architecture, args.image_size, args.resize_size, args.precision
            )

    files = sorted(SAMPLES.glob("*/*.jpg"))[::4]
    blobs = [p.read_bytes() for p in files]
    if args.photo_size and args.mosaic:
        blobs = [mosaic_jpeg(i, args.photo_size) for i in range(len(blobs))]
    elif args.photo_size:
        blobs = [enlarge_jpeg(b, args.photo_size) for b in blobs]
    floor = None
    if not args.no_floor:
        print("measuring the in-process floor ...")
        floor = measure_floor(
            tracking_uri, model_uri, blobs, int(args.ort_threads), args.floor_seconds
        )

    t0 = time.perf_counter()
    try:
        proc, port = start_server(
            tracking_uri, model_uri, work, {"PLANTS_ORT_THREADS": str(args.ort_threads)}
        )
    except RuntimeError as e:  # the server exited: its log's tail
        print(e)
        return 1
    try:
        cold = time.perf_counter() - t0
        model = httpx.get(f"http://127.0.0.1:{port}/model").json()

        requests = [multipart_request(port, b, p.name) for p, b in zip(files, blobs, strict=True)]
        sizes = [len(b) for b in blobs]
        asyncio.run(run_load(port, requests, 1, count=50))  # warm-up
        cpu0 = tree_cpu_seconds(proc.pid)
        lat1, fail1, _ = asyncio.run(run_load(port, requests, 1, count=args.requests))
        cpu1 = tree_cpu_seconds(proc.pid)
        client0 = time.process_time()
        lat8, fail8, elapsed8 = asyncio.run(
            run_load(port, requests, args.concurrency, seconds=args.seconds)
        )
        client8 = time.process_time() - client0  # the load generator shares the cores
        cpu8 = tree_cpu_seconds(proc.pid)
        peaks = [process_peak_rss_mb(p) for p in process_tree(proc.pid)]
        server_rss = sum(p for p in peaks if p is not None) if any(peaks) else None
    finally:
        proc.terminate()
        proc.wait(timeout=60)
    if floor is not None:
        print("measuring the in-process floor again ...")
        floor = bracket_floors(
            floor,
            measure_floor(
                tracking_uri, model_uri, blobs, int(args.ort_threads), args.floor_seconds
            ),
        )

    print(
        f"model: {model['name']} v{model['version']} ({model['architecture']}, "
        f"{model.get('precision', 'fp32')}, "
        f"input {model['image_size']} px, resize {model['resize_size']} px), "
        f"ORT threads {args.ort_threads}"
    )
    tuned = {k: v for k, v in sorted(os.environ.items()) if k in SERVER_SETTINGS}
    print(f"server settings from the environment (else the defaults): {tuned or 'none'}")
    print(
        f"worker processes: {resolve_workers(os.environ.get('PLANTS_SERVE_WORKERS'))} "
        f"(PLANTS_SERVE_WORKERS, else one per usable core: {usable_cores()})"
    )
    print(f"load average (1, 5, 15 min) before: {load_before}, after: {os.getloadavg()}")
    photo = f" enlarged to {args.photo_size} (JPEG quality 90)" if args.photo_size else ""
    if args.photo_size and args.mosaic:
        photo = f" tiled into {args.photo_size} mosaics (JPEG quality 92)"
    print(
        f"images: {len(files)} sample JPEGs{photo}, {statistics.mean(sizes) / 1024:.1f} KiB mean, "
        f"decoded per request; prediction log on (SQLite)"
    )
    print(f"cold start to ready:     {cold:6.2f} s  (process start -> GET /ready 200)")
    if server_rss is not None:
        print(f"server peak RSS:         {server_rss:6.0f} MiB (after the load, all processes)")
    print(
        f"concurrency 1 ({len(lat1)} req): p50 {pct(lat1, 50):6.2f} ms   "
        f"p95 {pct(lat1, 95):6.2f} ms   p99 {pct(lat1, 99):6.2f} ms   failures {len(fail1)}"
    )
    rate8 = len(lat8) / elapsed8
    print(
        f"server CPU per request: concurrency 1 {(cpu1 - cpu0) * 1000 / len(lat1):5.2f} ms, "
        f"concurrency {args.concurrency} {(cpu8 - cpu1) * 1000 / len(lat8):5.2f} ms; "
        f"load generator CPU per request at concurrency {args.concurrency} "
        f"{client8 * 1000 / len(lat8):5.2f} ms"
    )
    print(
        f"concurrency {args.concurrency} ({len(lat8)} req in {elapsed8:.1f} s): "
        f"{rate8:7.1f} req/s   p50 {pct(lat8, 50):6.2f} ms   "
        f"p99 {pct(lat8, 99):6.2f} ms   failures {len(fail8)}"
    )
    if floor is not None:
        f50 = pct(floor["lat"], 50)
        best = floor["best"]
        rates = "  ".join(f"b{b} {r:.0f}" for b, r in floor["rates"].items())
        print(
            f"floor, in process, batch 1, 1 thread: p50 {f50:6.2f} ms   "
            f"p99 {pct(floor['lat'], 99):6.2f} ms"
        )
        print(
            f"floor, in process, {floor['cores']} threads: images/s {rates}  "
            f"(best: batch {best}, {floor['rates'][best]:.0f}/s; mean of the runs before and "
            f"after the HTTP load, whose best were {floor['bracket'][0]:.0f} and "
            f"{floor['bracket'][1]:.0f}/s)"
        )
        cpu = "  ".join(f"b{b} {c:.2f}" for b, c in floor["cpu_ms"].items())
        print(f"floor CPU per image (ms): {cpu}")
        print(
            f"HTTP / floor: concurrency-1 p50 {pct(lat1, 50) / f50:.2f}x the floor's latency; "
            f"concurrency-{args.concurrency} throughput {rate8 / floor['rates'][best]:.0%} "
            f"of the floor's best ({rate8 / floor['rates'][1]:.0%} of its batch-1 rate)"
        )
    if args.record:
        record(
            args,
            tuned,
            model,
            load_before,
            {
                "c1_p50_ms": round(pct(lat1, 50), 2),
                "c1_p99_ms": round(pct(lat1, 99), 2),
                f"c{args.concurrency}_req_per_s": round(rate8, 1),
                f"c{args.concurrency}_p99_ms": round(pct(lat8, 99), 2),
                "server_cpu_ms_per_request": round((cpu8 - cpu1) * 1000 / len(lat8), 2),
                "failures": len(fail1) + len(fail8),
                "floor_best_images_per_s": round(floor["rates"][floor["best"]]) if floor else None,
            },
        )
    return 0 if not (fail1 or fail8) else 1


def record(args, settings: dict, model: dict, load_before, figures: dict) -> None:
    """One JSON line in benchmarks/results/serving.jsonl: when, where, what, the figures."""
    import datetime
    import json
    import platform
    import shlex

    cpu = next(
        (
            line.split(":", 1)[1].strip()
            for line in Path("/proc/cpuinfo").read_text().splitlines()
            if line.startswith("model name")
        ),
        platform.processor(),
    )
    row = {
        "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "machine": f"{cpu}, {os.cpu_count()} cores",
        "load_average": [round(x, 2) for x in (*load_before, *os.getloadavg())],
        "command": " ".join(
            [*(f"{k}={v}" for k, v in settings.items()), "benchmarks/bench_serving.py"]
            + [shlex.quote(a) for a in sys.argv[1:]]
        ),
        "model": f"{model['architecture']} @{model['image_size']} {model.get('precision')}",
        "workers": resolve_workers(os.environ.get("PLANTS_SERVE_WORKERS")),
        **figures,
    }
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    with RESULTS.open("a") as fh:
        fh.write(json.dumps(row) + "\n")
    print(f"recorded in {RESULTS.relative_to(ROOT)}")


if __name__ == "__main__":
    sys.exit(main())
