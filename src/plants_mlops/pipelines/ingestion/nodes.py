"""Ingestion: every pending row of ``plants_data`` -> original bytes in the raw layer.

The node decides per row from the table and the raw layer's inventory:
- content already stored (``{label}/{sha256}.*`` present; the sha256 is known from an earlier
  run or from the manifest) -> nothing is fetched, the row is (re)marked ``ok``;
- otherwise the URL (or its mirror) is fetched with bounded concurrency, timeouts and
  retries, checked to decode as an image (and against the manifest's sha256 when given),
  and stored content-addressed; a row that fails is marked ``failed`` with its reason and
  the run goes on.
"""

from __future__ import annotations

import hashlib
import logging
import time
from collections import Counter
from collections.abc import Callable, Iterator
from concurrent.futures import FIRST_COMPLETED, ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from itertools import islice
from typing import Any

import pandas as pd

from plants_mlops import contracts, imaging
from plants_mlops.db import utcnow
from plants_mlops.errors import UserFacingError
from plants_mlops.params import LABEL_PATTERN, IngestionParams, parse
from plants_mlops.pipelines.ingestion import fetch as fetching
from plants_mlops.progress import Progress

log = logging.getLogger(__name__)

UPDATE_COLUMNS = ["id", "status", "error", "sha256", "url_s3", "ingested_at"]
PLAN_COLUMNS = ["id", "url_source", "label", "sha256", "status", "url_s3", "error"]


@dataclass
class Outcome:
    row_id: int
    url_source: str
    label: str
    source: str  # where the bytes were read from (the mirror, or the URL itself)
    key: str | None = None
    data: bytes | None = None
    sha256: str | None = None  # of the fetched bytes; the expected one (manifest) until then
    error: str | None = None
    attempts: int = 0

    @property
    def reason(self) -> str | None:
        return self.error.split(":", 1)[0] if self.error else None


def raw_key(label: str, sha256: str, ext: str) -> str:
    return f"{label}/{sha256}.{ext}"


def inventory_index(raw_inventory: dict[str, Any]) -> dict[tuple[str, str], str]:
    """``(label, sha256) -> key`` for every stored ``{label}/{sha256}.{ext}`` file."""
    index = {}
    for key in raw_inventory:
        label, _, name = key.partition("/")
        sha = name.split(".", 1)[0]
        if LABEL_PATTERN.fullmatch(label) and len(sha) == 64:
            index[(label, sha)] = key
    return index


# The square ``check_bytes`` decodes to: small, only the decode's errors count.
CHECK_SIZE = 64


def check_bytes(data: bytes, expected_sha256: str | None) -> tuple[str, str]:
    """``(sha256, extension)`` of bytes that decode as a complete image, else raises
    FetchError with the decode reason (empty, not_an_image, unsupported_image, damaged_image, too_large) or
    ``checksum_mismatch``. A large JPEG is decoded at a reduced scale (``fit``): every
    byte of its compressed data is still read, so it fails as a full-size decode does, in
    half to a seventh of the time for a 12 Mpx photo."""
    try:
        decoded = imaging.decode_image(data, fit=CHECK_SIZE)
    except imaging.ImageDecodeError as exc:
        raise fetching.FetchError(exc.reason, exc.detail) from None
    sha = hashlib.sha256(data).hexdigest()
    if expected_sha256 and sha != expected_sha256:
        raise fetching.FetchError(
            "checksum_mismatch", f"content sha256 {sha} differs from the expected {expected_sha256}"
        )
    return sha, decoded.format


@dataclass
class Plan:
    """What a run does per row. ``already`` holds only the stored rows the table does not
    call ``ok`` at their current raw key yet (a row that is ``ok`` there needs nothing:
    it is counted in ``n_already``, never kept), so a rerun over an unchanged catalogue
    holds no per-row records."""

    to_fetch: list[dict] = field(default_factory=list)
    already: list[dict] = field(default_factory=list)
    n_already: int = 0
    skipped: list[dict] = field(default_factory=list)


