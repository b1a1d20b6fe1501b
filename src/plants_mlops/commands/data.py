"""``plants-mlops db seed|status``: the plants_data table by hand; ``plants-mlops data
synth|serve``: a deterministic synthetic catalogue and its loopback mirror (scale tests)."""

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

    data_parser = subparsers.add_parser(
        "data", help="a synthetic catalogue for scale tests (synth) and its HTTP mirror (serve)"
    )
    data_sub = data_parser.add_subparsers(dest="data_command", metavar="ACTION")
    data_parser.set_defaults(handler=lambda _args: data_parser.print_help() or 2)
    synth = data_sub.add_parser(
        "synth",
        help="write N distinct JPEGs (half per label), broken rows and a manifest CSV",
        description="Deterministic in (N, --seed): the same bytes every time. Good rows carry "
        "their sha256 in the manifest; a --broken-share of rows is broken (404, truncated, "
        "not an image, slow). Serve the folder with `plants-mlops data serve` and map the "
        "manifest's URL prefix onto it with an ingestion mirror.",
    )
    synth.add_argument("n", type=int, help="number of rows (images) in the catalogue")
    synth.add_argument("--seed", type=int, default=0)
    synth.add_argument("--out", default="data/synth", help="folder to write (default %(default)s)")
    synth.add_argument("--broken-share", type=float, default=0.01)
    synth.add_argument("--prefix", default=None, help="URL prefix of the manifest's rows")
    synth.add_argument(
        "--seed-db",
        action="store_true",
        help="also add the manifest's rows to the plants_data table",
    )
    synth.add_argument("--db-url", help="SQLAlchemy URL (default: $PLANTS_DB_URL)")
    synth.set_defaults(handler=synth_command)
    serve = data_sub.add_parser("serve", help="serve a synthetic catalogue on 127.0.0.1")
    serve.add_argument("root", help="the folder `data synth` wrote")
    serve.add_argument("--port", type=int, default=8700)
    serve.add_argument("--slow-s", type=float, default=0.2, help="delay of the slow rows")
    serve.set_defaults(handler=serve_command)


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


def synth_command(args: argparse.Namespace) -> int:
    from plants_mlops.datasets import data_synth

    prefix = args.prefix or data_synth.DEFAULT_PREFIX
    report = data_synth.synth(
        args.n, args.out, seed=args.seed, broken_share=args.broken_share, prefix=prefix
    )
    print(json.dumps(report.__dict__, indent=2))
    if args.seed_db:
        from plants_mlops import db

        seeded = db.seed(db.make_engine(args.db_url), report.manifest)
        print("\n".join(seeded.lines()))
    print(
        f"serve it with: plants-mlops data serve {args.out}; then ingest with the mirror "
        f"{prefix} -> http://127.0.0.1:8700/"
    )
    return 0


def serve_command(args: argparse.Namespace) -> int:
    import time

    from plants_mlops.datasets import data_synth

    with data_synth.serve(args.root, args.port, args.slow_s) as url:
        print(f"serving {args.root} at {url} (Ctrl-C stops)", flush=True)
        try:
            while True:
                time.sleep(3600)
        except KeyboardInterrupt:
            return 0
