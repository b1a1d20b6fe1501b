"""Trust goals of the served champion, in one command (issue 31, docs/model.md *Trust*):

- held-out real non-plant photos flagged out of distribution (``behaviour.REPORT_PHOTOS``:
  never used to choose the detector or its threshold);
- unseen task photos (the test split: never trained or tuned on) flagged;
- invariance on the test split: the share of labels unchanged under each edit of
  ``behaviour.EDITS``, and the share of those edited task photos flagged out of
  distribution (a turned lawn photo is still a lawn photo);
- the serving model's size, batch-1 ONNX Runtime p50 (one thread, as the gate measures);
- the API: ``POST /predict`` p50 at concurrency 1 and ``POST /explain`` p50 (the whole
  request: upload, decode, inference with class maps, overlay PNG), on a real
  ``plants-mlops serve`` on 127.0.0.1.

It reads the registered champion (``--tracking-uri``, default ``MLFLOW_TRACKING_URI`` or the
project's ``sqlite:///data/mlflow.db``) and the project's data (``--data``, default
``data``: the test split of ``03_primary/dataset_index.parquet``), so run the pipelines
first (``make demo`` or ``kedro run``).

    .venv/bin/python benchmarks/bench_trust.py [--json benchmarks/results/trust.json]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

import httpx
import numpy as np
import pandas as pd
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))

from bench_serving import (  # noqa: E402  (benchmarks/bench_serving.py)
    absolute_sqlite,
    multipart_request,
    pct,
    run_load,
)
from product_model import start_server  # noqa: E402  (benchmarks/product_model.py)


def test_split(data: Path, labels: tuple[str, ...]) -> tuple[list[Image.Image], np.ndarray]:
    index = pd.read_parquet(data / "03_primary" / "dataset_index.parquet")
    test = index[(index["split"] == "test") & index["label"].isin(labels)]
    folder = data / "02_intermediate" / "fmt_images"
    images = []
    for key in test["image_key"]:
        with Image.open(folder / f"{key}.jpg") as im:
            images.append(im.convert("RGB"))
    return images, test["label"].map(labels.index).to_numpy()


def explanation_parts(model, blobs: list[bytes], n: int) -> dict[str, float]:
    """p50 (ms) of each part of an explanation in this process, one thread: decode and
    preprocess, the inference with class maps (and without, what /predict runs), the
    grid and the overlay PNG with its base64."""
    from plants_mlops import imaging
    from plants_mlops.model.explain import Explanation

    parts: dict[str, list[float]] = {k: [] for k in ("decode", "predict", "maps", "overlay")}
    meta = model.meta
    for i in range(n + 5):
        t0 = time.perf_counter()
        img = imaging.decode_image(blobs[i % len(blobs)]).image
        x, fmt = model.preprocess(img)
        t1 = time.perf_counter()
        model.run(x[None])
        t2 = time.perf_counter()
        out, maps = model.run_with_maps(x[None])
        t3 = time.perf_counter()
        cam = Explanation.of(maps[0], int(out.probabilities[0].argmax()))
        view = imaging.model_view(fmt, resize_size=meta.resize_size, image_size=meta.image_size)
        cam.overlay_base64(view)
        t4 = time.perf_counter()
        if i >= 5:
            for key, dt in zip(parts, (t1 - t0, t2 - t1, t3 - t2, t4 - t3), strict=True):
                parts[key].append(dt * 1000)
    p50 = {k: float(statistics.median(v)) for k, v in parts.items()}
    p50["explanation"] = p50["decode"] + p50["maps"] + p50["overlay"]
    return p50


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--tracking-uri", default=os.environ.get("MLFLOW_TRACKING_URI"))
    ap.add_argument("--model-uri", default="models:/plants-classifier@champion")
    ap.add_argument("--data", default=str(ROOT / "data"))
    ap.add_argument("--requests", type=int, default=300, help="/predict requests at c1")
    ap.add_argument("--explanations", type=int, default=60, help="/explain requests")
    ap.add_argument("--latency-runs", type=int, default=200)
    ap.add_argument("--json", help="write the figures here too")
    args = ap.parse_args()

    from plants_mlops.model import artifact, behaviour, registry, tracking

    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    tracking_uri = absolute_sqlite(args.tracking_uri) or f"sqlite:///{ROOT / 'data' / 'mlflow.db'}"
    cl = tracking.client(tracking_uri, must_exist=True)
    loaded = artifact.load_registered(cl, args.model_uri, threads=1)
    model, meta = loaded.artifact, loaded.meta
    with tempfile.TemporaryDirectory() as tmp:
        folder = artifact.download_version(cl, loaded.name, loaded.version, Path(tmp))
        model_bytes = (folder / artifact.ONNX_FILE).stat().st_size
    print(
        f"{loaded.name} version {loaded.version}: {meta.architecture} @{meta.image_size} px, "
        f"{meta.precision}, OOD detector: {meta.ood.method if meta.ood else 'none'}"
    )
    out: dict = {
        "model": f"{loaded.name}/{loaded.version}",
        "architecture": meta.architecture,
        "precision": meta.precision,
        "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores",
    }

    report = behaviour.report_set()
    flagged = model.predict_images(list(report.values())).out_of_distribution
    out["non_plant_photos"] = len(report)
    out["non_plant_flagged"] = None if flagged is None else float(np.mean(flagged))
    images, y = test_split(Path(args.data), tuple(meta.labels))
    base = model.predict_images(images)
    out["test_images"] = len(images)
    out["test_flagged"] = (
        None if base.out_of_distribution is None else float(np.mean(base.out_of_distribution))
    )
    labels = base.probabilities.argmax(axis=1)
    out["test_accuracy"] = float((labels == y).mean())
    out["invariance"], out["edited_test_flagged"] = {}, {}
    for name, edit in behaviour.EDITS.items():
        edited = model.predict_images(behaviour.EditedImages(images, edit))
        out["invariance"][name] = float((edited.probabilities.argmax(axis=1) == labels).mean())
        if edited.out_of_distribution is not None:
            out["edited_test_flagged"][name] = float(np.mean(edited.out_of_distribution))

    out["model_mb"] = model_bytes / 1e6
    samples = registry.latency_samples_ms(model.session, meta.image_size, args.latency_runs)
    out["onnx_batch1_p50_ms"] = float(statistics.median(samples))

    work = Path(tempfile.mkdtemp(prefix="bench-trust-"))
    files = sorted((ROOT / "samples" / "plants").glob("*/*.jpg"))[::8]
    blobs = [p.read_bytes() for p in files]
    out["explain_in_process_ms"] = explanation_parts(model, blobs, args.explanations)
    proc, port = start_server(tracking_uri, args.model_uri, work)
    try:
        requests = [multipart_request(port, b, p.name) for p, b in zip(files, blobs, strict=True)]
        asyncio.run(run_load(port, requests, 1, count=30))  # warm-up
        lat, failed, _ = asyncio.run(run_load(port, requests, 1, count=args.requests))
        out["api_c1_p50_ms"] = pct(lat, 50)
        out["api_c1_failed"] = len(failed)
        times = []
        with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=30) as client:
            for i in range(args.explanations + 5):
                blob = blobs[i % len(blobs)]
                t0 = time.perf_counter()
                r = client.post("/explain", files={"file": ("x.jpg", blob, "image/jpeg")})
                if i >= 5:  # warm-up
                    times.append(time.perf_counter() - t0)
                if r.status_code != 200:
                    raise RuntimeError(f"/explain answered {r.status_code}: {r.text[:300]}")
        out["explain_p50_ms"] = pct(times, 50)
        out["explain_p95_ms"] = pct(times, 95)
    finally:
        proc.terminate()
        proc.wait(timeout=60)

    def share(v):
        return "-" if v is None else f"{100 * v:.1f} %"

    print(
        f"non-plant photos flagged (held out, {out['non_plant_photos']}): "
        f"{share(out['non_plant_flagged'])}  (goal >= 90 %)"
    )
    print(
        f"unseen task photos flagged (test split, {out['test_images']}): "
        f"{share(out['test_flagged'])}  (goal <= 5 %); test accuracy "
        f"{out['test_accuracy']:.4f}"
    )
    for name, v in out["invariance"].items():
        goal = 0.99 if name == "mirror" else 0.97
        flagged = out["edited_test_flagged"].get(name)
        print(
            f"invariance {name:<10} {share(v):>8}  (goal >= {goal:.0%}); test photos so "
            f"edited flagged out of distribution {share(flagged)}"
        )
    print(f"serving model: {out['model_mb']:.2f} MB ({out['precision']})  (goal <= 20 MB)")
    print(f"batch-1 ONNX Runtime p50: {out['onnx_batch1_p50_ms']:.2f} ms  (goal <= 5 ms)")
    print(f"API c1 p50 (/predict): {out['api_c1_p50_ms']:.2f} ms  (goal <= 5 ms)")
    print(
        "explanation in process, p50: decode+preprocess {decode:.1f} ms, inference with "
        "class maps {maps:.1f} ms (without: {predict:.1f} ms), grid+overlay PNG {overlay:.1f} "
        "ms; total {explanation:.1f} ms".format(**out["explain_in_process_ms"])
    )
    print(
        f"explanation p50 (/explain): {out['explain_p50_ms']:.1f} ms, p95 "
        f"{out['explain_p95_ms']:.1f} ms  (budget <= 60 ms)"
    )
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(out, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
