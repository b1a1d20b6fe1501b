"""The ``plants_data`` table: one row per image URL, the source of truth for ingestion.

Works on SQLite (the embedded default, ``sqlite:///data/plants.db``), MySQL/MariaDB and
PostgreSQL through one SQLAlchemy 2 table definition. The URL comes from, in order: an
explicit argument, ``PLANTS_DB_URL``, the default.

Seeding is idempotent: a row is identified by its ``url_source``; rows already in the table
are left untouched, so re-seeding changes nothing and a user adds images by adding rows to
a CSV (``url_source,label`` and optionally ``sha256``, the expected content hash).
"""

from __future__ import annotations

import csv
import datetime as dt
import io
import logging
import os
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

import sqlalchemy as sa

from plants_mlops import contracts
from plants_mlops.errors import UserFacingError

log = logging.getLogger(__name__)

DEFAULT_DB_URL = contracts.DEFAULT_DB_URL
TABLE_NAME = "plants_data"
# A unique index on url_source must fit MySQL/MariaDB's 3072-byte key limit (utf8mb4).
MAX_URL_LENGTH = 700
STATUSES = (contracts.STATUS_PENDING, contracts.STATUS_OK, contracts.STATUS_FAILED)
COLUMNS = (
    "id",
    "url_source",
    "label",
    "url_s3",
    "sha256",
    "status",
    "error",
    "created_at",
    "updated_at",
    "ingested_at",
)
_SHA256 = re.compile(r"^[0-9a-f]{64}$")

metadata = sa.MetaData()
plants_data = sa.Table(
    TABLE_NAME,
    metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("url_source", sa.String(MAX_URL_LENGTH), nullable=False, unique=True),
    sa.Column("label", sa.String(64), nullable=False),
    sa.Column("url_s3", sa.String(1024), nullable=True),
    sa.Column("sha256", sa.String(64), nullable=True),
    sa.Column("status", sa.String(16), nullable=False, default=contracts.STATUS_PENDING),
    sa.Column("error", sa.Text, nullable=True),
    sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
    sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
    sa.Column("ingested_at", sa.DateTime(timezone=True), nullable=True),
    sa.Index("ix_plants_data_status", "status"),
)

# Curation decisions on plants_data rows: an append-only log (who, when, why). The newest
# decision of a row is in force; `restore` cancels the ones before it. Raw bytes are never
# deleted: formatting leaves an excluded row out and indexes a relabelled one under its
# new label (plants_mlops.pipelines.curation.decisions).
DECISION_ACTIONS = ("exclude", "relabel", "restore")
data_decisions = sa.Table(
    "data_decisions",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("row_id", sa.Integer, nullable=False, index=True),
    sa.Column("action", sa.String(16), nullable=False),
    sa.Column("label", sa.String(64), nullable=True),  # the new label of a relabel
    sa.Column("reason", sa.Text, nullable=False),
    sa.Column("decided_by", sa.String(128), nullable=False),
    sa.Column("decided_at", sa.DateTime(timezone=True), nullable=False),
)

# Feedback from the API (POST /feedback): a candidate row that enters plants_data only when
# a person accepts it (`plants-mlops data feedback accept ID`).
FEEDBACK_STATES = ("pending", "accepted", "rejected")
feedback_candidates = sa.Table(
    "feedback_candidates",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("request_id", sa.String(64), nullable=False, index=True),
    sa.Column("true_label", sa.String(64), nullable=False),
    sa.Column("predicted_label", sa.String(64), nullable=True),
    sa.Column("confidence", sa.Float, nullable=True),
    sa.Column("model_version", sa.String(32), nullable=True),
    sa.Column("image_path", sa.String(1024), nullable=True),  # the kept image, if any
    sa.Column("image_sha256", sa.String(64), nullable=True),
    sa.Column("comment", sa.Text, nullable=True),
    sa.Column("status", sa.String(16), nullable=False),
    sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
    sa.Column("decided_by", sa.String(128), nullable=True),
    sa.Column("decided_at", sa.DateTime(timezone=True), nullable=True),
    sa.Column("reason", sa.Text, nullable=True),
    sa.Column("row_id", sa.Integer, nullable=True),  # the plants_data row it became
)

