"""The cost curve: per-stage wall time, images/s, peak RSS and rerun time of the data
pipelines at growing catalogue sizes, on local disk or S3 (moto). Prints figures; asserts
nothing.

    nice -n 5 .venv/bin/python benchmarks/bench_scale.py --sizes 1000,10000 \
        [--store local|s3] [--json PATH] [--plot PNG] [--workdir DIR] [--train-steps 20] \
        [--stages formatting,validation --reuse-project]

For each N: ``plants-mlops data synth N`` (deterministic, 1 % broken rows) served by a
loopback HTTP mirror in its own process; a throw-away copy of the Kedro project whose table
is seeded with the synthetic manifest; then the real ``kedro run --pipelines STAGE`` CLI,
once (first run) and again on the unchanged catalogue (rerun), for ingestion, formatting
and validation. Training runs a fixed number of optimisation steps (``--train-steps``,
default parameters otherwise: efficientnet_lite0 at 128 px, batch 32) on the lazily read
train split, after the check pass over the split. Each stage runs in its own process
under ``/usr/bin/time``: its peak RSS is that process's alone.

``--json`` writes one row per stage and N: ``{"stage", "n", "wall_s", "images_per_s",
"peak_rss_mb", "rerun_s", ...}`` (``node_s``/``rerun_node_s``: the node's own seconds
from its report, without Kedro's start-up; ``cpu_s``: the process's user + system CPU
seconds; ``mirror_cpu_s``: the mirror's during the first ingestion; ``store``).
Validation is measured with an empty near-duplicate list (the bench does not run
curation). ``--reuse-project`` re-measures later stages on the project an earlier run left (its
table and raw layer), without ingesting N images again. moto is several times slower than
MinIO: its S3 figures are a floor.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
VENV_BIN = Path(sys.executable).parent
sys.path.insert(0, str(ROOT / "tests"))

STAGES = ("ingestion", "formatting", "validation")
PREFIX = "https://synth.plants.invalid/"


def _project(dest: Path) -> Path:
    """A throw-away copy of the Kedro project (as the tests make one)."""
    if dest.exists():
        shutil.rmtree(dest)
    dest.mkdir(parents=True)
    shutil.copy(ROOT / "pyproject.toml", dest / "pyproject.toml")
    _copy_conf(dest)
    for layer in ("01_raw", "02_intermediate", "03_primary", "06_models", "08_reporting"):
        (dest / "data" / layer).mkdir(parents=True)
    (dest / "src").mkdir()
    return dest


# What a stage writes, removed before its first run on a reused project (--reuse-project)
# so that the first run does the whole work again; ingestion's work is the table itself.
STAGE_OUTPUTS = {"formatting": ("02_intermediate", "03_primary"), "validation": ()}


def _clear_outputs(project: Path, stage: str) -> None:
    for layer in STAGE_OUTPUTS[stage]:
        shutil.rmtree(project / "data" / layer)
        (project / "data" / layer).mkdir()


def _no_near_duplicates(project: Path, env: dict) -> None:
    """Validation reads curation's near-duplicate pairs; the bench does not run curation
    (a backbone embedding of every image), so validation gets an empty list, as it
    was measured before curation existed. Only a missing file is written."""
    if env.get("BENCH_STORE") == "s3":
        import boto3

        s3 = boto3.client("s3", endpoint_url=env["PLANTS_S3_ENDPOINT_URL"])
        key = "03_primary/near_duplicates.json"
        found = s3.list_objects_v2(Bucket=env["PLANTS_S3_BUCKET"], Prefix=key).get("KeyCount")
        if not found:
            s3.put_object(Bucket=env["PLANTS_S3_BUCKET"], Key=key, Body=NO_PAIRS.encode())
        return
    path = project / "data" / "03_primary" / "near_duplicates.json"
    if not path.is_file():
        path.write_text(NO_PAIRS)


NO_PAIRS = json.dumps({"pairs": [], "max_distance": None, "note": "bench: curation not run"})


def _copy_conf(dest: Path) -> None:
    """The project's configuration, fresh (a reused project gets the current one)."""
    shutil.rmtree(dest / "conf", ignore_errors=True)
    shutil.copytree(ROOT / "conf", dest / "conf", ignore=shutil.ignore_patterns("local"))
    (dest / "conf" / "local").mkdir()


