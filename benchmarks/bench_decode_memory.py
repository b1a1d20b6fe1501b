"""Peak memory of decoding hostile uploads: 6300x6300 RGBA PNGs (about 170 KB each, under
the 40 Mpx limit).

In process (``--in-process``): 8 concurrent decodes as the API makes them (to the model's
160 px square) with and without the API's decode budget, each scenario in a fresh
interpreter so its peak RSS is its own.

Over HTTP (the default): ``plants-mlops serve`` with 1 and then 2 workers on the product
model (ImageNet weights, untrained head, in a throw-away registry) takes 8 concurrent
``/predict`` of such a PNG, then one ``/predict/batch`` of 32 of them; per worker it prints
the RSS before, the peak (VmHWM), the RSS right after the burst and 30 s later, and how
long it took to get back under 400 MB. Goal: peak <= 600 MB per worker, back under 400 MB
within 30 s.

    .venv/bin/python benchmarks/bench_decode_memory.py [--in-process] [--workers 1,2]
"""

from __future__ import annotations

import json
import subprocess
import sys

SCENARIO = r"""
import io, json, sys, threading, time
from PIL import Image
from plants_mlops import imaging
n, budget = int(sys.argv[1]), sys.argv[2]
img = Image.new("RGBA", (6300, 6300), (10, 200, 30, 128))
buf = io.BytesIO(); img.save(buf, "PNG"); data = buf.getvalue(); del img
def status_mb(field):
    for line in open("/proc/self/status"):
        if line.startswith(field):
            return int(line.split()[1]) / 1024
with open("/proc/self/clear_refs", "w") as f:
    f.write("5")  # the peak (VmHWM) starts again from the RSS now, without the PNG's making
base = status_mb("VmRSS:")
limit = imaging.DecodeBudget(int(budget)) if budget != "none" else None
def work():
    try:
        with imaging.decoded_within(data, limit, fit=160):  # the API's path
            pass
    except imaging.ImageDecodeError:
        pass  # busy: waited past the budget's limit
threads = [threading.Thread(target=work) for _ in range(n)]
t0 = time.perf_counter()
[t.start() for t in threads]; [t.join() for t in threads]
peak = status_mb("VmHWM:")
print(json.dumps({"n": n, "budget": budget, "png_bytes": len(data), "base_mb": round(base),
                  "peak_mb": round(peak), "seconds": round(time.perf_counter() - t0, 2)}))
"""


def hostile_png() -> bytes:
    import io

    from PIL import Image

    buf = io.BytesIO()
    Image.new("RGBA", (6300, 6300), (10, 200, 30, 128)).save(buf, "PNG")
    return buf.getvalue()


def _rss_mb(pid: int, field: str = "VmRSS:") -> float:
    from pathlib import Path

    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field):
            return int(line.split()[1]) / 1024
    return 0.0


def _workers_of(pid: int, n: int) -> list[int]:
    """The processes that serve: the server itself, or its n largest children (uvicorn's
    workers; not multiprocessing's small resource tracker)."""
    import psutil

    if n == 1:
        return [pid]
    kids = [c.pid for c in psutil.Process(pid).children(recursive=True)]
    return sorted(kids, key=lambda k: -_rss_mb(k))[:n]


