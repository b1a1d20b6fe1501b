"""``plants-mlops db seed`` / ``db status``: the plants_data table by hand; ``plants-mlops
data review|exclude|relabel|restore|history|feedback``: curation decisions; ``plants-mlops
data synth|serve``: a deterministic synthetic catalogue and its loopback mirror (scale tests)."""

from __future__ import annotations

import argparse
import json

from plants_mlops.errors import UserFacingError


def register(subparsers: argparse._SubParsersAction) -> None:
    register_db(subparsers)
    register_curation(subparsers)


def _env_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--env",
        help="the task's Kedro environment (conf/ENV: its labels and table; default: the "
        "base task, conf/base/task.yml)",
    )


def _common_options() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument(
        "--db-url",
        help="SQLAlchemy URL (default: the task's db_url in conf/ENV/globals.yml; for the "
        "base task $PLANTS_DB_URL, else sqlite:///data/plants.db)",
    )
    _env_option(common)
    common.add_argument("--json", action="store_true", help="print JSON instead of text")
    return common


def _group(subparsers: argparse._SubParsersAction, name: str, dest: str, **kwargs):
    """A command with sub-actions; alone, it prints its help and exits 2."""
    parser = subparsers.add_parser(name, **kwargs)
    parser.set_defaults(handler=lambda _args: parser.print_help() or 2)
    return parser.add_subparsers(dest=dest, metavar="ACTION")


def register_db(subparsers: argparse._SubParsersAction) -> None:
    db_sub = _group(
        subparsers,
        "db",
        "db_command",
        help="the plants_data table (image URLs and their ingestion status)",
    )

    common = _common_options()

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


def _task(args: argparse.Namespace):
    from plants_mlops import task

    return task.load(getattr(args, "env", None))


def _db_url(args: argparse.Namespace) -> str:
    """``--db-url``, else the task environment's table."""
    return args.db_url or _task(args).db_url


def seed_command(args: argparse.Namespace) -> int:
    from plants_mlops import db

    ctx = _task(args)
    url = args.db_url or ctx.db_url
    if args.csv is None and ctx.env is not None:
        raise UserFacingError(
            f"the shipped manifest is the base task's: give task {ctx.task.name!r} its "
            "CSV with --csv"
        )
    report = db.seed(db.make_engine(url), args.csv, labels=ctx.labels)
    if args.json:
        print(json.dumps(report.as_dict(), indent=2))
    else:
        print(f"database: {db.redact(db.resolve_url(url))}")
        print("\n".join(report.lines()))
    # Refused lines and label conflicts both need a person: a script must not read success.
    return 1 if report.refused or report.conflicts else 0


def status_command(args: argparse.Namespace) -> int:
    from plants_mlops import db

    summary = db.status_summary(db.make_engine(_db_url(args)))
    if args.json:
        print(json.dumps(summary, indent=2, default=str))
        return 0
    print(
        f"database: {summary['database']}  rows: {summary['total']}  "
        f"integrity: {summary['integrity']}"
    )
    print("by status: " + ", ".join(f"{k} {v}" for k, v in summary["by_status"].items()))
    for label, counts in sorted(summary["by_label"].items()):
        print(f"  {label:<10} " + ", ".join(f"{k} {v}" for k, v in counts.items()))
    if summary["failed"]:
        print(f"failed rows ({len(summary['failed'])}):")
        for row in summary["failed"]:
            print(f"  {row['id']:>5}  {row['url_source']}\n         {row['error']}")
    return 0


# --------------------------------------------------------------------------- curation