def _timed(argv: list[str], cwd: Path, env: dict, log: Path) -> tuple[float, float, int, float]:
    """(wall seconds, peak RSS MiB of that process, exit code, its CPU seconds: user +
    system) of one command."""
    t0 = time.perf_counter()
    with open(log, "ab") as fh:
        proc = subprocess.run(
            ["/usr/bin/time", "-f", "@@maxrss_kb=%M @@cpu_s=%U+%S", *argv],
            cwd=cwd,
            env=env,
            stdout=fh,
            stderr=subprocess.PIPE,
        )
    wall = time.perf_counter() - t0
    err = proc.stderr.decode(errors="replace")
    with open(log, "a") as fh:
        fh.write(err)
    found = re.findall(r"@@maxrss_kb=(\d+)", err)
    cpu = re.findall(r"@@cpu_s=([\d.]+)\+([\d.]+)", err)
    return (
        wall,
        (int(found[-1]) / 1024 if found else float("nan")),
        proc.returncode,
        (round(float(cpu[-1][0]) + float(cpu[-1][1]), 2) if cpu else float("nan")),
    )


def _cpu_seconds(pid: int) -> float:
    """User + system CPU seconds a live process has used so far (Linux /proc)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _report(project: Path, name: str, env: dict) -> dict:
    """A JSON report of the last run, from the project's data root (local or S3)."""
    if env.get("BENCH_STORE") == "s3":
        import boto3

        s3 = boto3.client("s3", endpoint_url=env["PLANTS_S3_ENDPOINT_URL"])
        body = s3.get_object(Bucket=env["PLANTS_S3_BUCKET"], Key=f"08_reporting/{name}.json")
        return json.loads(body["Body"].read())
    return json.loads((project / "data" / "08_reporting" / f"{name}.json").read_text())


def _node_seconds(stage: str, report: dict) -> tuple[float | None, float | None]:
    """(node seconds, images/s) from a stage's report."""
    if stage == "ingestion":
        return report.get("seconds"), report.get("images_per_s")
    if stage == "formatting":
        return report.get("seconds"), report.get("images_per_s")
    return None, None


def _labels() -> tuple[str, ...]:
    """The shipped task's labels (conf/base/task.yml)."""
    from plants_mlops import task

    return task.load(conf=ROOT / "conf").labels


