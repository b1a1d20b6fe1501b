"""``plants-mlops registry list|promote|rollback|audit``: the MLflow Model Registry by hand.

The tracking store is ``--tracking-uri``, else ``MLFLOW_TRACKING_URI``, else the embedded
``sqlite:///data/mlflow.db`` (or, with ``--env``, the store the task's registry stage
uses). The registered model is ``--model``, else the task's (``--env ENV``: its
``model_name`` in conf/ENV/globals.yml), else plants-classifier. Every champion move is
checked (the version must carry a passing gate verdict, or ``--force --reason``, and its
model must load) and recorded in the audit trail with who, when and why.
"""

from __future__ import annotations

import argparse
import json

from plants_mlops.contracts import REGISTERED_MODEL_NAME


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "registry",
        help="list, promote and roll back versions of the registered model",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "--tracking-uri",
        help="MLflow tracking URI (default: MLFLOW_TRACKING_URI or sqlite:///data/mlflow.db)",
    )
    parser.add_argument(
        "--model", help=f"registered model name (default: the task's, else {REGISTERED_MODEL_NAME})"
    )
    _env_option(parser, None)
    sub = parser.add_subparsers(dest="registry_command", metavar="ACTION", required=True)

    p = sub.add_parser("list", help="versions with their aliases, metrics and verdicts")
    _env_option(p)
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.set_defaults(handler=list_command)

    p = sub.add_parser("promote", help="make VERSION the champion (after checking it loads)")
    _env_option(p)
    p.add_argument("version")
    p.add_argument(
        "--force",
        action="store_true",
        help="promote a version without a passing gate verdict (needs --reason; marked in the audit)",
    )
    p.add_argument("--reason", help="recorded in the audit trail (default: manual promotion)")
    p.set_defaults(handler=promote_command)

    p = sub.add_parser("rollback", help="return the champion alias to the previous champion")
    _env_option(p)
    p.add_argument("--to", metavar="VERSION", help="roll back to this version instead")
    p.add_argument(
        "--force",
        action="store_true",
        help="roll back to a version without a passing gate verdict (needs --reason)",
    )
    p.add_argument("--reason", help="recorded in the audit trail (default: manual rollback)")
    p.set_defaults(handler=rollback_command)

    p = sub.add_parser("audit", help="every alias move: who, when, why")
    _env_option(p)
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.set_defaults(handler=audit_command)


def _env_option(parser: argparse.ArgumentParser, default=argparse.SUPPRESS) -> None:
    """``--env`` before the action or after it (the action's copy leaves the group's value
    alone when not given)."""
    parser.add_argument(
        "--env",
        default=default,
        help="the task's Kedro environment (conf/ENV): its registered model and store "
        "(default: the base task's)",
    )


def _resolve(args: argparse.Namespace) -> None:
    """``args.model`` and ``args.tracking_uri``: the flags, else those of the task ``--env``
    names, else plants-classifier and MLFLOW_TRACKING_URI or the embedded store."""
    if args.env is not None:
        from plants_mlops import task
        from plants_mlops.model import tracking

        ctx = task.load(args.env)
        args.model = args.model or ctx.model_name
        args.tracking_uri = args.tracking_uri or tracking.tracking_uri(ctx.tracking_uri)
    args.model = args.model or REGISTERED_MODEL_NAME


def _client(args: argparse.Namespace):
    from plants_mlops.model import tracking

    _resolve(args)
    return tracking.client(args.tracking_uri, must_exist=True)


def _fmt(value: float | None) -> str:
    return "-" if value is None else f"{value:.4f}"


def _emit(args: argparse.Namespace, items: list[dict], empty: str, line) -> int:
    """Print ``items`` as JSON (``--json``) or one ``line(item)`` each (``empty`` if none)."""
    if args.json:
        print(json.dumps(items, indent=2))
        return 0
    if not items:
        print(f"{args.model}: {empty}")
    for item in items:
        print(line(item))
    return 0


def list_command(args: argparse.Namespace) -> int:
    from plants_mlops.model import registry

    client = _client(args)  # (resolves args.model too)
    rows = registry.list_versions(client, args.model)
    if rows and not args.json:
        print(
            f"{'version':>7}  {'aliases':<20} {'verdict':<7} {'test_f1':>7} {'test_acc':>8}  "
            f"{'precision':<9}  {'created (UTC)':<25} run_id"
        )
    return _emit(
        args,
        rows,
        "no versions registered yet",
        lambda r: (
            f"{r['version']:>7}  {','.join(r['aliases']) or '-':<20} {r['verdict'] or '-':<7} "
            f"{_fmt(r['test_f1_macro']):>7} {_fmt(r['test_accuracy']):>8}  "
            f"{r['precision']:<9}  {r['created_at']:<25} {r['run_id'] or '-'}"
            + (f"\n{'':>9}refused: {r['refused_because']}" if r.get("refused_because") else "")
            + (f"\n{'':>9}model card: {r['model_card']}" if r.get("model_card") else "")
        ),
    )


def _print_move(entry: dict) -> None:
    print(
        f"{entry['alias']}: {entry['from_version'] or '(none)'} -> {entry['to_version']} "
        f"({entry['action']} by {entry['actor']} at {entry['at']}: {entry['reason']})"
    )


def promote_command(args: argparse.Namespace) -> int:
    from plants_mlops.model import registry

    client = _client(args)
    _print_move(registry.promote(client, args.version, args.reason, args.model, force=args.force))
    return 0


def rollback_command(args: argparse.Namespace) -> int:
    from plants_mlops.model import registry

    client = _client(args)
    _print_move(registry.rollback(client, args.to, args.reason, args.model, force=args.force))
    return 0


def audit_command(args: argparse.Namespace) -> int:
    from plants_mlops.model import registry

    client = _client(args)
    return _emit(
        args,
        registry.audit_trail(client, args.model),
        "no alias moves recorded yet",
        lambda e: (
            f"{e.get('at')}  {e.get('actor', '?'):<10} {e.get('action', '?'):<10} "
            f"{e.get('alias', '?')}: {e.get('from_version') or '(none)'} -> "
            f"{e.get('to_version') or '(none)'}  {e.get('reason', '')}"
        ),
    )