def plan(
    plants_data: pd.DataFrame,
    stored: dict[tuple[str, str], str],
    retry_failed: bool,
    raw_root: str,
) -> Plan:
    """Split the rows into to fetch, already stored and failed rows left alone."""
    out = Plan()
    # column by column, a small dict only for the rows that need one (a dict per row of
    # the whole table was ~1 KB: 100 MB at 100,000 rows)
    columns = [
        plants_data[c] if c in plants_data.columns else [None] * len(plants_data)
        for c in PLAN_COLUMNS
    ]
    for values in zip(*columns, strict=True):
        row_id, url_source, label, sha, status, url_s3, error = values
        sha = sha if isinstance(sha, str) else None
        if status == contracts.STATUS_FAILED and not retry_failed:
            out.skipped.append({"id": row_id, "url_source": url_source, "error": error})
            continue
        key = stored.get((label, sha)) if sha else None
        if key is None:
            out.to_fetch.append(
                {"id": row_id, "url_source": url_source, "label": label, "sha256": sha}
            )
            continue
        out.n_already += 1
        if status != contracts.STATUS_OK or url_s3 != f"{raw_root}/{key}":
            out.already.append(
                {
                    "id": row_id,
                    "url_source": url_source,
                    "label": label,
                    "sha256": sha,
                    "status": status,
                    "key": key,
                }
            )
    return out


def fetch_rows(
    rows: list[dict], params: IngestionParams, progress: Callable[[Outcome], None] | None = None
) -> list[Outcome]:
    """Fetch and check every row concurrently; never raises for a bad URL."""
    return sorted(stream_rows(rows, params, _fetcher(params), progress), key=lambda o: o.row_id)


def _fetcher(params: IngestionParams) -> Callable[[dict, Any], Outcome]:
    """``one(row, client) -> Outcome``: fetch and check one row; never raises."""
    policy: fetching.FetchPolicy = params  # IngestionParams is a FetchPolicy
    mirrors = _mirrors(params)

    def one(row: dict, client) -> Outcome:
        sha = row.get("sha256") if isinstance(row.get("sha256"), str) else None
        out = Outcome(
            row_id=int(row["id"]),
            url_source=row["url_source"],
            label=row["label"],
            source=row["url_source"],
            sha256=sha,
        )
        try:
            out.source = fetching.resolve(row["url_source"], mirrors)
            data, out.attempts = fetching.fetch(out.source, client, policy)
            out.sha256, ext = check_bytes(data, sha)
        except fetching.FetchError as exc:
            out.error = f"{exc.reason}: {exc.detail}"
            out.attempts = max(out.attempts, exc.attempts)
            return out
        except Exception as exc:  # a bug or an odd URL must not stop the other rows
            out.error = f"error: {type(exc).__name__}: {exc}"
            return out
        out.data, out.key = data, raw_key(row["label"], out.sha256, ext)
        return out

    return one


# Rows submitted ahead of the consumer, per download thread: enough to keep every thread
# busy while a chunk is saved, and a bound on the fetched images held in memory.
IN_FLIGHT_PER_WORKER = 4


def stream_rows(rows, params: IngestionParams, one, progress=None) -> Iterator[Outcome]:
    """The outcomes of ``one(row, client)`` over ``rows``, as they complete.

    At most ``IN_FLIGHT_PER_WORKER`` rows per thread are submitted ahead of the consumer,
    so the images held in memory do not grow with the number of rows."""
    mirrors = _mirrors(params)
    concurrency = max(1, params.concurrency)
    window = concurrency * IN_FLIGHT_PER_WORKER
    pending_rows = iter(rows)
    with (
        fetching.make_client(params, concurrency, fetching.trusted_origins(mirrors)) as client,
        ThreadPoolExecutor(max_workers=concurrency, thread_name_prefix="ingest") as pool,
    ):
        running = {pool.submit(one, row, client) for row in islice(pending_rows, window)}
        while running:
            done, running = wait(running, return_when=FIRST_COMPLETED)
            for fut in done:
                outcome = fut.result()
                if progress:
                    progress(outcome)
                yield outcome
                # one new row per outcome consumed: refilled only when the consumer asks
                running |= {pool.submit(one, row, client) for row in islice(pending_rows, 1)}


# Results are saved in batches as they arrive (a generator node: Kedro saves every
# yielded chunk), so a killed run keeps what it fetched: at most one batch is lost.
SAVE_EVERY_IMAGES = 100
SAVE_EVERY_SECONDS = 5.0