# Schema versions: 1 = plants_data; 2 = + data_decisions, feedback_candidates.
SCHEMA_VERSION = 2
schema_version = sa.Table(
    "plants_schema_version",
    metadata,
    sa.Column("version", sa.Integer, primary_key=True, autoincrement=False),
    sa.Column("applied_at", sa.DateTime(timezone=True), nullable=False),
)


def utcnow() -> dt.datetime:
    return dt.datetime.now(dt.UTC).replace(microsecond=0)


def resolve_url(url: str | None = None) -> str:
    """The database URL: the argument, else ``PLANTS_DB_URL``, else the SQLite default."""
    return url or os.environ.get("PLANTS_DB_URL") or DEFAULT_DB_URL


def redact(url: str) -> str:
    """The URL with its password hidden, for logs and messages."""
    try:
        return sa.engine.make_url(url).render_as_string(hide_password=True)
    except (sa.exc.ArgumentError, ValueError):
        return "<unparseable database URL>"


def make_engine(url: str | None = None) -> sa.Engine:
    """An engine on the table's database; creates the SQLite folder and the table if needed."""
    url = resolve_url(url)
    try:
        parsed = sa.engine.make_url(url)
    except (sa.exc.ArgumentError, ValueError):
        # SQLAlchemy's message repeats the string, password included: say where it came from.
        raise UserFacingError(
            "not a database URL (PLANTS_DB_URL or --db-url; the value is not shown because it "
            "may hold a password): expected e.g. postgresql+psycopg2://user:pass@host/db"
        ) from None
    if parsed.get_backend_name() == "sqlite" and parsed.database not in (None, "", ":memory:"):
        Path(parsed.database).parent.mkdir(parents=True, exist_ok=True)
    engine = sa.create_engine(parsed, pool_pre_ping=True)
    try:
        migrate(engine)
    except sa.exc.OperationalError as exc:
        raise UserFacingError(
            f"cannot reach the plants_data database at {redact(url)}: {exc.orig}"
        ) from None
    return engine


def add_missing_columns(engine: sa.Engine, table: sa.Table) -> list[str]:
    """``ALTER TABLE ... ADD COLUMN`` for each column of ``table`` the database lacks (all
    nullable or with a server default, so existing rows stay valid). SQLite, MariaDB/MySQL
    and PostgreSQL all add a column in place. Returns the names added."""
    inspector = sa.inspect(engine)
    if not inspector.has_table(table.name):
        return []
    present = {c["name"] for c in inspector.get_columns(table.name)}
    added = []
    with engine.begin() as conn:
        for column in table.columns:
            if column.name in present:
                continue
            ddl = column.type.compile(dialect=engine.dialect)
            default = ""
            if column.server_default is not None:
                default = f" DEFAULT {column.server_default.arg}"
            name = engine.dialect.identifier_preparer.quote(column.name)
            tname = engine.dialect.identifier_preparer.quote(table.name)
            conn.execute(sa.text(f"ALTER TABLE {tname} ADD COLUMN {name} {ddl}{default}"))
            added.append(column.name)
    if added:
        log.info("upgraded table %s in place: added %s", table.name, ", ".join(added))
    return added


def migrate(engine: sa.Engine) -> int:
    """Bring the database to ``SCHEMA_VERSION`` in place: new tables are created, new
    columns added to old tables; rows are never touched. Idempotent. Returns the version
    found before (0 = empty database, 1 = plants_data only, before versions were recorded)."""
    inspector = sa.inspect(engine)
    existing = set(inspector.get_table_names())
    before = 0
    if schema_version.name in existing:
        with engine.connect() as conn:
            before = conn.execute(sa.select(sa.func.max(schema_version.c.version))).scalar() or 0
    elif TABLE_NAME in existing:
        before = 1
    if before >= SCHEMA_VERSION:
        return before
    metadata.create_all(engine)
    for table in metadata.sorted_tables:
        add_missing_columns(engine, table)
    try:
        with engine.begin() as conn:
            done = {r.version for r in conn.execute(sa.select(schema_version.c.version))}
            todo = [v for v in range(1, SCHEMA_VERSION + 1) if v not in done]
            if todo:
                conn.execute(
                    sa.insert(schema_version),
                    [{"version": v, "applied_at": utcnow()} for v in todo],
                )
    except sa.exc.IntegrityError:
        pass  # another process recorded the same upgrade at the same moment
    if before:
        log.info("database schema upgraded in place from version %d to %d", before, SCHEMA_VERSION)
    return before


