"""The ``plants_data`` table: one row per image URL, the source of truth for ingestion.

Seeding is idempotent: a row is identified by its ``url_source``; rows already in the table
are left untouched, so re-seeding changes nothing and a user adds images by adding rows to
a CSV (``url_source,label`` and optionally ``sha256``, the expected content hash).
"""

from __future__ import annotations

import csv
import datetime as dt
import io
import logging
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

import sqlalchemy as sa

from plants_mlops import contracts
from plants_mlops.db.base import metadata, utcnow
from plants_mlops.errors import UserFacingError
from plants_mlops.params import LABEL_PATTERN

log = logging.getLogger(__name__)

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


def read_manifest(
    text: str, report: SeedReport, labels: Sequence[str] | None
) -> list[dict[str, Any]]:
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
            reason = _refusal(url, label, sha, seen, labels)
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


def _refusal(
    url: str, label: str, sha: str, seen: set[str], labels: Sequence[str] | None
) -> str | None:
    if not url:
        return "empty url_source"
    if _CONTROL.search(url):
        return "url_source contains a control character (NUL, tab, newline...)"
    shown = redact_url(url)
    if not re.match(r"^(https?|file)://", url):
        return f"url_source {shown!r} is not an http(s):// or file:// URL"
    if len(url) > MAX_URL_LENGTH:
        return f"url_source longer than {MAX_URL_LENGTH} characters"
    if labels is not None and label not in labels:
        return f"label {label!r} is not one of {', '.join(labels)} (url {shown})"
    if not LABEL_PATTERN.fullmatch(label):
        return f"label {label!r} is not a name of letters, digits, '_' or '-' (url {shown})"
    if sha and not _SHA256.match(sha.lower()):
        return f"sha256 {sha!r} is not 64 hex characters"
    if url in seen:
        return f"url_source {shown} appears twice in this CSV"
    return None


def seed(
    engine: sa.Engine,
    csv_path: str | Path | None = None,
    *,
    labels: Sequence[str] | None,
    text: str | None = None,
) -> SeedReport:
    """Insert the CSV's rows whose url_source is not in the table yet. Idempotent. A row
    whose label is not one of ``labels`` (the task's) is refused; ``None`` takes any label
    name (the shipped manifest, seeding an empty table of the shipped task)."""
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
    rows = read_manifest(text, report, labels)
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
    report = seed(engine, labels=None)
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
    """Counts by status and by label/status, the failed rows with their reasons, and the
    integrity check's result (``engine.check_integrity``; DamagedStoreError when it fails)."""
    from plants_mlops.db.engine import check_integrity

    integrity = check_integrity(engine)
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
        "integrity": integrity,
        "total": len(rows),
        "by_status": by_status,
        "by_label": by_label,
        "failed": failed,
    }
