"""``plants-mlops task init NAME --labels a,b,c``: a new task beside the shipped one (its
own Kedro environment ``conf/NAME``); ``plants-mlops task show``: a task as the stages
read it."""

from __future__ import annotations

import argparse
import json


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "task",
        help="the task: its labels, title and thresholds (conf/ENV/task.yml)",
    )
    parser.set_defaults(handler=lambda _args: parser.print_help() or 2)
    sub = parser.add_subparsers(dest="task_command", metavar="ACTION")

    init = sub.add_parser(
        "init",
        help="write conf/NAME/ for a new task (run it with --env NAME)",
        description="Writes conf/NAME/task.yml (labels, title, data-dependent thresholds) "
        "and conf/NAME/globals.yml (its own data root data/NAME, SQLite table, MLflow "
        "experiment and registered model NAME-classifier), and with --mirror an ingestion "
        "mirror. Then: plants-mlops db seed --env NAME --csv YOUR.csv; kedro run --env NAME "
        "(docs/own-data.md).",
    )
    init.add_argument("name", metavar="NAME", help="the task's name and environment")
    init.add_argument("--labels", required=True, help="comma-separated labels, in class order")
    init.add_argument("--title", help="the upload page's heading and the OpenAPI title")
    init.add_argument(
        "--mirror",
        metavar="PREFIX=TO",
        help="read the manifest's URLs under PREFIX from TO (a local folder, or the URL of "
        "`plants-mlops data serve DIR`)",
    )
    init.add_argument("--conf", default="conf", help="the project's conf folder")
    init.set_defaults(handler=init_command)

    show = sub.add_parser("show", help="the task of an environment, as the stages read it")
    show.add_argument("--env", help="the task's environment (default: the base task)")
    show.add_argument("--conf", default="conf", help="the project's conf folder")
    show.set_defaults(handler=show_command)


def init_command(args: argparse.Namespace) -> int:
    from plants_mlops import task
    from plants_mlops.errors import UserFacingError

    mirror: dict[str, str] = {}
    if args.mirror:
        prefix, sep, to = args.mirror.partition("=")
        if not sep or not prefix or not to:
            raise UserFacingError(f"--mirror {args.mirror!r}: expected PREFIX=TO")
        mirror = {"mirror_prefix": prefix, "mirror_to": to}
    labels = task.parse_labels(args.labels)
    written = task.init(args.conf, args.name, labels, title=args.title, **mirror)
    for path in written:
        print(f"wrote {path}")
    print(
        f"next: plants-mlops db seed --env {args.name} --csv YOUR.csv, then "
        f"kedro run --env {args.name} (docs/own-data.md)"
    )
    return 0


def show_command(args: argparse.Namespace) -> int:
    from plants_mlops import task

    ctx = task.load(args.env, args.conf)
    print(
        json.dumps(
            {
                "env": ctx.env,
                **ctx.task.model_dump(mode="json"),
                "db_url": ctx.db_url,
                "root": ctx.root,
                "experiment": ctx.experiment,
                "model_name": ctx.model_name,
            },
            indent=2,
        )
    )
    return 0