def ingest_images(
    plants_data: pd.DataFrame, raw_inventory: dict[str, Any], params: dict
) -> Iterator[tuple[dict[str, bytes], pd.DataFrame, dict[str, Any]]]:
    """The ingestion node, a generator: yields (new raw files, plants_data status updates,
    report so far) every ``SAVE_EVERY_IMAGES`` images or ``SAVE_EVERY_SECONDS``, and once
    more at the end; Kedro saves each chunk as it comes (files first, then the table)."""
    started, t0 = utcnow(), time.perf_counter()
    p = parse(IngestionParams, params, "ingestion")
    raw_root = p.raw_root.rstrip("/")
    stored = inventory_index(raw_inventory)
    planned = plan(plants_data, stored, p.retry_failed, raw_root)
    to_fetch, skipped = planned.to_fetch, planned.skipped
    # A file the table does not call ok yet (a run killed before it saved the table)
    # counts only when its bytes hash to its name; else the row is fetched again.
    now = utcnow()
    updates: list[dict] = []
    for row in planned.already:
        if row["status"] == contracts.STATUS_OK or _intact(raw_inventory[row["key"]], row):
            url_s3 = f"{raw_root}/{row['key']}"
            updates.append(
                _update(row["id"], contracts.STATUS_OK, None, row["sha256"], url_s3, now)
            )
        else:
            log.warning("stored %s does not match its sha256: fetching it again", row["key"])
            to_fetch.append(row)
            planned.n_already -= 1
    n_already = planned.n_already
    del planned
    log.info(
        "ingestion: %d rows; %d already stored, %d to fetch, %d failed rows left alone",
        len(plants_data),
        n_already,
        len(to_fetch),
        len(skipped),
    )

    bar = Progress(len(to_fetch), "ingestion", log, bar=p.progress)
    tally = _Tally()
    batch: dict[str, bytes] = {}
    last_save = time.monotonic()
    try:
        for o in stream_rows(to_fetch, p, _fetcher(p)):
            tally.add(o)
            bar.update(failed=tally.n_failed)
            if o.error:
                # keeps the expected sha256 (from the manifest) for the next attempt
                updates.append(
                    _update(o.row_id, contracts.STATUS_FAILED, o.error, o.sha256, None, None)
                )
                log.warning("ingestion: row %d failed (%s): %s", o.row_id, o.url_source, o.error)
            else:
                if o.key not in batch:
                    tally.new_files += 1
                batch.setdefault(o.key, o.data)
                updates.append(
                    _update(
                        o.row_id,
                        contracts.STATUS_OK,
                        None,
                        o.sha256,
                        f"{raw_root}/{o.key}",
                        utcnow(),
                    )
                )
            due = time.monotonic() - last_save >= SAVE_EVERY_SECONDS
            if len(batch) >= SAVE_EVERY_IMAGES or (due and (batch or updates)):
                yield (
                    batch,
                    _frame(updates),
                    tally.report(
                        started, t0, plants_data, n_already, skipped, raw_root, p, final=False
                    ),
                )
                # Saved by now; Kedro's tee may keep the chunk alive for 57 more: empty it.
                batch.clear()
                batch, updates, last_save = {}, [], time.monotonic()
    finally:
        bar.close()
    report = tally.report(started, t0, plants_data, n_already, skipped, raw_root, p, final=True)
    log.info(
        "ingestion summary: fetched %d (%d new files, %.1f images/s), already stored %d, "
        "failed %d %s, failed rows left alone %d",
        report["fetched"],
        report["new_files"],
        report["images_per_s"] or 0.0,
        report["already_stored"],
        report["failed"],
        report["failed_by_reason"] or "",
        report["skipped_failed"],
    )
    yield batch, _frame(updates), report


def _frame(updates: list[dict]) -> pd.DataFrame:
    return pd.DataFrame(updates, columns=UPDATE_COLUMNS)


