"""Data-stage throughput: ingestion (images/s from a local HTTP mirror; local disk vs S3 on
moto) and formatting (images/s). Prints figures; asserts nothing.

    .venv/bin/python benchmarks/bench_data.py [--repeat 3]

Servers are real processes on 127.0.0.1 (the test suite's HTTP mirror and moto_server).
moto is several times slower than MinIO: its S3 figure is a floor, not MinIO's speed.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

from memory import peak_rss_mb  # benchmarks/memory.py

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))

os.environ.setdefault("AWS_ACCESS_KEY_ID", "bench")
os.environ.setdefault("AWS_SECRET_ACCESS_KEY", "bench")
os.environ.setdefault("AWS_DEFAULT_REGION", "us-east-1")

import boto3  # noqa: E402
import pandas as pd  # noqa: E402
from support import servers  # noqa: E402
from support.params import stage_params  # noqa: E402

from plants_mlops import db  # noqa: E402
from plants_mlops.datasets.data_raw_store import BlobStoreDataset  # noqa: E402
from plants_mlops.pipelines.formatting.nodes import format_images  # noqa: E402
from plants_mlops.pipelines.ingestion.nodes import ingest_all  # noqa: E402

PREFIX = "https://raw.githubusercontent.com/btphan95/greenr-airflow/refs/heads/master/data/"
SAMPLES = ROOT / "samples" / "plants"  # the photos mirrored (--photo-size: enlarged copies)


def enlarged_pool(rows: pd.DataFrame, size: str, folder: Path) -> Path:
    """Copies of the rows' sample photos at ``size`` ("WxH", JPEG quality 90, as a phone
    camera saves them) under ``folder``, at the paths the mirror serves."""
    from support.images import enlarge_jpeg

    for url in rows["url_source"]:
        rel = url.removeprefix(PREFIX)
        (folder / rel).parent.mkdir(parents=True, exist_ok=True)
        (folder / rel).write_bytes(enlarge_jpeg((SAMPLES / rel).read_bytes(), size))
    return folder


def manifest() -> pd.DataFrame:
    import csv

    rows = list(csv.DictReader(db.manifest_text().splitlines()))
    return pd.DataFrame(
        [
            {
                **r,
                "id": int(r["id"]),
                "status": "pending",
                "url_s3": None,
                "error": None,
                "sha256": None,
            }
            for r in rows
        ]
    )


def timed(fn, repeat: int) -> tuple[float, object]:
    times, result = [], None
    for _ in range(repeat):
        t0 = time.perf_counter()
        result = fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times), result


def ingest_into(store: BlobStoreDataset, rows: pd.DataFrame, params: dict) -> int:
    """What `kedro run --pipelines ingestion` does on a fresh store: fetch, check, save."""
    new, _, summary = ingest_all(rows, {}, params)
    store.save(new)
    return summary["fetched"]


def ingestion_table(rows, base, port, s3_url, repeat, pool: Path) -> BlobStoreDataset:
    """Prints the ingestion figures; returns an S3 raw store holding all images."""
    n = len(rows)
    print("\ningestion (fetch + decode check + sha256 + store)")
    print(f"{'source':<22}{'store':<8}{'threads':>8}{'seconds':>10}{'images/s':>10}")
    cases = [("HTTP mirror", base, t) for t in (1, 4, 8, 16)]
    cases += [("local folder mirror", str(pool), t) for t in (1, 8)]
    for source, target, threads in cases:
        params = _params(target, threads)

        def local_run(params=params):
            with tempfile.TemporaryDirectory() as d:
                return ingest_into(BlobStoreDataset(path=f"{d}/01_raw"), rows, params)

        secs, fetched = timed(local_run, repeat)
        assert fetched == n, fetched
        print(f"{source:<22}{'local':<8}{threads:>8}{secs:>10.2f}{n / secs:>10.1f}")

    s3 = boto3.client("s3", endpoint_url=s3_url)
    creds = {"client_kwargs": {"endpoint_url": s3_url}, "key": "bench", "secret": "bench"}
    buckets = iter(range(100))

    def s3_store() -> BlobStoreDataset:
        bucket = f"bench-{next(buckets)}-{port}"
        s3.create_bucket(Bucket=bucket)
        return BlobStoreDataset(path=f"s3://{bucket}/01_raw", credentials=creds)

    params = _params(base, 8)
    secs, fetched = timed(lambda: ingest_into(s3_store(), rows, params), repeat)
    assert fetched == n, fetched
    print(f"{'HTTP mirror':<22}{'s3/moto':<8}{8:>8}{secs:>10.2f}{n / secs:>10.1f}")
    s3_raw = s3_store()
    ingest_into(s3_raw, rows, params)
    return s3_raw


def formatting_table(rows, base, s3_raw, repeat) -> None:
    n = len(rows)
    with tempfile.TemporaryDirectory() as d:
        store = BlobStoreDataset(path=f"{d}/01_raw")
        new, updates, _ = ingest_all(rows, {}, _params(base, 8))
        store.save(new)
        table = rows.set_index("id")
        table.update(updates.set_index("id")[["status", "sha256"]])
        table = table.reset_index()
        print("\nformatting (decode + EXIF + RGB + square_resize 160 + stats)")
        print(f"{'raw on':<10}{'workers':>8}{'seconds':>10}{'images/s':>10}")
        for where, raw_store in (("local", store), ("s3/moto", s3_raw)):
            for workers in (1, 2, 4, 8):
                secs, (fmt, _, _) = timed(
                    lambda w=workers, r=raw_store: format_images(
                        r.load(), table, stage_params("formatting", image_size=160, workers=w)
                    ),
                    repeat,
                )
                assert len(fmt) == n
                print(f"{where:<10}{workers:>8}{secs:>10.2f}{n / secs:>10.1f}")


def _params(target: str, threads: int) -> dict:
    return stage_params(
        "ingestion",
        raw_root="bench",
        mirrors=[{"prefix": PREFIX, "to": target}],
        concurrency=threads,
        progress=False,
    )


@contextlib.contextmanager
def moto_server(logs: Path):
    """moto's S3 server in its own process (the tests run it on a thread; here it must not
    share this process's GIL with the clients being timed)."""
    port = servers.free_port()
    server = servers.ManagedProcess(
        "moto_server",
        [str(servers.VENV_BIN / "moto_server"), "-H", "127.0.0.1", "-p", str(port)],
        health_url=f"http://127.0.0.1:{port}/moto-api/",
        log_path=logs / "moto.log",
    ).start()
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.stop()


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--images", type=int, help="the manifest's first N rows (default: all)")
    ap.add_argument(
        "--photo-size", metavar="WxH", help="mirror the photos enlarged to this size (4032x3024)"
    )
    args = ap.parse_args()
    rows = manifest().iloc[: args.images]
    logs = Path(tempfile.mkdtemp(prefix="bench-data-"))
    pool = SAMPLES
    if args.photo_size:
        pool = enlarged_pool(rows, args.photo_size, logs / "photos")
    size = sum(p.stat().st_size for p in pool.rglob("*.jpg")) / 1e6
    enlarged = f", enlarged to {args.photo_size}" if args.photo_size else ""
    print(
        f"data benchmark: {len(rows)} images ({size:.1f} MB{enlarged}), median of "
        f"{args.repeat} runs, {os.cpu_count()} CPUs"
    )
    with (
        servers.http_mirror(pool, logs / "mirror.log") as base,
        moto_server(logs) as s3_url,
    ):
        port = int(base.rstrip("/").rsplit(":", 1)[1])
        s3_raw = ingestion_table(rows, base, port, s3_url, args.repeat, pool)
        formatting_table(rows, base, s3_raw, args.repeat)
    print(
        f"\npeak RSS of the benchmark process (ingestion + formatting in-process): "
        f"{peak_rss_mb():.0f} MiB"
    )


if __name__ == "__main__":
    main()
