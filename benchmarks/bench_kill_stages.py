"""kill -9 at random points of every stage, N times each, then a rerun: does every stage
complete, is no temporary or partial file left, does every output still read?

A throw-away copy of the project (SQLite table and MLflow store inside it) over the first
``--per-label`` images of each label. Per stage: one clean run measures its duration T;
then runs are killed (SIGKILL) at a uniform random moment in [0.3 s, 0.8 T] until N were
killed before they finished (3N tries at most); then one more run must finish (exit 0),
leave no ``*.tmp`` under data/, and every parquet/JSON file under data/ must read. Prints one line per stage and a total.

    .venv/bin/python benchmarks/bench_kill_stages.py --kills 6 --per-label 20
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
VENV_BIN = Path(sys.executable).parent
from plants_mlops.contracts import STAGES  # noqa: E402  (the project's stages, in order)

PARAMS = {  # a small, quick model: the point is where the kill lands, not the accuracy
    "training.epochs": "1",
    "training.architecture": "small_cnn",
    "training.weights": "null",
    "training.image_size": "64",
    "training.strategy": "finetune",
    "task.class_balance.min_images_per_class": "5",
    "task.class_balance.split_tolerance": "0.4",
    "registry.gate.min_f1": "0.0",
}


def _project(dest: Path, per_label: int) -> dict[str, str]:
    dest.mkdir(parents=True)
    shutil.copy(ROOT / "pyproject.toml", dest / "pyproject.toml")
    shutil.copytree(ROOT / "conf", dest / "conf", ignore=shutil.ignore_patterns("local"))
    (dest / "conf" / "local").mkdir()
    (dest / "samples").symlink_to(ROOT / "samples")
    (dest / "src").mkdir()
    env = {
        **os.environ,
        "PLANTS_DB_URL": f"sqlite:///{dest / 'data' / 'plants.db'}",
        "MLFLOW_TRACKING_URI": f"sqlite:///{dest / 'data' / 'mlflow.db'}",
        "KEDRO_DISABLE_TELEMETRY": "true",
    }
    from plants_mlops import db

    rows = list(csv.DictReader(io.StringIO(db.manifest_text())))
    labels = sorted({r["label"] for r in rows})
    picked = [r for lab in labels for r in [x for x in rows if x["label"] == lab][:per_label]]
    manifest = dest / "seed.csv"
    with open(manifest, "w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=list(picked[0]))
        writer.writeheader()
        writer.writerows(picked)
    (dest / "data").mkdir()
    subprocess.run(
        [str(VENV_BIN / "plants-mlops"), "db", "seed", "--csv", str(manifest)],
        cwd=dest,
        env=env,
        check=True,
        capture_output=True,
    )
    return env


def _argv(stage: str) -> list[str]:
    params = ",".join(f"{k}={v}" for k, v in PARAMS.items())
    return [str(VENV_BIN / "kedro"), "run", "--pipelines", stage, "--params", params]


def _run(project: Path, env: dict, stage: str) -> tuple[int, float, str]:
    t0 = time.monotonic()
    done = subprocess.run(_argv(stage), cwd=project, env=env, capture_output=True, text=True)
    return done.returncode, time.monotonic() - t0, done.stderr[-2000:]


def _temporaries(project: Path) -> list[str]:
    return sorted(str(p.relative_to(project)) for p in (project / "data").rglob("*.tmp"))


def _unreadable(project: Path) -> list[str]:
    import pandas as pd

    bad = []
    for path in (project / "data").rglob("*"):
        if path.name.startswith(".") or not path.is_file():
            continue
        try:
            if path.suffix == ".parquet":
                pd.read_parquet(path)
            elif path.suffix == ".json":
                json.loads(path.read_text())
        except Exception as exc:
            bad.append(f"{path.relative_to(project)} ({type(exc).__name__})")
    return bad


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--kills", type=int, default=6)
    ap.add_argument("--per-label", type=int, default=20)
    ap.add_argument("--stages", default=",".join(STAGES), help="the stages to kill")
    ap.add_argument("--seed", type=int, default=30)
    args = ap.parse_args()
    rng = random.Random(args.seed)
    tmp = Path(tempfile.mkdtemp(prefix="plants-kill-"))
    project = tmp / "project"
    env = _project(project, args.per_label)
    failures = 0
    print(f"project: {project}  images: {2 * args.per_label}  kills per stage: {args.kills}")
    print(
        f"{'stage':<11} {'T (s)':>6} {'killed':>6} {'tries':>5} {'tmp left':>8} {'rerun':>6} "
        f"{'rerun s':>7} {'tmp after':>9} {'unreadable':>10}"
    )
    wanted = args.stages.split(",")
    try:
        first = min(STAGES.index(s) for s in wanted)
        for stage in STAGES[:first]:  # what the killed stages read: one clean run each
            rc, seconds, err = _run(project, env, stage)
            print(f"{stage:<11} {seconds:6.1f}  (clean run for the inputs, not killed: rc {rc})")
        for stage in wanted:
            rc, seconds, err = _run(project, env, stage)
            if rc != 0:
                print(f"{stage:<11} clean run failed ({rc}): {err.strip().splitlines()[-1:]}")
                failures += 1
                continue
            # N runs killed mid-run: a run that ends before its moment (a resumed stage has
            # less left to do) does not count, another is started (3N tries at most).
            killed, left, tries = 0, 0, 0
            while killed < args.kills and tries < 3 * args.kills:
                tries += 1
                proc = subprocess.Popen(
                    _argv(stage),
                    cwd=project,
                    env=env,
                    stdout=subprocess.DEVNULL,
                    stderr=subprocess.DEVNULL,
                )
                time.sleep(rng.uniform(0.3, max(0.5, 0.8 * seconds)))
                if proc.poll() is None:
                    proc.send_signal(signal.SIGKILL)
                    killed += 1
                proc.wait()
                left += len(_temporaries(project))
            rc, rerun_s, err = _run(project, env, stage)
            tmp_after = _temporaries(project)
            unreadable = _unreadable(project)
            ok = rc == 0 and not tmp_after and not unreadable
            failures += not ok
            print(
                f"{stage:<11} {seconds:6.1f} {killed:>6} {tries:>5} {left:>8} {('ok' if rc == 0 else rc)!s:>6} "
                f"{rerun_s:7.1f} {len(tmp_after):>9} {len(unreadable):>10}"
                + (
                    ""
                    if ok
                    else f"  {err.strip().splitlines()[-1:]} {tmp_after[:2]} {unreadable[:2]}"
                )
            )
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    print(f"stages failing after the rerun: {failures}")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