@dataclass
class _Tally:
    """What the run did so far (outcomes are dropped once saved: memory stays flat)."""

    fetched: int = 0
    new_files: int = 0
    bytes_fetched: int = 0
    retried: int = 0
    failures: list = field(default_factory=list)

    @property
    def n_failed(self) -> int:
        return len(self.failures)

    def add(self, o: Outcome) -> None:
        self.retried += o.attempts > 1
        if o.error:
            self.failures.append(
                {"id": o.row_id, "url_source": o.url_source, "source": o.source, "error": o.error}
            )
        else:
            self.fetched += 1
            self.bytes_fetched += len(o.data)

    def report(self, started, t0, plants_data, n_already, skipped, raw_root, p, final: bool):
        seconds = time.perf_counter() - t0
        reasons = Counter(f["error"].split(":", 1)[0] for f in self.failures)
        return {
            "started_at": started.isoformat(),
            "finished_at": utcnow().isoformat() if final else None,
            "complete": final,
            "seconds": round(seconds, 3),
            "rows": len(plants_data),
            "fetched": self.fetched,
            "new_files": self.new_files,
            "bytes_fetched": self.bytes_fetched,
            "already_stored": n_already,
            "skipped_failed": len(skipped),
            "failed": self.n_failed,
            "failed_by_reason": dict(sorted(reasons.items())),
            "retried": self.retried,
            "images_per_s": round(self.fetched / seconds, 2) if self.fetched and seconds else None,
            "failures": self.failures,
            "skipped_failed_rows": [
                {"id": int(r["id"]), "url_source": r["url_source"], "error": r.get("error")}
                for r in skipped
            ],
            "raw_root": raw_root,
            "mirrors": [m.__dict__ for m in _mirrors(p)],
        }


def ingest_all(
    plants_data: pd.DataFrame, raw_inventory: dict[str, Any], params: dict
) -> tuple[dict[str, bytes], pd.DataFrame, dict[str, Any]]:
    """The node's chunks merged: (every new file, every update, the final report). For
    callers outside Kedro (benchmarks, tests) that want the whole result at once."""
    files: dict[str, bytes] = {}
    frames, reports = [], []
    for chunk, updates, report in ingest_images(plants_data, raw_inventory, params):
        files.update(chunk)
        frames.append(updates)
        reports.append(report)
    return files, pd.concat(frames, ignore_index=True), reports[-1]


def _mirrors(params: IngestionParams) -> list[fetching.Mirror]:
    return fetching.parse_mirrors([m.model_dump() for m in params.mirrors])


def _update(row_id, status, error, sha256, url_s3, ingested_at) -> dict:
    return {
        "id": int(row_id),
        "status": status,
        "error": error,
        "sha256": sha256,
        "url_s3": url_s3,
        "ingested_at": ingested_at,
    }


class IngestionFailed(UserFacingError):
    """Every row this run tried failed: nothing was stored, and the run must not read as
    a success (a mirror refused as a private address, a wrong URL prefix, a dead server)."""


def require_progress(report: dict[str, Any], shown: int = 3) -> None:
    """Raise :class:`IngestionFailed` when the run fetched nothing, stored nothing before
    and failed at least one row, with the count, the reasons and the first failures."""
    if not report["failed"] or report["fetched"] or report["already_stored"]:
        return
    first = "; ".join(
        f"row {f['id']} {f['url_source']}: {f['error']}" for f in report["failures"][:shown]
    )
    raise IngestionFailed(
        f"ingestion: all {report['failed']} rows it fetched failed "
        f"({', '.join(f'{k} {v}' for k, v in report['failed_by_reason'].items())}); "
        f"first: {first}. The rows are marked failed in the table with their reasons "
        "(`plants-mlops db status`); docs/own-data.md says how to serve a local folder."
    )


def summarize_ingestion(ingestion_report: dict[str, Any]) -> dict[str, Any]:
    """The stage summary: how many rows were fetched, stored, skipped and failed. A run in
    which every row failed stops here (after the report and the table were saved)."""
    from plants_mlops.summaries import StageSummary, integers

    require_progress(ingestion_report)

    counts = integers(ingestion_report)
    counts.update({f"failed_{k}": v for k, v in ingestion_report["failed_by_reason"].items()})
    return StageSummary(
        stage="ingestion",
        counts=counts,
        metrics={"images_per_s": float(ingestion_report["images_per_s"] or 0.0)},
        verdict="failures" if ingestion_report["failed"] else "ok",
        outputs=["ingestion_report"],
    ).to_json()


def _intact(loader, row: dict) -> bool:
    try:
        return hashlib.sha256(loader()).hexdigest() == row["sha256"]
    except OSError:
        return False
