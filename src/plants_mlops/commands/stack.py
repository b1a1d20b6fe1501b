"""``plants-mlops stack``, ``plants-mlops pipeline`` and ``plants-mlops dashboards``.

- ``stack register {local,minio,gpu}`` registers (or updates) and activates a ZenML stack.
- ``stack list`` shows the stacks and which one is active.
- ``pipeline run`` runs the ZenML pipeline over the Kedro pipelines on a stack.
- ``pipeline schedule --cron EXPR`` schedules it where the orchestrator can, else prints
  the crontab line that does the same.
- ``dashboards`` starts the ZenML dashboard, kedro-viz and the MLflow UI (``--stop``).
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import sys
from pathlib import Path

from plants_mlops.contracts import STACK_NAMES as STACKS
from plants_mlops.errors import UserFacingError


def register(sub: argparse._SubParsersAction) -> None:
    stack = sub.add_parser("stack", help="register, activate and list the ZenML stacks")
    ssub = stack.add_subparsers(dest="stack_command", metavar="ACTION", required=True)
    reg = ssub.add_parser("register", help="register (or update) a stack and activate it")
    reg.add_argument("name", choices=STACKS)
    reg.add_argument("--no-activate", action="store_true", help="register without activating")
    reg.add_argument("--project", default=".", help="the Kedro project (default: .)")
    reg.set_defaults(handler=_stack_register)
    lst = ssub.add_parser("list", help="list the registered stacks")
    lst.add_argument("--json", action="store_true", help="machine-readable output")
    lst.set_defaults(handler=_stack_list)

    pipe = sub.add_parser("pipeline", help="run or schedule the ZenML pipeline")
    psub = pipe.add_subparsers(dest="pipeline_command", metavar="ACTION", required=True)
    run = psub.add_parser("run", help="run the Kedro pipelines as one ZenML pipeline")
    _run_options(run)
    run.add_argument("--no-cache", action="store_true", help="run every step, reuse nothing")
    run.add_argument("--run-name", help="ZenML run name (default: generated)")
    run.add_argument(
        "--dry-run",
        action="store_true",
        help="compile only: print each step's stack settings, run nothing",
    )
    run.add_argument(
        "--json-out",
        metavar="FILE",
        help="also write the run and its step summaries to FILE as JSON",
    )
    run.set_defaults(handler=_pipeline_run)
    sch = psub.add_parser("schedule", help="run the pipeline periodically (cron expression)")
    _run_options(sch)
    sch.add_argument("--cron", required=True, help='cron expression, e.g. "0 3 * * 1"')
    sch.set_defaults(handler=_pipeline_schedule)

    dash = sub.add_parser("dashboards", help="start the ZenML dashboard, kedro-viz, mlflow ui")
    dash.add_argument("--stop", action="store_true", help="stop what a previous call started")
    dash.add_argument("--project", default=".", help="the Kedro project (default: .)")
    dash.add_argument(
        "--only", nargs="+", choices=("zenml", "kedro-viz", "mlflow"), help="start only these"
    )
    dash.set_defaults(handler=_dashboards)


def _run_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--stack", choices=STACKS, help="register/activate this stack first")
    p.add_argument("--env", help="Kedro environment (default: the stack's, e.g. minio)")
    p.add_argument(
        "--pipelines",
        nargs="+",
        metavar="NAME",
        help="run only these stages (default: all that exist, in order)",
    )
    p.add_argument(
        "--params",
        nargs="+",
        metavar="KEY=VALUE",
        default=[],
        help="Kedro runtime parameters, e.g. training.epochs=1",
    )
    p.add_argument("--project", default=".", help="the Kedro project (default: .)")


def _project(args: argparse.Namespace) -> Path:
    project = Path(args.project).resolve()
    if not (project / "pyproject.toml").exists() or not (project / "conf").is_dir():
        raise UserFacingError(
            f"{project} is not the Kedro project (run from its root or pass --project)"
        )
    return project


def _stack_register(args: argparse.Namespace) -> int:
    from plants_mlops.orchestration.stacks import register_stack

    spec = register_stack(args.name, _project(args), activate=not args.no_activate)
    state = "registered" if args.no_activate else "registered and active"
    print(f"stack {spec.name} {state} (Kedro env: {spec.kedro_env})")
    for comp in spec.components:
        print(f"  {comp.type:<19} {comp.name} [{comp.flavor}]")
    for note in spec.notes:
        print(f"  note: {note}")
    from plants_mlops.orchestration.stacks import validate_stack

    problem = validate_stack(spec.name)
    print(f"  validation: {problem or 'ok'}")
    if problem and spec.name == "gpu":
        print(
            "  (the gpu stack needs a kube context in your kubeconfig, a container registry "
            "you can push to and Docker for image builds: see docs/zenml.md)"
        )
    return 0


def _stack_list(args: argparse.Namespace) -> int:
    from plants_mlops.orchestration.stacks import list_stacks

    rows = list_stacks()
    if args.json:
        print(json.dumps(rows, indent=2))
        return 0
    for row in rows:
        mark = "*" if row["active"] else " "
        comps = ", ".join(f"{t}={'/'.join(n)}" for t, n in sorted(row["components"].items()))
        print(f"{mark} {row['name']:<10} env={row['kedro_env'] or '-':<6} {comps}")
        for kind, where in row["stores"].items():
            if where:
                print(f"    {kind}: {where}")
    return 0


def _activate(args: argparse.Namespace, project: Path) -> None:
    if args.stack:
        from plants_mlops.orchestration.stacks import register_stack

        register_stack(args.stack, project)


def _pipeline_run(args: argparse.Namespace) -> int:
    project = _project(args)
    if args.dry_run:
        _activate(args, project)
        from plants_mlops.orchestration.pipeline import nested_params, prepare_run

        plan = prepare_run(
            project, args.env, args.pipelines, nested_params(args.params), not args.no_cache
        ).plan()
        text = json.dumps(plan, indent=2, default=str)
        if args.json_out:
            Path(args.json_out).write_text(text)
        print(text)
        return 0

    from plants_mlops.commands.demo import log as console
    from plants_mlops.commands.demo import stage_console
    from plants_mlops.contracts import STAGES as DEFAULT_STAGES

    wanted = args.pipelines or DEFAULT_STAGES
    stages = tuple(s for s in (*DEFAULT_STAGES, "monitoring") if s in wanted)
    # One line per stage on the console (as `make demo` shows), everything else in a file:
    # the task's own reporting folder.
    with stage_console(
        project, "pipeline-run", stages, reporting=_reporting(project, args.env)
    ) as logs:
        _activate(args, project)
        from plants_mlops.orchestration.pipeline import nested_params, run_pipeline

        result = run_pipeline(
            project,
            env=args.env,
            stages=args.pipelines,
            params=nested_params(args.params),
            enable_cache=not args.no_cache,
            run_name=args.run_name,
        )
        logs.progress.catch_up()
        if args.json_out:
            Path(args.json_out).write_text(json.dumps(result.__dict__, indent=2, default=str))
        console.info(
            "ZenML run %s (%s) on stack %s, Kedro env %s",
            result.run_name,
            result.status,
            result.stack,
            result.env,
        )
        for line in _result_lines(result):
            console.info("%s", line)
    return 0 if result.status == "completed" else 1


def _reporting(project: Path, env: str | None) -> Path:
    """The folder a run's full log goes to: ``08_reporting`` of the task's data root
    (``data/ENV/08_reporting`` for a task ``--env ENV``), ``data/08_reporting`` without
    ``--env`` or when the root is no local folder (``--env minio``: s3://)."""
    from plants_mlops import task
    from plants_mlops.commands.demo import REPORTING

    if env is None:
        return REPORTING
    root = task.load(env, project / "conf").root
    return REPORTING if "://" in root else Path(root) / "08_reporting"


def _result_lines(result) -> list[str]:
    """What to open next: the model version, the MLflow run, the champion."""
    lines = []
    for stage in result.stages:
        summary = result.summaries.get(stage, {})
        if summary.get("mlflow_run_id") and stage == "training":
            lines.append(f"  MLflow run {summary['mlflow_run_id']}")
        if stage == "registry" and summary.get("model_version"):
            verdict = summary.get("verdict") or "?"
            lines.append(f"  registered version {summary['model_version']} (gate: {verdict})")
    return lines


def check_cron(expression: str) -> str:
    """``expression`` when it is a five-field cron expression, else a one-line error."""
    from croniter import croniter

    if len(expression.split()) != 5 or not croniter.is_valid(expression):
        raise UserFacingError(
            f"--cron {expression!r} is not a cron expression: five fields, minute hour "
            'day-of-month month day-of-week, e.g. "0 3 * * 1" (Mondays at 03:00)'
        )
    return expression


def _pipeline_schedule(args: argparse.Namespace) -> int:
    check_cron(args.cron)
    project = _project(args)
    _activate(args, project)
    from plants_mlops.orchestration.pipeline import (
        nested_params,
        orchestrator_schedules,
        run_pipeline,
    )

    name, schedulable = orchestrator_schedules()
    if schedulable:
        run_pipeline(
            project,
            env=args.env,
            stages=args.pipelines,
            params=nested_params(args.params),
            cron=args.cron,
        )
        print(f"scheduled `{args.cron}` on orchestrator {name}")
        return 0
    print(f"# orchestrator {name} runs no schedules itself; add this line with `crontab -e`:")
    print(cron_line(project, args))
    return 0


def cron_line(project: Path, args: argparse.Namespace) -> str:
    """The crontab line that runs the same pipeline (for orchestrators without schedules)."""
    argv = [str(Path(sys.executable).parent / "plants-mlops"), "pipeline", "run"]
    if args.env:
        argv += ["--env", args.env]
    if args.pipelines:
        argv += ["--pipelines", *args.pipelines]
    if args.params:
        argv += ["--params", *args.params]
    keep = [
        f"{k}={shlex.quote(v)}"
        for k, v in sorted(os.environ.items())
        if k in ("ZENML_CONFIG_PATH", "MLFLOW_TRACKING_URI", "PLANTS_DB_URL")
    ]
    cmd = " ".join(shlex.quote(a) for a in argv)
    env = (" ".join(keep) + " ") if keep else ""
    log = project / "data" / "scheduled-runs.log"
    return (
        f"{args.cron} cd {shlex.quote(str(project))} && {env}{cmd} >> {shlex.quote(str(log))} 2>&1"
    )


def _dashboards(args: argparse.Namespace) -> int:
    from plants_mlops.orchestration import dashboards

    project = _project(args)
    if args.stop:
        for line in dashboards.stop_all(project):
            print(line)
        return 0
    urls = dashboards.start_all(project, only=args.only)
    for name, url in urls.items():
        print(f"{name:<10} {url}")
    if "zenml" in urls:
        latest = dashboards.latest_run_url(urls["zenml"])
        print(f"{'latest run':<10} {latest or '(no pipeline run yet)'}")
    print("stop them with `plants-mlops dashboards --stop`")
    return 0
