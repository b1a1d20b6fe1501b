"""``plants-mlops demo``: the whole flow, end to end, offline, on the embedded default.

seed the plants_data table -> run every pipeline (through ZenML on the ``local`` stack, or
plain Kedro sessions with ``--kedro``) -> start the API on the champion, predict a few
held-out images -> run the monitoring pipeline -> stop what it started.

The console shows one line per stage (and per training epoch, or the linear probe's one
line) and the results; everything else Kedro, ZenML, MLflow and the API log goes to
``data/08_reporting/demo-<UTC time>.log``, named at the start and at the end.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import logging
import os
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TextIO

from plants_mlops.contracts import STAGES
from plants_mlops.errors import UserFacingError
from plants_mlops.orchestration.summaries import StepSummary, listening
from plants_mlops.progress import PROGRESS
from plants_mlops.summaries import StageSummary

BIN = Path(sys.executable).parent
REPORTING = Path("data") / "08_reporting"

log = logging.getLogger("plants_mlops.demo")
# Per-prediction lines: the log file only.
detail = logging.getLogger("plants_mlops.demo.detail")
# Training logs one line per epoch (the linear probe: one line) there; the console shows
# them too.
EPOCH_LOGGER = "plants_mlops.model.train"
# What the stage line shows, from a stage's typed summary: (where, name, label), where is
# "counts" or "metrics" (the summary's dicts) or "field" (one of its fields).
_DETAILS: dict[str, tuple[tuple[str, str, str], ...]] = {
    "ingestion": (
        ("counts", "rows", "rows"),
        ("counts", "fetched", "fetched"),
        ("counts", "already_stored", "already stored"),
        ("counts", "failed", "failed"),
    ),
    "formatting": (("counts", "dataset_images", "images"),),
    "curation": (
        ("counts", "queued", "to review"),
        ("counts", "label_issues", "label issues"),
        ("counts", "near_duplicate_pairs", "near-duplicate pairs"),
    ),
    "validation": (("counts", "checks", "checks"),),
    "training": (("metrics", "test_f1_macro", "test F1"),),
    "evaluation": (
        ("metrics", "test_f1_macro", "test F1"),
        ("metrics", "test_accuracy", "accuracy"),
        ("field", "champion_version", "champion"),
    ),
    "behaviour": (
        ("metrics", "invariance_min", "labels kept, worst edit"),
        ("metrics", "ood_flagged", "out-of-distribution photos flagged"),
        ("metrics", "false_flags", "test images flagged"),
    ),
    "registry": (("field", "model_version", "version"),),
}


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("demo", help="run the whole flow end to end on the local default")
    p.add_argument(
        "--kedro",
        action="store_true",
        help="run the pipelines with plain Kedro sessions instead of ZenML",
    )
    p.add_argument("--no-serve", action="store_true", help="skip the API and monitoring part")
    p.add_argument(
        "--predictions",
        type=int,
        default=60,
        help="held-out test images to send to the API (monitoring needs >= 30)",
    )
    p.set_defaults(handler=run_demo)


# -- logging: progress on the console, everything in the file ---------------------------


class ConsoleFilter(logging.Filter):
    """Lets through the demo's own lines, training's one line per epoch (or the linear
    probe's one line) and the progress lines of long steps, nothing else."""

    def filter(self, record: logging.LogRecord) -> bool:
        if record.name == log.name or getattr(record, PROGRESS, False):
            return True
        return record.name == EPOCH_LOGGER and str(record.msg).startswith(
            ("epoch ", "early stopping", "linear probe")
        )


class _ConsoleFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        text = record.getMessage()
        return text if record.name == log.name else f"      {text}"


def stage_line(index: int, total: int, summary: StageSummary) -> str:
    """``[3/6] validation ... passed (12 checks) in 3.1 s`` from a stage's typed summary."""
    shown = []
    for where, name, label in _DETAILS.get(summary.stage, ()):
        if where == "counts":
            count = summary.counts.get(name)
            shown.extend([] if count is None else [f"{count} {label}"])
        elif where == "metrics":
            metric = summary.metrics.get(name)
            shown.extend([] if metric is None else [f"{label} {metric:.4f}"])
        elif (value := getattr(summary, name)) is not None:
            shown.append(f"{label} {value}")
    verdict = summary.verdict or "done"
    extra = f" ({', '.join(shown)})" if shown else ""
    took = f" in {summary.duration_s:.1f} s" if isinstance(summary, StepSummary) else ""
    return f"[{index}/{total}] {summary.stage} ... {verdict}{extra}{took}"


class StageProgress:
    """The demo's stage line for each stage summary the run publishes
    (``orchestration.summaries.publish``), so the console follows a pipeline that runs
    inside ZenML or plain Kedro sessions."""

    def __init__(self, stages: tuple[str, ...] = STAGES) -> None:
        self.stages = stages
        self.seen: list[str] = []

    def __call__(self, summary: StepSummary) -> None:
        if summary.stage not in self.stages:
            return
        at = self.stages.index(summary.stage)
        self.catch_up(at)
        self.seen.append(summary.stage)
        log.info(stage_line(at + 1, len(self.stages), summary))

    def catch_up(self, upto: int | None = None) -> None:
        """A line for each stage before ``upto`` (all when None) that published nothing: a
        step ZenML took from its cache does not run."""
        for i, stage in enumerate(self.stages[:upto]):
            if stage not in self.seen:
                self.seen.append(stage)
                cached = StageSummary(stage=stage, verdict="cached")
                log.info(stage_line(i + 1, len(self.stages), cached))


@dataclass
class DemoLogging:
    """The handlers :func:`setup_logging` installed; ``close`` puts the root logger back."""

    path: Path
    added: list[logging.Handler]
    removed: list[logging.Handler]
    root_level: int
    progress: StageProgress = field(default_factory=StageProgress)
    listening: contextlib.ExitStack = field(default_factory=contextlib.ExitStack)

    def close(self) -> None:
        root = logging.getLogger()
        self.listening.close()
        for handler in self.added:
            root.removeHandler(handler)
            handler.close()
        for handler in self.removed:
            root.addHandler(handler)
        root.setLevel(self.root_level)


def _keeps(handler: logging.Handler) -> bool:
    # ZenML's log-storage handler stores step logs with the run (no console output).
    return type(handler).__name__ == "ZenMLLoggingHandler"


def setup_logging(
    path: Path, console: TextIO | None = None, stages: tuple[str, ...] = STAGES
) -> DemoLogging:
    """Console: the demo's lines and training epochs. File: every record at INFO or above,
    from every logger (Kedro, ZenML, MLflow included).

    Call it after Kedro's project and ZenML are imported: both put their own console
    handlers on the root logger (Kedro's ``dictConfig`` on import and on the first
    ``bootstrap_project``, ZenML's ``init_logging`` on ``import zenml``). Those are taken
    off here; their records still reach the root logger, hence the file.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    root = logging.getLogger()
    saved_level = root.level
    removed = [h for h in root.handlers if not _keeps(h)]
    for handler in removed:
        root.removeHandler(handler)
    root.setLevel(logging.INFO)
    to_file = logging.FileHandler(path, encoding="utf-8")
    to_file.setLevel(logging.INFO)
    to_file.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    to_console = logging.StreamHandler(console or sys.stdout)
    to_console.addFilter(ConsoleFilter())
    to_console.setFormatter(_ConsoleFormatter())
    for handler in (to_file, to_console):
        root.addHandler(handler)
    for name in (log.name, EPOCH_LOGGER):
        logging.getLogger(name).setLevel(logging.INFO)
    state = DemoLogging(path, [to_file, to_console], removed, saved_level, StageProgress(stages))
    state.listening.enter_context(listening(state.progress))
    return state


# Kedro applies a logging configuration when it is imported, with a console handler on the
# root logger (rich); this one has none (the demo adds its own handlers afterwards).
_KEDRO_LOGGING = """version: 1
disable_existing_loggers: false
loggers:
  kedro:
    level: INFO
root:
  level: INFO
  handlers: []
"""
_KEDRO_LOGGING_PATH = Path(tempfile.gettempdir()) / "plants-mlops-demo-logging.yml"


def _quiet_environment() -> None:
    """Before Kedro, ZenML or MLflow is imported: their records go to logging (then the
    file), not to consoles of their own."""
    os.environ.setdefault("KEDRO_DISABLE_TELEMETRY", "true")
    if "KEDRO_LOGGING_CONFIG" not in os.environ:
        _KEDRO_LOGGING_PATH.write_text(_KEDRO_LOGGING)
        os.environ["KEDRO_LOGGING_CONFIG"] = str(_KEDRO_LOGGING_PATH)
    os.environ.setdefault("ZENML_LOGGING_VERBOSITY", "INFO")  # NOTSET would disable logging
    os.environ.setdefault("MLFLOW_CONFIGURE_LOGGING", "false")  # mlflow's own stderr handler
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")


class _LogStream(io.TextIOBase):
    """A stdout/stderr stand-in that turns each printed line into a log record."""

    def __init__(self, level: int) -> None:
        self.level = level
        self.pending = ""

    def writable(self) -> bool:
        return True

    def write(self, text: str) -> int:
        self.pending += text
        *lines, self.pending = self.pending.split("\n")
        for line in lines:
            if line.strip():
                logging.getLogger("plants_mlops.demo.output").log(self.level, "%s", line)
        return len(text)


@contextlib.contextmanager
def stage_console(
    project: Path,
    name: str,
    stages: tuple[str, ...] = STAGES,
    zenml: bool = True,
    reporting: Path = REPORTING,
) -> Iterator[DemoLogging]:
    """The demo's console around a block: one line per stage on the console, every record
    (Kedro, ZenML, MLflow, what libraries print) in ``<reporting>/<name>-<UTC>.log``
    (``reporting``: relative to ``project``, ``data/08_reporting`` by default; a task's
    run: its data root's), named at the start and the end. A failure is one line naming
    the file."""
    _quiet_environment()
    from kedro.framework.startup import bootstrap_project

    bootstrap_project(project)
    if zenml:
        import zenml as _zenml  # noqa: F401  (its logging setup must happen before ours)
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    logs = setup_logging(project / reporting / f"{name}-{stamp}.log", stages=stages)
    log.info("full log: %s", logs.path)
    try:
        with (
            contextlib.redirect_stdout(_LogStream(logging.INFO)),
            contextlib.redirect_stderr(_LogStream(logging.WARNING)),
        ):
            yield logs
    except Exception as exc:
        detail.exception("%s stopped", name)  # the traceback: the file only
        logs.close()
        if isinstance(exc, UserFacingError):
            raise UserFacingError(f"{exc} (full log: {logs.path})") from None
        raise UserFacingError(
            f"{name} stopped: {type(exc).__name__}: {exc} (traceback in {logs.path})"
        ) from None
    log.info("full log: %s", logs.path)
    logs.close()


# -- the demo ---------------------------------------------------------------------------


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run_demo(args: argparse.Namespace) -> int:
    started = time.monotonic()
    with stage_console(Path.cwd(), "demo", zenml=not args.kedro) as logs:
        _demo(args, Path.cwd(), logs)
        log.info(
            "demo finished in %.0f s; `plants-mlops serve` keeps the API up, "
            "`plants-mlops dashboards` opens the UIs.",
            time.monotonic() - started,
        )
    return 0


def _demo(args: argparse.Namespace, project: Path, logs: DemoLogging) -> None:
    from plants_mlops import db, task

    # the shipped manifest into the shipped task's table (conf/base/task.yml's labels)
    report = db.seed(db.make_engine(None), labels=task.load(None, project / "conf").labels)
    log.info("plants_data: %s", report.lines()[0])
    # No progress bars on the console; each stage and epoch has its line.
    params = {"ingestion": {"progress": False}, "training": {"quiet": True}}
    # What libraries print (MLflow's "Created version ...") goes to the file too (stage_console).
    summaries = _run_kedro(project, params) if args.kedro else _run_zenml(project, params, logs)

    review = REPORTING / "curation_review.html"
    if review.exists():
        log.info("curation review queue: %s (`plants-mlops data review` lists it)", review)
    registry = summaries.get("registry", {})
    f1 = (summaries.get("evaluation", {}).get("metrics") or {}).get("test_f1_macro")
    score = f" (test F1 {f1:.4f})" if f1 is not None else ""
    version, verdict = registry.get("model_version", "?"), registry.get("verdict")
    choice = REPORTING / "serving_precision.json"
    if choice.exists():
        precision = json.loads(choice.read_text())
        log.info("serving model: %s (%s)", precision["precision"], precision["reason"])
    detector = REPORTING / "ood_detector.json"
    if detector.exists() and (ood := json.loads(detector.read_text())):
        train = ood.get("train_flag_rate")
        log.info(
            "OOD detection: %s, threshold %.4f (flags %.1f %% of validation images%s)",
            ood["method"],
            ood["threshold"],
            100 * ood["val_flag_rate"],
            "" if train is None else f", {100 * train:.1f} % of training images left out",
        )
    behaviour = REPORTING / "behaviour_report.json"
    if behaviour.exists():
        figures = json.loads(behaviour.read_text())["metrics"]
        log.info(
            "behaviour: %s",
            ", ".join(f"{k} {v:.3f}" for k, v in figures.items() if v is not None),
        )
    if verdict == "pass":
        log.info("champion: version %s%s", version, score)
    else:
        log.info("registry: version %s %s%s; the champion stays", version, verdict, score)
    card = REPORTING / "model_card.json"
    if card.exists() and str(json.loads(card.read_text()).get("model_version")) == str(version):
        log.info(
            "model card of version %s: %s (and .md; in MLflow: %s)",
            version,
            REPORTING / "model_card.html",
            json.loads(card.read_text())["links"]["model_card"],
        )
    if not args.no_serve:
        refusal = nothing_to_serve(summaries, REPORTING / "registry_decision.json")
        if refusal:
            raise UserFacingError(refusal)
        _serve_predict_monitor(project, args.predictions, logs)


def nothing_to_serve(summaries: dict[str, dict[str, Any]], decision: Path) -> str | None:
    """Why the API part cannot run (the gate refused the only model there is), or None.
    Without it the demo would wait minutes for an API that has no champion to load."""
    registry = summaries.get("registry", {})
    had_champion = summaries.get("evaluation", {}).get("champion_version")
    if registry.get("verdict") == "pass" or had_champion:
        return None
    version = registry.get("model_version", "?")
    reasons = []
    if decision.exists():
        reasons = json.loads(decision.read_text()).get("refused_because") or []
    why = "; ".join(reasons) or "see `plants-mlops registry list`"
    return (
        f"the gate refused version {version} ({why}) and there is no earlier champion to "
        f"serve; `plants-mlops registry promote {version} --force --reason TEXT` serves it "
        "anyway (recorded in the audit), or rerun when the machine is less busy"
    )


def _run_kedro(project: Path, params: dict[str, Any]) -> dict[str, dict[str, Any]]:
    from plants_mlops.orchestration.kedro_stage import run_stage

    summaries: dict[str, dict[str, Any]] = {}
    upstream = None
    for stage in STAGES:  # each stage's line: StageProgress, from the summary it publishes
        upstream = run_stage(stage, project, "local", params, upstream).summary
        summaries[stage] = upstream.model_dump()
    return summaries


def _run_zenml(
    project: Path, params: dict[str, Any], logs: DemoLogging
) -> dict[str, dict[str, Any]]:
    from plants_mlops.orchestration.pipeline import run_pipeline
    from plants_mlops.orchestration.stacks import register_stack

    spec = register_stack("local", project)
    # ZenML gives alembic a console handler of its own when it migrates its store.
    alembic = logging.getLogger("alembic")
    for handler in [h for h in alembic.handlers if type(h).__name__ == "ZenMLConsoleHandler"]:
        alembic.removeHandler(handler)
    log.info("ZenML stack %s active (Kedro env %s)", spec.name, spec.kedro_env)
    result = run_pipeline(project, params=params)
    logs.progress.catch_up()
    log.info("ZenML run %s: %s", result.run_name, result.status)
    if result.status != "completed":
        raise UserFacingError(f"the ZenML run {result.run_name} ended {result.status}")
    return result.summaries


def _serve_predict_monitor(project: Path, n_predictions: int, logs: DemoLogging) -> None:
    import httpx
    import pandas as pd

    from plants_mlops.orchestration.dashboards import wait_http
    from plants_mlops.orchestration.kedro_stage import run_stage
    from plants_mlops.serving.config import default_workers

    port = _free_port()
    base = f"http://127.0.0.1:{port}"
    serve_log = logs.path.with_suffix(".serve.log")
    cli = str(BIN / "plants-mlops")
    # The API logs to its own console (captured here), not through the demo's Kedro setting.
    env = {
        k: v
        for k, v in os.environ.items()
        if not (k == "KEDRO_LOGGING_CONFIG" and v == str(_KEDRO_LOGGING_PATH))
    }
    # At most two workers: the multi-worker path runs, and a many-core laptop does not load
    # one model (~400 MiB) per core for 59 sequential requests.
    workers = min(2, default_workers())
    with open(serve_log, "wb") as out:
        server = subprocess.Popen(
            [cli, "serve", "--host", "127.0.0.1", "--port", str(port), "--workers", str(workers)],
            stdout=out,
            stderr=subprocess.STDOUT,
            env=env,
        )
        try:
            wait_http(f"{base}/ready", timeout=120, proc=server)  # 503 until the model loads
            model = httpx.get(f"{base}/model", timeout=10).json()
            index = pd.read_parquet(Path("data") / "03_primary" / "dataset_index.parquet")
            test = index[index["split"] == "test"].head(n_predictions)
            correct, latencies = 0, []
            for row in test.itertuples():
                path = next((Path("data") / "01_raw" / row.label).glob(f"{row.sha256}.*"))
                r = httpx.post(
                    f"{base}/predict",
                    timeout=30,
                    files={"file": (path.name, path.read_bytes(), "image/jpeg")},
                )
                r.raise_for_status()
                body = r.json()
                correct += body["label"] == row.label
                latencies.append(float(body.get("latency_ms", 0.0)))
                detail.info(
                    "%s true=%s predicted=%s p=%.3f %.1f ms",
                    path.name,
                    row.label,
                    body["label"],
                    max(body["probabilities"].values()),
                    latencies[-1],
                )
            p50 = sorted(latencies)[len(latencies) // 2] if latencies else 0.0
            log.info(
                "API %s: model version %s, %d/%d held-out images correct, p50 %.1f ms",
                base,
                model.get("version"),
                correct,
                len(latencies),
                p50,
            )
        except UserFacingError as exc:
            raise UserFacingError(f"{exc}; see {serve_log}") from None
        finally:
            server.terminate()  # clean stop: the prediction log is flushed
            server.wait(timeout=60)
            _append(logs, serve_log)

    started = time.perf_counter()
    run_stage("monitoring", project, "local")
    verdict = json.loads((REPORTING / "monitoring_verdict.json").read_text())
    log.info(
        "monitoring ... %s (%s distinct images in the window, %s repeats) in %.1f s",
        verdict.get("status", "done"),
        verdict.get("n_current", "?"),
        verdict.get("n_repeated", 0),
        time.perf_counter() - started,
    )
    for report in sorted(REPORTING.glob("*drift*.html")):
        log.info("drift report: %s", report)


def _append(logs: DemoLogging, serve_log: Path) -> None:
    """The API's own log goes into the demo's log file, after what the demo logged so far."""
    text = serve_log.read_text(errors="replace") if serve_log.exists() else ""
    logging.getLogger("plants_mlops.demo.serve").info(
        "---- plants-mlops serve output ----\n%s---- end of plants-mlops serve output ----", text
    )
    serve_log.unlink(missing_ok=True)