def run_size(n: int, args, workdir: Path, s3_url: str | None) -> list[dict]:
    from plants_mlops import db
    from plants_mlops.datasets import data_synth

    cat = workdir / f"catalogue-{n}-seed{args.seed}"
    if not (cat / data_synth.MANIFEST).is_file():
        report = data_synth.synth(
            n, cat, labels=_labels(), seed=args.seed, broken_share=args.broken_share
        )
        print(f"synth {n}: {report.seconds:.1f} s, {report.bytes_written / 1e6:.0f} MB", flush=True)
    project = workdir / f"project-{n}-{args.store}"
    reuse = args.reuse_project and (project / "data" / "plants.db").is_file()
    if reuse:
        _copy_conf(project)
    else:
        _project(project)
    env = {
        **os.environ,
        "PLANTS_DB_URL": f"sqlite:///{project / 'data' / 'plants.db'}",
        "MLFLOW_TRACKING_URI": f"sqlite:///{project / 'data' / 'mlflow.db'}",
        "BENCH_STORE": args.store,
    }
    kedro_env: list[str] = []
    if args.store == "s3":
        import boto3

        bucket = f"bench-scale-{n}-{int(time.time())}"
        env.update(
            PLANTS_S3_ENDPOINT_URL=s3_url,
            PLANTS_S3_BUCKET=bucket,
            AWS_ACCESS_KEY_ID=os.environ.get("AWS_ACCESS_KEY_ID", "bench"),
            AWS_SECRET_ACCESS_KEY=os.environ.get("AWS_SECRET_ACCESS_KEY", "bench"),
            AWS_DEFAULT_REGION="us-east-1",
        )
        os.environ.update({k: env[k] for k in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY")})
        boto3.client("s3", endpoint_url=s3_url, region_name="us-east-1").create_bucket(
            Bucket=bucket
        )
        kedro_env = ["--env", "minio"]
    if not reuse:
        engine = db.make_engine(env["PLANTS_DB_URL"])
        seeded = db.seed(engine, cat / data_synth.MANIFEST, labels=_labels())
        engine.dispose()
        print(f"table: {seeded.added} rows", flush=True)

    port_file = workdir / f"mirror-{n}.port"
    mirror = subprocess.Popen(
        [
            str(VENV_BIN / "python"),
            "-c",
            "import sys,time; from plants_mlops.commands import mirror as d\n"
            "with d.serve(sys.argv[1], 0, float(sys.argv[3])) as url:\n"
            "    open(sys.argv[2], 'w').write(url)\n"
            "    time.sleep(10**6)",
            str(cat),
            str(port_file),
            str(args.slow_s),
        ]
    )
    rows = []
    try:
        deadline = time.monotonic() + 30
        while not port_file.is_file() or not port_file.read_text():
            if time.monotonic() > deadline:
                raise SystemExit("the synthetic mirror did not start")
            time.sleep(0.1)
        url = port_file.read_text()
        import yaml

        # the run environment's folder: conf/local is not read under --env minio
        conf_env = "minio" if args.store == "s3" else "local"
        (project / "conf" / conf_env / "parameters_bench.yml").write_text(
            yaml.safe_dump(
                {
                    "ingestion": {
                        "mirrors": [{"prefix": PREFIX, "to": url}],
                        "progress": False,
                        "max_attempts": 1,
                    },
                    "validation": {"max_missing_rate": 0.05},
                }
            )
        )
        log = workdir / f"bench-{n}-{args.store}.log"
        kedro = [str(VENV_BIN / "kedro"), "run", *kedro_env, "--pipelines"]
        for stage in args.stages:
            if stage == "training":
                continue
            if reuse:
                _clear_outputs(project, stage)
            if stage == "validation":
                _no_near_duplicates(project, env)
            mirror_cpu0 = _cpu_seconds(mirror.pid)
            first = _timed([*kedro, stage], project, env, log)
            mirror_cpu = round(_cpu_seconds(mirror.pid) - mirror_cpu0, 2)
            first_report = _report(project, f"{stage}_report", env) if first[2] == 0 else {}
            again = _timed([*kedro, stage], project, env, log)
            again_report = _report(project, f"{stage}_report", env) if again[2] == 0 else {}
            node_s, ips = _node_seconds(stage, first_report)
            rerun_node_s, _ = _node_seconds(stage, again_report)
            row = {
                "stage": stage,
                "n": n,
                "store": args.store,
                "wall_s": round(first[0], 2),
                "images_per_s": ips if ips is not None else round(n / first[0], 1),
                "peak_rss_mb": round(first[1], 1),
                "rerun_s": round(again[0], 2),
                "rerun_peak_rss_mb": round(again[1], 1),
                "node_s": node_s,
                "rerun_node_s": rerun_node_s,
                "cpu_s": first[3],
                "rerun_cpu_s": again[3],
                "exit_codes": [first[2], again[2]],
            }
            if stage == "ingestion":
                row["failed_by_reason"] = first_report.get("failed_by_reason")
                row["mirror_cpu_s"] = mirror_cpu
            if stage == "formatting":
                row["rerun_formatted_now"] = again_report.get("formatted_now")
            print(json.dumps(row), flush=True)
            rows.append(row)
        if "training" in args.stages:
            wall, rss, code, cpu = _timed(
                [
                    str(VENV_BIN / "python"),
                    str(Path(__file__).resolve()),
                    "--train-child",
                    str(project),
                    "--train-steps",
                    str(args.train_steps),
                    *(["--kedro-env", "minio"] if args.store == "s3" else []),
                ],
                project,
                env,
                log,
            )
            out = project / "train-figures.json"
            figures = json.loads(out.read_text()) if code == 0 and out.is_file() else {}
            row = {
                "stage": "training",
                "n": n,
                "store": args.store,
                "wall_s": round(wall, 2),
                "images_per_s": figures.get("images_per_s"),
                "peak_rss_mb": round(rss, 1),
                "rerun_s": None,
                "steps": args.train_steps,
                "check_pass_s": figures.get("check_pass_s"),
                "steps_s": figures.get("steps_s"),
                "train_images": figures.get("train_images"),
                "cpu_s": cpu,
                "exit_codes": [code],
            }
            print(json.dumps(row), flush=True)
            rows.append(row)
    finally:
        mirror.terminate()
        mirror.wait(timeout=30)
        port_file.unlink(missing_ok=True)
    return rows


def train_child(project: Path, steps: int, kedro_env: str | None) -> int:
    """Fixed-step training over the lazily read train split of ``project``."""
    import torch
    from kedro.framework.session import KedroSession
    from kedro.framework.startup import bootstrap_project

    from plants_mlops.model.architectures import SPECS, build_model
    from plants_mlops.model.data import AugmentedDataset, load_subset
    from plants_mlops.params import TrainingParams, parse

    bootstrap_project(project)
    with KedroSession.create(project_path=project, env=kedro_env) as session:
        context = session.load_context()
        catalog = context.catalog
        index = catalog.load("dataset_index")
        fmt_images = catalog.load("fmt_images")
        p = parse(TrainingParams, catalog.load("params:training"), "training")
        labels = tuple(catalog.load("params:task")["labels"])
    t0 = time.perf_counter()
    splits = load_subset(index, fmt_images, labels, ("train",), p)
    check_s = time.perf_counter() - t0
    torch.manual_seed(p.seed)
    spec = SPECS[p.architecture]
    model = build_model(
        p.architecture, n_classes=len(labels), image_size=p.image_size, weights=p.weights
    )
    ds = AugmentedDataset(
        splits["train"], image_size=p.image_size, mean=spec.mean, std=spec.std, augment=p.augment
    )
    loader = torch.utils.data.DataLoader(ds, batch_size=p.batch_size, shuffle=True)
    opt = torch.optim.AdamW(model.parameters(), lr=p.optimizer.lr)
    loss_fn = torch.nn.CrossEntropyLoss()
    model.train()
    seen, t1 = 0, time.perf_counter()
    for step, (xb, yb) in enumerate(loader):
        if step >= steps:
            break
        opt.zero_grad()
        logits, _ = model(xb)
        loss_fn(logits, yb).backward()
        opt.step()
        seen += len(yb)
    steps_s = time.perf_counter() - t1
    (project / "train-figures.json").write_text(
        json.dumps(
            {
                "train_images": len(splits["train"]),
                "check_pass_s": round(check_s, 2),
                "steps_s": round(steps_s, 2),
                "images_per_s": round(seen / steps_s, 1),
            }
        )
    )
    return 0


def plot(rows: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(15, 4.2))
    colours = iter(plt.rcParams["axes.prop_cycle"].by_key()["color"] * 4)
    for stage in dict.fromkeys(r["stage"] for r in rows):
        for store in dict.fromkeys(r["store"] for r in rows):
            pts = sorted(
                (r for r in rows if r["stage"] == stage and r["store"] == store),
                key=lambda r: r["n"],
            )
            if not pts:
                continue
            ns = [r["n"] for r in pts]
            # one colour per series in every panel (the legend is drawn once)
            style = {"marker": "o", "label": f"{stage} ({store})", "color": next(colours)}
            axes[0].plot(ns, [r["wall_s"] for r in pts], **style)
            axes[1].plot(ns, [r["peak_rss_mb"] for r in pts], **style)
            if stage != "validation":  # its rate is rows/s: off the images/s scale
                axes[2].plot(ns, [r["images_per_s"] or 0 for r in pts], **style)
    for ax, title in zip(axes, ("wall time (s)", "peak RSS (MiB)", "images/s"), strict=True):
        ax.set_xscale("log")
        ax.set_xlabel("catalogue size N")
        ax.set_title(title)
        ax.grid(True, alpha=0.3)
    axes[0].set_yscale("log")
    axes[2].set_yscale("log")
    axes[0].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--sizes", default="1000", help="comma-separated N (default: 1000)")
    ap.add_argument("--store", choices=["local", "s3"], default="local")
    ap.add_argument("--stages", default="ingestion,formatting,validation,training")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--broken-share", type=float, default=0.01)
    ap.add_argument("--slow-s", type=float, default=0.2)
    ap.add_argument("--train-steps", type=int, default=20)
    ap.add_argument("--workdir", default="/tmp/bench-scale")
    ap.add_argument(
        "--reuse-project",
        action="store_true",
        help="keep the project (table, raw layer) of an earlier run at the same N and store; "
        "each stage's outputs are cleared before its first run (not with ingestion)",
    )
    ap.add_argument("--json", help="write the rows to this JSON file")
    ap.add_argument("--plot", help="write a PNG of the curves (from --json rows, merged)")
    ap.add_argument("--train-child", help=argparse.SUPPRESS)
    ap.add_argument("--kedro-env", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.train_child:
        return train_child(Path(args.train_child), args.train_steps, args.kedro_env)
    args.stages = [s for s in args.stages.split(",") if s]
    if args.reuse_project and "ingestion" in args.stages:
        ap.error("--reuse-project re-measures formatting, validation or training, not ingestion")
    if args.reuse_project and args.store == "s3":
        ap.error("--reuse-project works with --store local (an S3 run makes a new bucket)")
    workdir = Path(args.workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    rows: list[dict] = []
    if args.json and Path(args.json).is_file():  # keep rows of other stores/sizes
        rows = [
            r
            for r in json.loads(Path(args.json).read_text())
            if not (
                r["store"] == args.store
                and str(r["n"]) in args.sizes.split(",")
                and r["stage"] in args.stages
            )
        ]
    if args.store == "s3":
        from support import servers

        with servers.moto_s3() as s3_url:
            for n in map(int, args.sizes.split(",")):
                rows += run_size(n, args, workdir, s3_url)
    else:
        for n in map(int, args.sizes.split(",")):
            rows += run_size(n, args, workdir, None)
    print("\n== bench_scale")
    print(f"{'stage':<11}{'store':<7}{'n':>8}{'wall_s':>9}{'img/s':>9}{'rss_mb':>9}{'rerun_s':>9}")
    for r in rows:
        print(
            f"{r['stage']:<11}{r['store']:<7}{r['n']:>8}{r['wall_s']:>9}"
            f"{r['images_per_s'] or '-':>9}{r['peak_rss_mb']:>9}{r['rerun_s'] or '-':>9}"
        )
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=2))
    if args.plot:
        plot(rows, Path(args.plot))
    return 0


if __name__ == "__main__":
    sys.exit(main())