# --------------------------------------------------------------------------- seeding


@dataclass
class SeedReport:
    source: str
    added: int = 0
    unchanged: int = 0
    refused: list[dict[str, Any]] = field(default_factory=list)  # {"line", "url_source", "reason"}
    conflicts: list[dict[str, Any]] = field(default_factory=list)  # label differs from table

    def as_dict(self) -> dict[str, Any]:
        return {
            "source": self.source,
            "added": self.added,
            "unchanged": self.unchanged,
            "refused": self.refused,
            "conflicts": self.conflicts,
        }

    def lines(self) -> list[str]:
        out = [
            f"seed from {self.source}: {self.added} added, {self.unchanged} already present, "
            f"{len(self.refused)} refused, {len(self.conflicts)} label conflicts"
        ]
        out += [f"  refused line {r['line']}: {r['reason']}" for r in self.refused]
        out += [
            f"  kept existing row {c['id']} ({c['url_source']}): table label {c['table_label']!r}, "
            f"CSV label {c['csv_label']!r}"
            for c in self.conflicts
        ]
        return out


def manifest_text() -> str:
    """The shipped 400-row manifest (public URLs of the dandelion/grass images)."""
    return resources.files("plants_mlops").joinpath("data/plants_data.csv").read_text()


def read_manifest(text: str, report: SeedReport) -> list[dict[str, Any]]:
    """Parse a manifest CSV; bad rows land in ``report.refused``, good ones are returned."""
    reader = csv.DictReader(io.StringIO(text))
    fields = {f.strip() for f in reader.fieldnames or []}
    missing = {"url_source", "label"} - fields
    if missing:
        raise UserFacingError(
            f"{report.source}: the CSV needs the columns url_source,label (missing: "
            f"{', '.join(sorted(missing))}; found: {', '.join(sorted(fields)) or 'none'})"
        )
    rows: list[dict[str, Any]] = []
    seen: set[str] = set()
    line = 1  # the header
    while True:
        try:
            raw = next(reader)
        except StopIteration:
            break
        except csv.Error as exc:  # an oversized field, a NUL byte: refuse that line only
            line += 1
            report.refused.append(
                {"line": line, "url_source": "", "reason": f"unreadable CSV line: {exc}"}
            )
            continue
        line = reader.line_num
        rec = {k.strip(): (v or "").strip() for k, v in raw.items() if k}
        url, label, sha = rec.get("url_source", ""), rec.get("label", ""), rec.get("sha256", "")
        if any(_UNDECODABLE.search(v) for v in rec.values()):
            reason = "line is not valid UTF-8"
        else:
            reason = _refusal(url, label, sha, seen)
        if reason:
            report.refused.append({"line": line, "url_source": redact_url(url), "reason": reason})
            continue
        seen.add(url)
        rows.append({"url_source": url, "label": label, "sha256": sha.lower() or None})
    return rows


# Bytes that are not UTF-8 decode to lone surrogates (errors="surrogateescape").
_UNDECODABLE = re.compile("[\udc80-\udcff]")
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")


def redact_url(url: str) -> str:
    """``url`` with the password of its user-info replaced by ``***`` (for messages)."""
    from urllib.parse import urlsplit, urlunsplit

    try:
        parts = urlsplit(url)
        if parts.password is None:
            return url
        host = parts.hostname or ""
        port = f":{parts.port}" if parts.port else ""
        return urlunsplit(parts._replace(netloc=f"{parts.username}:***@{host}{port}"))
    except ValueError:
        return "<unparseable URL>"


def _refusal(url: str, label: str, sha: str, seen: set[str]) -> str | None:
    if not url:
        return "empty url_source"
    if _CONTROL.search(url):
        return "url_source contains a control character (NUL, tab, newline...)"
    shown = redact_url(url)
    if not re.match(r"^(https?|file)://", url):
        return f"url_source {shown!r} is not an http(s):// or file:// URL"
    if len(url) > MAX_URL_LENGTH:
        return f"url_source longer than {MAX_URL_LENGTH} characters"
    if label not in contracts.LABELS:
        return f"label {label!r} is not one of {', '.join(contracts.LABELS)} (url {shown})"
    if sha and not _SHA256.match(sha.lower()):
        return f"sha256 {sha!r} is not 64 hex characters"
    if url in seen:
        return f"url_source {shown} appears twice in this CSV"
    return None