def serve_scenario(tracking_uri: str, model_uri: str, workers: int, png: bytes, work) -> list:
    import concurrent.futures
    import os
    import time

    import httpx
    from bench_serving import VENV_BIN, free_port  # benchmarks/bench_serving.py
    from product_model import server_environment  # benchmarks/product_model.py

    port = free_port()
    env = server_environment(tracking_uri, model_uri, work / f"plants-{workers}.db")
    log = (work / f"serve-{workers}.log").open("wb")
    proc = subprocess.Popen(
        [str(VENV_BIN / "plants-mlops"), "serve", "--port", str(port), "--workers", str(workers)],
        env=env,
        cwd=work,
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 240
        while True:
            assert proc.poll() is None, (work / f"serve-{workers}.log").read_text()[-2000:]
            try:
                ready = httpx.get(f"{base}/ready", timeout=2).status_code == 200
            except httpx.HTTPError:
                ready = False
            if ready and (workers == 1 or len(_workers_of(proc.pid, workers)) == workers):
                break
            assert time.monotonic() < deadline, "not ready in 240 s"
            time.sleep(0.2)
        time.sleep(2)  # every worker loaded its model
        pids = _workers_of(proc.pid, workers)
        before = {p: _rss_mb(p) for p in pids}

        def one(_):
            r = httpx.post(
                f"{base}/predict", files={"file": ("big.png", png, "image/png")}, timeout=300
            )
            return r.status_code

        t0 = time.perf_counter()
        with concurrent.futures.ThreadPoolExecutor(8) as pool:
            codes = list(pool.map(one, range(8)))
        batch = httpx.post(
            f"{base}/predict/batch",
            files=[("files", (f"b{i}.png", png, "image/png")) for i in range(32)],
            timeout=600,
        )
        burst_s = time.perf_counter() - t0
        after = {p: _rss_mb(p) for p in pids}
        peak = {p: _rss_mb(p, "VmHWM:") for p in pids}
        under = {p: None for p in pids}
        t1 = time.monotonic()
        while time.monotonic() - t1 < 30:
            for p in pids:
                if under[p] is None and _rss_mb(p) < 400:
                    under[p] = round(time.monotonic() - t1, 1)
            if all(v is not None for v in under.values()):
                break
            time.sleep(0.5)
        later = {p: _rss_mb(p) for p in pids}
        ok = batch.json().get("succeeded") if batch.status_code == 200 else batch.status_code
        return [
            {
                "workers": workers,
                "pid": p,
                "before": before[p],
                "peak": peak[p],
                "after": after[p],
                "later": later[p],
                "under_400_s": under[p],
                "codes": f"{codes.count(200)}/8 ok, batch {ok}/32",
                "burst_s": burst_s,
            }
            for p in pids
        ]
    finally:
        os.killpg(proc.pid, 15)
        proc.wait(timeout=60)


def over_http(workers: list[int]) -> int:
    import tempfile
    from pathlib import Path

    from bench_serving import register_benchmark_model  # benchmarks/bench_serving.py
    from product_model import product_defaults  # benchmarks/product_model.py

    work = Path(tempfile.mkdtemp(prefix="bench-decode-memory-"))
    tracking_uri = f"sqlite:///{work / 'mlflow.db'}"
    d = product_defaults()
    model_uri = register_benchmark_model(
        tracking_uri, d["architecture"], d["image_size"], d["resize_size"], "auto"
    )
    png = hostile_png()
    print(
        f"upload: {len(png)} bytes PNG, 6300x6300 RGBA; 8 x /predict then 1 x /predict/batch of 32"
    )
    print(
        f"{'workers':>7} {'pid':>7} {'before MB':>9} {'peak MB':>8} {'after MB':>8} "
        f"{'+30 s MB':>8} {'<400 MB after s':>15} {'burst s':>7}  answers"
    )
    for n in workers:
        for row in serve_scenario(tracking_uri, model_uri, n, png, work):
            print(
                f"{row['workers']:>7} {row['pid']:>7} {row['before']:>9.0f} {row['peak']:>8.0f} "
                f"{row['after']:>8.0f} {row['later']:>8.0f} {row['under_400_s']!s:>15} "
                f"{row['burst_s']:>7.1f}  {row['codes']}"
            )
    return 0


def run_scenario(script: str, *args: str) -> dict:
    """Run ``script`` in a fresh interpreter (its peak RSS its own) with ``args``; the JSON
    record on its last line of output."""
    out = subprocess.run(
        [sys.executable, "-c", script, *args], capture_output=True, text=True, check=True
    ).stdout
    return json.loads(out.strip().splitlines()[-1])


def main() -> int:
    import argparse

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--in-process", action="store_true")
    ap.add_argument("--workers", default="1,2")
    args = ap.parse_args()
    if not args.in_process:
        return over_http([int(w) for w in args.workers.split(",")])
    print(f"{'uploads':>7} {'budget (px)':>12} {'peak RSS MB':>12} {'added MB':>9} {'s':>6}")
    for n, budget in ((1, "none"), (8, "none"), (8, "48000000")):
        row = run_scenario(SCENARIO, str(n), budget)
        print(
            f"{row['n']:>7} {row['budget']:>12} {row['peak_mb']:>12} "
            f"{row['peak_mb'] - row['base_mb']:>9} {row['seconds']:>6}"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
