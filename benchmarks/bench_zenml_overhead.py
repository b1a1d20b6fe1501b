"""Overhead of running the Kedro pipelines through ZenML (local stack) over plain `kedro run`.

Same machine, same pipelines, same data, interleaved: each repeat runs, on its own fresh
copy of the project (empty data layers, the 400 shipped images as the source),

    kedro run --pipelines P1,P2,...                       (plain Kedro)
    plants-mlops pipeline run --no-cache --pipelines P1 P2 ...   (ZenML, local stack)

and prints both wall times (process start to exit, i.e. what a user waits for) and the
ratio. The ZenML figure includes ZenML's imports, its local SQLite store and the stack's
MLflow experiment tracker on training; the stack is registered on each copy beforehand
(not timed).

    .venv/bin/python benchmarks/bench_zenml_overhead.py [--repeat 2] [--pipelines ...]
        [--params training.epochs=1 ...]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
DATA_STAGES = ["ingestion", "formatting", "curation", "validation"]
LAYERS = ("01_raw", "02_intermediate", "03_primary", "06_models", "08_reporting")


def fresh_project(base: Path, name: str) -> Path:
    """A copy of the project's configuration with empty data layers (as the tests make)."""
    dest = base / name
    dest.mkdir()
    shutil.copy(ROOT / "pyproject.toml", dest / "pyproject.toml")
    shutil.copytree(ROOT / "conf", dest / "conf", ignore=shutil.ignore_patterns("local"))
    (dest / "conf" / "local").mkdir()
    (dest / "src").mkdir()
    for layer in LAYERS:
        (dest / "data" / layer).mkdir(parents=True)
    (dest / "samples").symlink_to(ROOT / "samples")
    return dest


def project_env(project: Path, zen_home: Path) -> dict[str, str]:
    return {
        **os.environ,
        "PLANTS_DB_URL": f"sqlite:///{project / 'data' / 'plants.db'}",
        "MLFLOW_TRACKING_URI": f"sqlite:///{project / 'data' / 'mlflow.db'}",
        "ZENML_CONFIG_PATH": str(zen_home),
        "ZENML_ANALYTICS_OPT_IN": "false",
        "KEDRO_DISABLE_TELEMETRY": "true",
    }


def timed(argv: list[str], cwd: Path, env: dict[str, str]) -> float:
    started = time.perf_counter()
    proc = subprocess.run(argv, cwd=cwd, env=env, capture_output=True, text=True)
    elapsed = time.perf_counter() - started
    if proc.returncode != 0:
        sys.exit(f"failed: {' '.join(argv)}\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")
    return elapsed


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeat", type=int, default=2)
    ap.add_argument("--pipelines", nargs="+", default=DATA_STAGES)
    ap.add_argument("--params", nargs="+", default=[], metavar="KEY=VALUE")
    args = ap.parse_args()

    with tempfile.TemporaryDirectory(prefix="bench-zenml-") as tmp:
        base = Path(tmp)
        zen_home = base / "zenml-home"
        kedro_s, zenml_s, inside_s = [], [], []
        for i in range(args.repeat):
            p = fresh_project(base, f"kedro-{i}")
            argv = [str(BIN / "kedro"), "run", "--pipelines", ",".join(args.pipelines)]
            if args.params:
                argv += ["--params", ",".join(args.params)]
            kedro_s.append(timed(argv, p, project_env(p, zen_home)))
            p = fresh_project(base, f"zenml-{i}")
            # Point the local stack (and its MLflow store) at this copy; not timed.
            timed(
                [str(BIN / "plants-mlops"), "stack", "register", "local"],
                p,
                project_env(p, zen_home),
            )
            argv = [
                str(BIN / "plants-mlops"),
                "pipeline",
                "run",
                "--no-cache",
                "--pipelines",
                *args.pipelines,
            ]
            if args.params:
                argv += ["--params", *args.params]
            argv += ["--json-out", str(p / "run.json")]
            zenml_s.append(timed(argv, p, project_env(p, zen_home)))
            # Time spent inside the steps' KedroSessions (the work itself).
            summaries = json.loads((p / "run.json").read_text())["summaries"]
            inside_s.append(sum(v["duration_s"] for v in summaries.values()))
            print(
                f"repeat {i + 1}: kedro run {kedro_s[-1]:6.1f} s   zenml run {zenml_s[-1]:6.1f} s",
                flush=True,
            )

    k, z = statistics.median(kedro_s), statistics.median(zenml_s)
    print(
        f"pipelines: {', '.join(args.pipelines)}  (400 images, fresh data each run, "
        f"{os.cpu_count()} CPUs)"
    )
    print(f"median wall: kedro run {k:.1f} s, ZenML local stack {z:.1f} s")
    inside = statistics.median(inside_s)
    print(
        f"  of the ZenML run: {inside:.1f} s inside the steps' Kedro sessions, "
        f"{z - inside:.1f} s ZenML (imports, snapshot, step/artifact bookkeeping, tracker)"
    )
    print(f"overhead: +{z - k:.1f} s, ratio zenml/kedro = {z / k:.2f}")


if __name__ == "__main__":
    main()