def seed(
    engine: sa.Engine, csv_path: str | Path | None = None, *, text: str | None = None
) -> SeedReport:
    """Insert the CSV's rows whose url_source is not in the table yet. Idempotent."""
    if text is None:
        if csv_path is None:
            text, source = manifest_text(), "shipped manifest (plants_mlops/data/plants_data.csv)"
        else:
            path = Path(csv_path)
            if not path.is_file():
                raise UserFacingError(f"no such CSV file: {path}")
            # A line with bytes that are not UTF-8 is refused by itself (read_manifest).
            raw = path.read_bytes().removeprefix(b"\xef\xbb\xbf")
            text, source = raw.decode("utf-8", errors="surrogateescape"), str(path)
    else:
        source = str(csv_path or "<text>")
    report = SeedReport(source=source)
    rows = read_manifest(text, report)
    now = utcnow()
    with engine.begin() as conn:
        existing = {
            r.url_source: r
            for r in conn.execute(
                sa.select(plants_data.c.id, plants_data.c.url_source, plants_data.c.label)
            )
        }
        new = []
        for row in rows:
            old = existing.get(row["url_source"])
            if old is None:
                new.append(
                    {
                        **row,
                        "status": contracts.STATUS_PENDING,
                        "created_at": now,
                        "updated_at": now,
                    }
                )
                continue
            report.unchanged += 1
            if old.label != row["label"]:
                report.conflicts.append(
                    {
                        "id": old.id,
                        "url_source": redact_url(old.url_source),
                        "table_label": old.label,
                        "csv_label": row["label"],
                    }
                )
        if new:
            conn.execute(sa.insert(plants_data), new)  # in CSV order: ids follow the file
        report.added = len(new)
    return report


def ensure_seeded(engine: sa.Engine) -> SeedReport | None:
    """Seed the shipped manifest when the table is empty (a fresh checkout); else nothing."""
    with engine.connect() as conn:
        if conn.execute(sa.select(sa.func.count()).select_from(plants_data)).scalar_one():
            return None
    log.info("plants_data is empty: seeding it from the shipped manifest")
    report = seed(engine)
    for line in report.lines():
        log.info(line)
    return report


# --------------------------------------------------------------------------- reading/updating


def load_rows(engine: sa.Engine) -> list[dict[str, Any]]:
    with engine.connect() as conn:
        result = conn.execute(sa.select(plants_data).order_by(plants_data.c.id))
        return [dict(r._mapping) for r in result]


UPDATABLE = ("url_s3", "sha256", "status", "error", "ingested_at", "label")


# Lookups and updates go in slices of this many rows (well under every backend's limit on
# bound parameters), so a chunk of updates reads only its own rows, never the whole table.
UPSERT_SLICE = 500


def upsert_rows(engine: sa.Engine, rows: Iterable[Mapping[str, Any]]) -> tuple[int, int]:
    """Update rows by ``id`` (or ``url_source`` when no id is given); insert unknown ones.

    Only the columns present in a row are written; ``updated_at`` is set to now. Only the
    ids and urls of ``rows`` are looked up, and updates that set the same columns go in
    one batched statement, so the cost follows ``len(rows)``, not the table's size.
    Returns (updated, inserted).
    """
    now = utcnow()
    rows = list(rows)
    for row in rows:
        status = _clean(row.get("status"))
        if status not in (None, *STATUSES):
            raise ValueError(f"status {status!r} is not one of {STATUSES}")
    given_ids = {int(i) for i in (_clean(r.get("id")) for r in rows) if i is not None}
    urls = {r["url_source"] for r in rows if _clean(r.get("id")) is None and r.get("url_source")}
    updates: dict[tuple[str, ...], list[dict[str, Any]]] = {}
    inserts: list[dict[str, Any]] = []
    with engine.begin() as conn:
        ids = _existing(conn, plants_data.c.id, given_ids)
        by_url = dict(_existing(conn, plants_data.c.url_source, urls, plants_data.c.id))
        ids |= set(by_url.values())
        for row in rows:
            values = {k: _clean(row[k]) for k in UPDATABLE if k in row}
            row_id = _clean(row.get("id"))
            if row_id is None and row.get("url_source") in by_url:
                row_id = by_url[row["url_source"]]
            if row_id is not None and int(row_id) in ids:
                updates.setdefault(tuple(sorted(values)), []).append(
                    {"_id": int(row_id), **{f"v_{k}": v for k, v in values.items()}}
                )
            else:
                if not row.get("url_source") or not row.get("label"):
                    raise ValueError(f"cannot insert a row without url_source and label: {row}")
                values.setdefault("status", contracts.STATUS_PENDING)
                inserts.append(
                    {
                        "url_source": row["url_source"],
                        **values,
                        "created_at": now,
                        "updated_at": now,
                    }
                )
        for columns, batch in updates.items():
            stmt = (
                sa.update(plants_data)
                .where(plants_data.c.id == sa.bindparam("_id"))
                .values(
                    {
                        **{c: sa.bindparam(f"v_{c}", type_=plants_data.c[c].type) for c in columns},
                        "updated_at": now,
                    }
                )
            )
            for i in range(0, len(batch), UPSERT_SLICE):
                conn.execute(stmt, batch[i : i + UPSERT_SLICE])
        for row in inserts:  # one by one: rows may hold different columns
            conn.execute(sa.insert(plants_data).values(**row))
    return sum(len(b) for b in updates.values()), len(inserts)


