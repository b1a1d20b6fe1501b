"""``plants-mlops db seed`` and ``plants-mlops db status``: the plants_data table by hand."""

from __future__ import annotations

import argparse
import json


def register(subparsers: argparse._SubParsersAction) -> None:
    db_parser = subparsers.add_parser(
        "db", help="the plants_data table (image URLs and their ingestion status)"
    )
    db_sub = db_parser.add_subparsers(dest="db_command", metavar="ACTION")
    db_parser.set_defaults(handler=lambda _args: db_parser.print_help() or 2)

    common = argparse.ArgumentParser(add_help=False)
    common.add_argument(
        "--db-url",
        help="SQLAlchemy URL (default: $PLANTS_DB_URL, else sqlite:///data/plants.db)",
    )
    common.add_argument("--json", action="store_true", help="print JSON instead of text")

    seed = db_sub.add_parser(
        "seed",
        parents=[common],
        help="add the manifest's rows that are not in the table yet (idempotent)",
        description="Insert the CSV's rows (columns url_source,label; optional sha256 = "
        "expected content hash) whose url_source is not in the table. Re-seeding changes "
        "nothing; a row with an unknown label is refused and the rest still loads.",
    )
    seed.add_argument("--csv", help="a CSV to load (default: the shipped 400-row manifest)")
    seed.set_defaults(handler=seed_command)

    status = db_sub.add_parser(
        "status",
        parents=[common],
        help="counts by status and label, and the failed rows with their reasons",
    )
    status.set_defaults(handler=status_command)


def seed_command(args: argparse.Namespace) -> int:
    from plants_mlops import db

    engine = db.make_engine(args.db_url)
    report = db.seed(engine, args.csv)
    if args.json:
        print(json.dumps(report.as_dict(), indent=2))
    else:
        print(f"database: {db.redact(db.resolve_url(args.db_url))}")
        print("\n".join(report.lines()))
    # Refused lines and label conflicts both need a person: a script must not read success.
    return 1 if report.refused or report.conflicts else 0


def status_command(args: argparse.Namespace) -> int:
    from plants_mlops import db

    summary = db.status_summary(db.make_engine(args.db_url))
    if args.json:
        print(json.dumps(summary, indent=2, default=str))
        return 0
    print(f"database: {summary['database']}  rows: {summary['total']}")
    print("by status: " + ", ".join(f"{k} {v}" for k, v in summary["by_status"].items()))
    for label, counts in sorted(summary["by_label"].items()):
        print(f"  {label:<10} " + ", ".join(f"{k} {v}" for k, v in counts.items()))
    if summary["failed"]:
        print(f"failed rows ({len(summary['failed'])}):")
        for row in summary["failed"]:
            print(f"  {row['id']:>5}  {row['url_source']}\n         {row['error']}")
    return 0
