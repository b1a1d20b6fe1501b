"""``plants-mlops demo``: the whole flow, end to end, offline, on the embedded default.

seed the plants_data table -> run every pipeline (through ZenML on the ``local`` stack, or
plain ``kedro run`` with ``--kedro``) -> list the registry -> start the API on the champion,
predict a few held-out images -> run the monitoring pipeline -> stop what it started.
Each step is a real command a user could type; the demo prints them as it goes.
"""

from __future__ import annotations

import argparse
import os
import shlex
import socket
import subprocess
import sys
import time
from pathlib import Path

from plants_mlops.errors import UserFacingError

BIN = Path(sys.executable).parent


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("demo", help="run the whole flow end to end on the local default")
    p.add_argument("--kedro", action="store_true",
                   help="run the pipelines with plain `kedro run` instead of ZenML")
    p.add_argument("--no-serve", action="store_true", help="skip the API and monitoring part")
    p.add_argument("--predictions", type=int, default=60,
                   help="held-out test images to send to the API (monitoring needs >= 30)")
    p.set_defaults(handler=run_demo)


def _step(title: str) -> None:
    print(f"\n=== {title}", flush=True)


def _sh(argv: list[str], **kw) -> subprocess.CompletedProcess:
    print("$ " + " ".join(shlex.quote(a) for a in argv), flush=True)
    proc = subprocess.run(argv, **kw)
    if proc.returncode != 0:
        raise UserFacingError(f"step failed ({proc.returncode}): {' '.join(argv)}")
    return proc


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run_demo(args: argparse.Namespace) -> int:
    started = time.monotonic()
    os.environ.setdefault("KEDRO_DISABLE_TELEMETRY", "true")
    cli = str(BIN / "plants-mlops")

    _step("1/5 seed the plants_data table from the shipped manifest")
    _sh([cli, "db", "seed"])

    if args.kedro:
        _step("2/5 run the pipelines with kedro")
        _sh([str(BIN / "kedro"), "run"])
    else:
        _step("2/5 run the pipelines through ZenML on the `local` stack")
        _sh([cli, "stack", "register", "local"])
        _sh([cli, "pipeline", "run", "--stack", "local"])

    _step("3/5 the model registry")
    _sh([cli, "registry", "list"])

    if not args.no_serve:
        _serve_predict_monitor(cli, args.predictions)

    _step("summary")
    _sh([cli, "db", "status"])
    print(f"\ndemo finished in {time.monotonic() - started:.0f} s; "
          "`plants-mlops serve` keeps the API up, `plants-mlops dashboards` opens the UIs.")
    return 0


def _serve_predict_monitor(cli: str, n_predictions: int) -> None:
    import httpx
    import pandas as pd

    from plants_mlops.orchestration.dashboards import wait_http

    port = _free_port()
    base = f"http://127.0.0.1:{port}"
    _step(f"4/5 start the API on the champion ({base}) and predict held-out images")
    log = open(Path("data") / "08_reporting" / "demo-serve.log", "wb")  # noqa: SIM115
    server = subprocess.Popen([cli, "serve", "--host", "127.0.0.1", "--port", str(port)],
                              stdout=log, stderr=subprocess.STDOUT)
    try:
        try:  # /ready answers 503 until the champion is loaded, then 200
            wait_http(f"{base}/ready", timeout=120, proc=server)
        except UserFacingError as exc:
            raise UserFacingError(f"{exc}; see data/08_reporting/demo-serve.log") from None
        model = httpx.get(f"{base}/model", timeout=10).json()
        print(f"serving model version {model.get('version')} "
              f"(run {model.get('mlflow_run_id') or model.get('run_id')})")
        index = pd.read_parquet(Path("data") / "03_primary" / "dataset_index.parquet")
        test = index[index["split"] == "test"].head(n_predictions)
        raw = {r.sha256: r for r in test.itertuples()}
        correct = 0
        for sha, row in raw.items():
            path = next((Path("data") / "01_raw" / row.label).glob(f"{sha}.*"))
            r = httpx.post(f"{base}/predict", timeout=30,
                           files={"file": (path.name, path.read_bytes(), "image/jpeg")})
            r.raise_for_status()
            body = r.json()
            correct += body["label"] == row.label
            print(f"  {path.name[:12]}... true={row.label:<9} predicted={body['label']:<9} "
                  f"p={max(body['probabilities'].values()):.3f} "
                  f"{body.get('latency_ms', 0):.1f} ms")
        print(f"{correct}/{len(raw)} correct")
    finally:
        server.terminate()  # clean stop: the prediction log is flushed
        server.wait(timeout=60)
        log.close()

    _step("5/5 monitoring: Evidently drift report on the prediction log")
    _sh([str(BIN / "kedro"), "run", "--pipelines", "monitoring"])
    for report in sorted((Path("data") / "08_reporting").glob("*drift*")):
        print(f"  report: {report}")
