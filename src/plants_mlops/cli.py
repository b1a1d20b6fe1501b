"""``plants-mlops``: the project's console script.

Each subcommand group lives in ``plants_mlops.commands.<module>`` and exposes
``register(subparsers)``. Modules keep heavy imports (torch, mlflow, zenml) inside their
handlers so that ``plants-mlops --help`` stays instant.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import os
import sys
from pathlib import Path

import click

from plants_mlops.errors import UserFacingError
from plants_mlops.project import is_project, use_project_zenml
from plants_mlops.secret_files import load_secret_files

# Order shown in --help.
COMMAND_MODULES = ("task", "data", "registry", "stack", "storage", "serve", "demo")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="plants-mlops",
        description="Image classification, from URLs to a monitored prediction API.",
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in COMMAND_MODULES:
        importlib.import_module(f"plants_mlops.commands.{name}").register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    os.environ.setdefault("KEDRO_DISABLE_TELEMETRY", "true")
    os.environ.setdefault("ZENML_ANALYTICS_OPT_IN", "false")
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        load_secret_files()
    except UserFacingError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    project = Path(getattr(args, "project", None) or ".").resolve()
    if is_project(project):  # before any handler imports ZenML
        use_project_zenml(project)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    logging.getLogger("httpx").setLevel(logging.WARNING)  # one line per request otherwise
    # MLflow logs every database error with its SQL before raising it; main() reports it
    # in one line (database_error).
    logging.getLogger("mlflow.store.db.utils").setLevel(logging.CRITICAL)
    if not getattr(args, "handler", None):
        parser.print_help()
        return 2
    try:
        return int(args.handler(args) or 0)
    except KeyboardInterrupt:
        return 130
    except UserFacingError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    except Exception as exc:
        message = database_error(exc)
        if message is None:
            raise
        print(f"error: {message}", file=sys.stderr)
        return 1


def database_error(exc: BaseException) -> str | None:
    """One line for an operational database error anywhere in ``exc``'s chain (a locked
    SQLite store, a server gone), or None when the error is something else."""
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        if type(current).__name__ == "OperationalError":
            detail = str(getattr(current, "orig", None) or current).splitlines()[0]
            if "locked" in detail:
                return (
                    f"the store is locked by another process ({detail}); "
                    "retry when that process has finished"
                )
            return f"database error: {detail}"
        current = current.__cause__ or current.__context__
    return None


@click.group(name="plants_mlops")
def cli() -> None:
    """Kedro imports ``<package>.cli`` and requires a ``cli`` click group in it (for project
    commands of ``kedro``); this project adds none there: its commands are ``plants-mlops``."""


if __name__ == "__main__":
    sys.exit(main())