def _existing(conn, column, wanted: set, *more) -> set | list:
    """The values of ``column`` among ``wanted`` that are in the table (with ``more``
    columns: the matching rows as tuples), looked up in slices."""
    found: list = []
    wanted_list = sorted(wanted, key=str)
    for i in range(0, len(wanted_list), UPSERT_SLICE):
        part = wanted_list[i : i + UPSERT_SLICE]
        found += conn.execute(sa.select(column, *more).where(column.in_(part))).all()
    return found if more else {r[0] for r in found}


def _clean(value: Any) -> Any:
    """NaN/NaT (from pandas) -> None; numpy scalars -> Python; naive datetimes -> UTC."""
    if value is None:
        return None
    try:
        import pandas as pd

        if pd.isna(value):
            return None
        if isinstance(value, pd.Timestamp):
            value = value.to_pydatetime()
    except (TypeError, ValueError):
        pass
    if hasattr(value, "item") and not isinstance(value, str | bytes):
        value = value.item()
    if isinstance(value, dt.datetime) and value.tzinfo is None:
        value = value.replace(tzinfo=dt.UTC)
    return value


def status_summary(engine: sa.Engine) -> dict[str, Any]:
    """Counts by status and by label/status, and the failed rows with their reasons."""
    rows = load_rows(engine)
    by_status = {s: 0 for s in STATUSES}
    by_label: dict[str, dict[str, int]] = {}
    for r in rows:
        by_status[r["status"]] = by_status.get(r["status"], 0) + 1
        per = by_label.setdefault(r["label"], {s: 0 for s in STATUSES})
        per[r["status"]] = per.get(r["status"], 0) + 1
    failed = [
        {"id": r["id"], "url_source": r["url_source"], "label": r["label"], "error": r["error"]}
        for r in rows
        if r["status"] == contracts.STATUS_FAILED
    ]
    return {
        "database": engine.url.render_as_string(hide_password=True),
        "total": len(rows),
        "by_status": by_status,
        "by_label": by_label,
        "failed": failed,
    }


# --------------------------------------------------------------------------- decisions


def current_user() -> str:
    """Who a decision is recorded under: ``PLANTS_USER``, else the login name."""
    import getpass

    try:
        return os.environ.get("PLANTS_USER") or getpass.getuser()
    except (KeyError, OSError):
        return "unknown"