def register_curation(subparsers: argparse._SubParsersAction) -> None:
    sub = _group(
        subparsers,
        "data",
        "data_command",
        help="the curation review queue and the decisions on it (exclude, relabel, restore); "
        "a synthetic catalogue for scale tests (synth, serve)",
        description="Review what the curation pipeline found and record decisions; formatting "
        "honours them on its next run (the dataset fingerprint changes). Raw bytes are never "
        "deleted: `data restore ID` undoes a decision.",
    )

    common = _common_options()

    review = sub.add_parser(
        "review",
        parents=[common],
        help="the review queue (curation) and the pending feedback from the API",
    )
    review.add_argument(
        "--queue",
        help="the queue the curation pipeline wrote, a path or s3:// URL (default: the "
        "task's, ROOT/08_reporting/curation_queue.json of its data root: data/ for the base "
        "task, data/ENV/ for --env ENV)",
    )
    review.set_defaults(handler=review_command)

    for action, text in (
        ("exclude", "leave a row out of the dataset (the raw bytes stay)"),
        ("relabel", "give a row another label"),
        ("restore", "cancel the decisions on a row"),
    ):
        p = sub.add_parser(action, parents=[common], help=text)
        p.add_argument("row_id", type=int, metavar="ID", help="plants_data row id")
        if action == "relabel":
            p.add_argument("label", metavar="LABEL")
        p.add_argument("--reason", required=action != "restore", default="", help="why")
        p.set_defaults(handler=decide_command, action=action)

    history = sub.add_parser("history", parents=[common], help="every decision, oldest first")
    history.add_argument("row_id", type=int, nargs="?", metavar="ID", help="one row only")
    history.set_defaults(handler=history_command)

    fsub = _group(
        sub, "feedback", "feedback_command", help="accept or reject feedback sent to the API"
    )
    for action in ("accept", "reject"):
        p = fsub.add_parser(
            action,
            parents=[common],
            help="add the candidate to plants_data (next ingestion stores it)"
            if action == "accept"
            else "drop the candidate (it stays recorded as rejected)",
        )
        p.add_argument("candidate_id", type=int, metavar="ID", help="feedback candidate id")
        p.add_argument("--reason", default="", help="why")
        p.set_defaults(handler=feedback_command, accept=action == "accept")

    synth = sub.add_parser(
        "synth",
        help="write N distinct JPEGs (1/K per label), broken rows and a manifest CSV",
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
    synth.add_argument(
        "--labels",
        help="comma-separated labels, K >= 2 (default: the task's, see --env)",
    )
    synth.add_argument("--db-url", help="SQLAlchemy URL (default: the task's table)")
    _env_option(synth)
    synth.set_defaults(handler=synth_command)
    serve = sub.add_parser(
        "serve",
        help="serve a folder (a synthetic catalogue, your own images) on 127.0.0.1",
        description="A loopback HTTP server over DIR for ingestion: map the manifest's URL "
        "prefix onto it with an `ingestion.mirrors` entry of the task; only a mirror's own "
        "origin passes the private-address check (docs/own-data.md).",
    )
    serve.add_argument("root", metavar="DIR", help="the folder to serve")
    serve.add_argument("--port", type=int, default=8700)
    serve.add_argument("--slow-s", type=float, default=0.2, help="delay of the slow rows")
    serve.set_defaults(handler=serve_command)


def _engine(args: argparse.Namespace):
    from plants_mlops import db

    return db.make_engine(_db_url(args))


def review_command(args: argparse.Namespace) -> int:
    import fsspec

    from plants_mlops import db

    ctx = _task(args)
    path = args.queue or f"{ctx.root}/08_reporting/curation_queue.json"
    try:
        with fsspec.open(path, "r") as fh:
            queue = json.load(fh)
    except FileNotFoundError:
        queue = None
    engine = _engine(args)
    decided = {d["row_id"]: d for d in db.decisions_in_force(engine)}
    feedback = db.list_feedback(engine)
    for item in queue or []:
        d = decided.get(item["source_id"])
        item["decision"] = (
            None if d is None else {k: d[k] for k in ("action", "label", "reason", "decided_by")}
        )
    if args.json:
        print(json.dumps({"queue": queue, "feedback": feedback}, indent=2, default=str))
        return 0
    if queue is None:
        env = f"--env {ctx.env} " if ctx.env else ""
        print(f"no review queue at {path}: run `kedro run {env}--pipelines curation` first")
    else:
        page = path.rsplit("/", 1)[0] + "/curation_review.html"
        print(f"review queue ({len(queue)} images, {path}; HTML: {page}):")
        for it in queue:
            done = f"  [decided: {it['decision']['action']}]" if it["decision"] else ""
            print(
                f"{it['rank']:>3}. row {it['source_id']:<5} {it['label']:<9} {it['split']:<5} "
                f"-> {it['action']}{done}\n       " + "\n       ".join(it["problems"])
            )
    print(f"feedback from the API, pending review ({len(feedback)}):")
    for f in feedback:
        print(
            f"  #{f['id']} request {f['request_id']}: predicted {f['predicted_label']} "
            f"({f['confidence'] if f['confidence'] is not None else '?'}), user says "
            f"{f['true_label']}; image {'kept' if f['image_path'] else 'not kept'}"
        )
    return 0


def decide_command(args: argparse.Namespace) -> int:
    from plants_mlops import db

    done = db.record_decision(
        _engine(args),
        args.row_id,
        args.action,
        args.reason,
        label=getattr(args, "label", None),
        labels=_task(args).labels,
    )
    if args.json:
        print(json.dumps(done, indent=2, default=str))
    else:
        what = f"relabel -> {done['label']}" if args.action == "relabel" else args.action
        replaces = f", replacing the {done['replaces']} in force" if done["replaces"] else ""
        print(
            f"row {args.row_id}: {what} recorded ({done['decided_by']}, {done['decided_at']})"
            f"{replaces}; the next formatting run applies it"
        )
    return 0


def history_command(args: argparse.Namespace) -> int:
    from plants_mlops import db

    rows = db.decision_history(_engine(args), args.row_id)
    if args.json:
        print(json.dumps(rows, indent=2, default=str))
        return 0
    if not rows:
        print("no decisions recorded")
    for d in rows:
        label = f" -> {d['label']}" if d["label"] else ""
        print(
            f"{d['decided_at']}  row {d['row_id']:<5} {d['action']}{label}  by {d['decided_by']}: "
            f"{d['reason']}"
        )
    return 0


def feedback_command(args: argparse.Namespace) -> int:
    from plants_mlops import db

    out = db.decide_feedback(_engine(args), args.candidate_id, args.accept, args.reason)
    if args.json:
        print(json.dumps(out, indent=2))
    elif args.accept:
        print(
            f"feedback {args.candidate_id} accepted: plants_data row {out['row_id']} "
            "(pending; the next ingestion stores its image)"
        )
    else:
        print(f"feedback {args.candidate_id} rejected")
    return 0


# --------------------------------------------------------------------------- scale


def synth_command(args: argparse.Namespace) -> int:
    from plants_mlops import task
    from plants_mlops.datasets import data_synth

    prefix = args.prefix or data_synth.DEFAULT_PREFIX
    labels = task.parse_labels(args.labels) if args.labels else _task(args).labels
    report = data_synth.synth(
        args.n,
        args.out,
        labels=labels,
        seed=args.seed,
        broken_share=args.broken_share,
        prefix=prefix,
    )
    print(json.dumps(report.__dict__, indent=2))
    if args.seed_db:
        from plants_mlops import db

        seeded = db.seed(db.make_engine(_db_url(args)), report.manifest, labels=labels)
        print("\n".join(seeded.lines()))
    print(
        f"serve it with: plants-mlops data serve {args.out}; then ingest with the mirror "
        f"{prefix} -> http://127.0.0.1:8700/"
    )
    return 0


def serve_command(args: argparse.Namespace) -> int:
    import time

    from plants_mlops.commands import mirror

    with mirror.serve(args.root, args.port, args.slow_s) as url:
        print(f"serving {args.root} at {url} (Ctrl-C stops)", flush=True)
        try:
            while True:
                time.sleep(3600)
        except KeyboardInterrupt:
            return 0
