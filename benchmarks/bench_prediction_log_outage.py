"""The prediction log across a store outage under load: a real ``plants-mlops serve`` (two
workers by default) answers HTTP uploads while its database goes away for ``--outage``
seconds and comes back; afterwards every 200 answer must be one row of ``prediction_log``.

Stores: SQLite (another process holds an exclusive lock: every write fails with
"database is locked", as while a backup holds the file), PostgreSQL and MariaDB (the
machine's servers behind a TCP proxy that closes its port and cuts every connection:
the server is unreachable, as when it stops). Prints, per store: predictions answered, rows
in the table, rows lost (answered but missing) and duplicated, rows spilled to files and
written back, and how long the log took to catch up after the store came back.

    .venv/bin/python benchmarks/bench_prediction_log_outage.py [--stores sqlite,postgresql,mariadb]
        [--outage 60] [--before 10] [--after 10] [--concurrency 4] [--log-batch 256]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
import sqlite3
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path

import sqlalchemy as sa

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))

from bench_serving import SAMPLES, multipart_request, register_benchmark_model, run_load  # noqa: E402
from product_model import start_server  # noqa: E402
from support.proxy import TcpProxy  # noqa: E402
from support.servers import ensure_local_databases  # noqa: E402

ADMIN = {
    "postgresql": ("postgresql+psycopg2://postgres@127.0.0.1:5432/postgres", 5432),
    "mariadb": ("mysql+pymysql://root@127.0.0.1:3306/", 3306),
}


class SqliteOutage:
    """SQLite has no server to stop: an exclusive lock held by another connection."""

    def __init__(self, path: Path) -> None:
        self.conn = sqlite3.connect(path, isolation_level=None, check_same_thread=False)

    def down(self) -> None:
        self.conn.execute("BEGIN EXCLUSIVE")

    def up(self) -> None:
        self.conn.execute("ROLLBACK")


def database(store: str, work: Path) -> tuple[str, str, object, callable]:
    """(URL the server writes to, URL to count rows with, outage switch, cleanup)."""
    if store == "sqlite":
        path = work / "plants.db"
        url = f"sqlite:///{path}"
        sa.create_engine(url).connect().close()  # the file exists before the lock
        return url, url, SqliteOutage(path), lambda: None
    admin, port = ADMIN[store]
    name = f"plants_bench_{uuid.uuid4().hex[:8]}"
    engine = sa.create_engine(admin, isolation_level="AUTOCOMMIT")
    with engine.connect() as conn:
        conn.execute(sa.text(f"CREATE DATABASE {name}"))
    direct = f"{admin.rsplit('/', 1)[0]}/{name}"
    proxy = TcpProxy("127.0.0.1", port)

    def drop() -> None:
        proxy.down()
        with engine.connect() as conn:
            conn.execute(sa.text(f"DROP DATABASE IF EXISTS {name}"))
        engine.dispose()

    return proxy.url_for(direct), direct, proxy, drop


def one_store(store: str, args, tracking_uri: str, model_uri: str) -> dict:
    work = Path(tempfile.mkdtemp(prefix=f"bench-outage-{store}-"))
    url, direct, outage, cleanup = database(store, work)
    env = {
        "PLANTS_DB_URL": url,
        "PLANTS_SERVE_WORKERS": str(args.workers),
        "PLANTS_PREDICTION_LOG_BATCH": str(args.log_batch),
    }
    spill = work / "data" / "prediction_log_spill"
    proc = None
    try:
        proc, port = start_server(tracking_uri, model_uri, work, env)
        files = sorted(SAMPLES.glob("*/*.jpg"))[::4]
        requests = [multipart_request(port, p.read_bytes(), p.name) for p in files]
        total = args.before + args.outage + args.after
        result: dict = {}

        def load() -> None:
            lat, failures, elapsed = asyncio.run(
                run_load(port, requests, args.concurrency, seconds=total)
            )
            result.update(answered=len(lat) - len(failures), failures=len(failures), s=elapsed)

        thread = threading.Thread(target=load)
        thread.start()
        time.sleep(args.before)
        outage.down()
        print(f"  {store}: store down for {args.outage:g} s under load ...", flush=True)
        time.sleep(args.outage)
        outage.up()
        back = time.monotonic()
        thread.join()
        # Caught up: no spill file left (written back) and the table holds every answer.
        caught_up = None
        engine = sa.create_engine(direct)
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline:
            try:
                with engine.connect() as conn:
                    rows = conn.execute(sa.text("SELECT COUNT(*) FROM prediction_log")).scalar()
            except sa.exc.OperationalError:  # SQLite: the writers hold the file just now
                time.sleep(0.5)
                continue
            if rows >= result["answered"] and not list(spill.glob("spill-*")):
                caught_up = time.monotonic() - back
                break
            time.sleep(0.5)
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=120)
        log = (work / "serve.log").read_text()
        with engine.connect() as conn:
            ids = [r[0] for r in conn.execute(sa.text("SELECT prediction_id FROM prediction_log"))]
        engine.dispose()
        return {
            "store": store,
            "answered": result["answered"],
            "failed_requests": result["failures"],
            "rows": len(ids),
            "lost": max(0, result["answered"] - len(set(ids))),
            "duplicated": len(ids) - len(set(ids)),
            "spill_events": log.count('"prediction_log_spill"'),
            "replay_events": log.count('"prediction_log_replayed"'),
            "left_in_spill": len(list(spill.glob("*"))) if spill.exists() else 0,
            "caught_up_s": None if caught_up is None else round(caught_up, 1),
            "req_per_s": round(result["answered"] / result["s"], 1),
        }
    finally:
        if proc is not None and proc.poll() is None:  # a failure above: never leave it running
            os.killpg(proc.pid, signal.SIGKILL)
        cleanup()


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--stores", default="sqlite,postgresql,mariadb")
    ap.add_argument("--outage", type=float, default=60.0, help="seconds the store is down")
    ap.add_argument("--before", type=float, default=10.0, help="seconds of load before")
    ap.add_argument("--after", type=float, default=10.0, help="seconds of load after")
    ap.add_argument("--concurrency", type=int, default=4)
    ap.add_argument("--workers", type=int, default=2, help="serve --workers")
    ap.add_argument(
        "--log-batch",
        type=int,
        default=256,
        help="PLANTS_PREDICTION_LOG_BATCH: rows per write; 40 batches wait in memory, older "
        "rows are spilled to files (a small batch makes an outage spill)",
    )
    args = ap.parse_args()
    ensure_local_databases()
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    work = Path(tempfile.mkdtemp(prefix="bench-outage-"))
    tracking_uri = f"sqlite:///{work / 'mlflow.db'}"
    model_uri = register_benchmark_model(tracking_uri, "efficientnet_lite0", 160, 160, "fp32")
    print(
        f"load: concurrency {args.concurrency}, {args.before:g} s + {args.outage:g} s outage "
        f"+ {args.after:g} s; serve --workers {args.workers}; prediction log batch "
        f"{args.log_batch} ({40 * args.log_batch} rows held in memory per worker); "
        f"load average {os.getloadavg()}"
    )
    bad = 0
    for store in args.stores.split(","):
        r = one_store(store, args, tracking_uri, model_uri)
        bad += r["lost"] + r["duplicated"]
        print(
            f"{r['store']:<10} answered {r['answered']:>6} ({r['req_per_s']} req/s, "
            f"{r['failed_requests']} non-200)  rows {r['rows']:>6}  lost {r['lost']}  "
            f"duplicated {r['duplicated']}  spill files written {r['spill_events']}, "
            f"written back {r['replay_events']}, left {r['left_in_spill']}  "
            f"caught up {r['caught_up_s']} s after the store came back",
            flush=True,
        )
    return 1 if bad else 0


if __name__ == "__main__":
    raise SystemExit(main())