def record_decision(
    engine: sa.Engine,
    row_id: int,
    action: str,
    reason: str,
    *,
    label: str | None = None,
    who: str | None = None,
) -> dict[str, Any]:
    """Record an exclude / relabel / restore decision on a plants_data row."""
    if action not in DECISION_ACTIONS:
        raise UserFacingError(f"action {action!r} is not one of {', '.join(DECISION_ACTIONS)}")
    if action != "restore" and not (reason or "").strip():
        raise UserFacingError(f"{action} needs a reason (--reason TEXT)")
    if action == "relabel" and label not in contracts.LABELS:
        raise UserFacingError(f"label {label!r} is not one of {', '.join(contracts.LABELS)}")
    with engine.begin() as conn:
        row = conn.execute(
            sa.select(plants_data.c.id, plants_data.c.label).where(plants_data.c.id == row_id)
        ).first()
        if row is None:
            raise UserFacingError(f"no plants_data row with id {row_id}")
        if action == "relabel" and label == row.label:
            raise UserFacingError(f"row {row_id} is already labelled {label!r}")
        values = {
            "row_id": row_id,
            "action": action,
            "label": label if action == "relabel" else None,
            "reason": (reason or "").strip() or "restored",
            "decided_by": who or current_user(),
            "decided_at": utcnow(),
        }
        conn.execute(sa.insert(data_decisions).values(**values))
    return values


def decision_history(engine: sa.Engine, row_id: int | None = None) -> list[dict[str, Any]]:
    """Every decision, oldest first (of one row when ``row_id`` is given)."""
    query = sa.select(data_decisions).order_by(data_decisions.c.id)
    if row_id is not None:
        query = query.where(data_decisions.c.row_id == row_id)
    with engine.connect() as conn:
        return [dict(r._mapping) for r in conn.execute(query)]


def decisions_in_force(engine: sa.Engine) -> list[dict[str, Any]]:
    """The newest decision of each row, unless that is a restore: what formatting applies."""
    latest: dict[int, dict[str, Any]] = {}
    for d in decision_history(engine):
        latest[d["row_id"]] = d
    return [d for d in latest.values() if d["action"] != "restore"]


# --------------------------------------------------------------------------- feedback


def file_feedback(engine: sa.Engine, **values: Any) -> int:
    """A pending feedback candidate; returns its id. Never touches plants_data."""
    if values.get("true_label") not in contracts.LABELS:
        raise UserFacingError(
            f"label {values.get('true_label')!r} is not one of {', '.join(contracts.LABELS)}"
        )
    with engine.begin() as conn:
        result = conn.execute(
            sa.insert(feedback_candidates).values(**values, status="pending", created_at=utcnow())
        )
        return int(result.inserted_primary_key[0])


def list_feedback(engine: sa.Engine, status: str | None = "pending") -> list[dict[str, Any]]:
    query = sa.select(feedback_candidates).order_by(feedback_candidates.c.id)
    if status:
        query = query.where(feedback_candidates.c.status == status)
    with engine.connect() as conn:
        return [dict(r._mapping) for r in conn.execute(query)]


def decide_feedback(
    engine: sa.Engine, candidate_id: int, accept: bool, reason: str, who: str | None = None
) -> dict[str, Any]:
    """Accept (insert a pending plants_data row whose url_source is the kept image, so the
    next ingestion stores it like any other) or reject a pending candidate."""
    now = utcnow()
    with engine.begin() as conn:
        cand = conn.execute(
            sa.select(feedback_candidates).where(feedback_candidates.c.id == candidate_id)
        ).first()
        if cand is None:
            raise UserFacingError(f"no feedback candidate with id {candidate_id}")
        if cand.status != "pending":
            raise UserFacingError(f"feedback {candidate_id} is already {cand.status}")
        row_id = None
        if accept:
            if not cand.image_path:
                raise UserFacingError(
                    f"feedback {candidate_id} has no kept image (the API keeps the image of an "
                    "uncertain prediction only with PLANTS_KEEP_UNCERTAIN_IMAGES=true): "
                    "reject it, or add the image by URL with `db seed`"
                )
            existing = conn.execute(
                sa.select(plants_data.c.id).where(plants_data.c.url_source == cand.image_path)
            ).first()
            if existing is not None:
                row_id = existing.id
            else:
                result = conn.execute(
                    sa.insert(plants_data).values(
                        url_source=cand.image_path,
                        label=cand.true_label,
                        sha256=cand.image_sha256,
                        status=contracts.STATUS_PENDING,
                        created_at=now,
                        updated_at=now,
                    )
                )
                row_id = int(result.inserted_primary_key[0])
        conn.execute(
            sa.update(feedback_candidates)
            .where(feedback_candidates.c.id == candidate_id)
            .values(
                status="accepted" if accept else "rejected",
                decided_by=who or current_user(),
                decided_at=now,
                reason=reason,
                row_id=row_id,
            )
        )
    return {"id": candidate_id, "accepted": accept, "row_id": row_id}
