"""Ingestion against a real HTTP mirror with faults, through the real `kedro run` CLI."""

from __future__ import annotations

import hashlib
import os

import httpx
import pytest
from data_testlib import (
    FAULT_REASONS,
    PUBLIC_PREFIX,
    fault_rows,
    manifest_rows,
    mirror_counts,
    mirror_params,
    read_json,
    sample_path,
    seed,
    table,
    write_params,
)
from support.params import stage_params

from plants_mlops import contracts
from plants_mlops.params import IngestionParams, parse
from plants_mlops.pipelines.ingestion import fetch as fetching
from plants_mlops.pipelines.ingestion.nodes import ingest_all

ROOT_SAMPLES = os.path.join(os.path.dirname(__file__), "..", "samples", "plants")


def _policy(**overrides) -> fetching.FetchPolicy:
    return parse(IngestionParams, stage_params("ingestion", **overrides), "ingestion")


def test_faults_end_as_failed_rows_with_reasons_and_a_rerun_fetches_nothing_twice(
    kedro_project, http_mirror, tmp_path
):
    good = manifest_rows(per_label=20)
    seed(os.environ["PLANTS_DB_URL"], good + fault_rows(http_mirror), tmp_path)
    write_params(kedro_project.path, "local", mirror_params(http_mirror))
    before = mirror_counts(http_mirror)

    kedro_project.run("ingestion")

    rows = table(os.environ["PLANTS_DB_URL"]).set_index("url_source")
    for name, reason in FAULT_REASONS.items():
        row = rows.loc[f"{http_mirror}faults/{name}.jpg"]
        assert row["status"] == contracts.STATUS_FAILED, name
        assert row["error"].startswith(reason + ":"), (name, row["error"])
        assert row["url_s3"] is None
    flaky = rows.loc[f"{http_mirror}faults/flaky.jpg"]
    assert flaky["status"] == contracts.STATUS_OK  # 500 first, retried, then the image
    for r in good:
        assert rows.loc[r["url_source"], "status"] == contracts.STATUS_OK
        assert rows.loc[r["url_source"], "sha256"] == r["sha256"]

    # Original bytes, content-addressed, recorded as url_s3.
    raw = kedro_project.path / "data" / "01_raw"
    for r in good:
        stored = raw / r["label"] / f"{r['sha256']}.jpg"
        assert hashlib.sha256(stored.read_bytes()).hexdigest() == r["sha256"]
        assert rows.loc[r["url_source"], "url_s3"] == f"data/01_raw/{r['label']}/{r['sha256']}.jpg"
    assert len(list(raw.rglob("*.jpg"))) == 40  # flaky.jpg is the same bytes as row 1

    summary = read_json(kedro_project.path / "data" / "08_reporting" / "ingestion_report.json")
    assert summary["failed"] == 5
    assert summary["failed_by_reason"] == {v: 1 for v in FAULT_REASONS.values()}
    assert {f["url_source"] for f in summary["failures"]} == {
        f"{http_mirror}faults/{n}.jpg" for n in FAULT_REASONS
    }

    counts = mirror_counts(http_mirror)
    hits = {p: counts.get(p, 0) - before.get(p, 0) for p in counts}
    assert all(hits[sample_path(r)] == 1 for r in good)
    assert hits["/faults/missing.jpg"] == 1  # a 404 is final: no retry
    assert hits["/faults/slow.jpg"] == 2  # timeouts are retried (max_attempts=2)

    # Second run: nothing already stored is fetched again; failed rows are retried.
    kedro_project.run("ingestion")
    again = mirror_counts(http_mirror)
    assert all(again[sample_path(r)] == counts[sample_path(r)] for r in good)
    assert again.get("/faults/flaky.jpg") == counts.get("/faults/flaky.jpg")
    assert again["/faults/missing.jpg"] == counts["/faults/missing.jpg"] + 1
    summary = read_json(kedro_project.path / "data" / "08_reporting" / "ingestion_report.json")
    assert summary["fetched"] == 0 and summary["already_stored"] == 41
    assert summary["failed"] == 5


def _sample_inventory(rows):
    """The raw layer as the catalog loads it: key -> loader of the stored bytes."""
    from functools import partial
    from pathlib import Path

    from data_testlib import sample_path

    return {
        f"{r['label']}/{r['sha256']}.jpg": partial(Path(ROOT_SAMPLES + sample_path(r)).read_bytes)
        for r in rows
    }


def _rows_frame(rows, status=contracts.STATUS_PENDING):
    import pandas as pd

    return pd.DataFrame(
        [
            {
                "id": i + 1,
                "url_source": r["url_source"],
                "label": r["label"],
                "sha256": r.get("sha256") or None,
                "status": status,
                "url_s3": None,
                "error": None,
            }
            for i, r in enumerate(rows)
        ]
    )


def test_content_already_in_the_raw_layer_is_not_fetched_even_with_a_fresh_table(tmp_path):
    rows = manifest_rows(per_label=3)
    params = stage_params(
        "ingestion",
        raw_root="data/01_raw",
        mirrors=[{"prefix": PUBLIC_PREFIX, "to": str(tmp_path / "nowhere")}],
        progress=False,
    )
    new, updates, summary = ingest_all(_rows_frame(rows), _sample_inventory(rows), params)
    assert new == {}
    assert summary["fetched"] == 0 and summary["already_stored"] == 6
    assert set(updates["status"]) == {contracts.STATUS_OK}
    assert list(updates["url_s3"]) == [f"data/01_raw/{r['label']}/{r['sha256']}.jpg" for r in rows]


def test_local_folder_mirror_checks_the_expected_sha256(tmp_path):
    rows = manifest_rows(per_label=2)
    rows[0] = {**rows[0], "sha256": "0" * 64}
    rows[1] = {**rows[1], "url_source": PUBLIC_PREFIX + "dandelion/does-not-exist.jpg"}
    params = stage_params(
        "ingestion",
        raw_root="s3://bucket/01_raw",
        mirrors=[{"prefix": PUBLIC_PREFIX, "to": ROOT_SAMPLES}],
        progress=False,
    )
    new, updates, summary = ingest_all(_rows_frame(rows), {}, params)
    by_id = updates.set_index("id")
    assert by_id.loc[1, "error"].startswith("checksum_mismatch:")
    assert by_id.loc[1, "sha256"] == "0" * 64  # the expectation is kept for the next run
    assert by_id.loc[2, "error"].startswith("not_found:")
    assert list(by_id.loc[[3, 4], "status"]) == [contracts.STATUS_OK] * 2
    assert sorted(new) == sorted(f"{r['label']}/{r['sha256']}.jpg" for r in rows[2:])
    for key, data in new.items():
        assert hashlib.sha256(data).hexdigest() == key.split("/")[1].split(".")[0]
    assert by_id.loc[3, "url_s3"].startswith("s3://bucket/01_raw/grass/")
    assert summary["failed_by_reason"] == {"checksum_mismatch": 1, "not_found": 1}


def test_fetch_retries_server_errors_with_backoff_but_never_a_404(http_mirror):
    policy = _policy(max_attempts=3, backoff_s=0.01, read_timeout_s=5)
    with httpx.Client(timeout=5) as client:
        with pytest.raises(fetching.FetchError) as err:
            fetching.fetch(f"{http_mirror}faults/always500.jpg", client, policy)
        assert err.value.reason == "http_500" and err.value.attempts == 3
        assert "gave up after 3 attempts" in str(err.value)
        with pytest.raises(fetching.FetchError) as err:
            fetching.fetch(f"{http_mirror}faults/missing.jpg", client, policy)
        assert err.value.reason == "http_404" and err.value.attempts == 1


def test_a_closed_port_is_a_connection_failure_not_a_crash():
    from support.servers import free_port

    policy = _policy(max_attempts=2, backoff_s=0.01, connect_timeout_s=1)
    with httpx.Client(timeout=2) as client, pytest.raises(fetching.FetchError) as err:
        fetching.fetch(f"http://127.0.0.1:{free_port()}/x.jpg", client, policy)
    assert err.value.reason == "connection" and err.value.attempts == 2


def test_mirror_prefix_rewrites_to_a_folder_or_a_base_url():
    mirrors = fetching.parse_mirrors(
        [
            {"prefix": "https://a.example/data/", "to": "/srv/mirror"},
            {"prefix": "https://a.example/data/grass/", "to": "http://127.0.0.1:8000/g"},
            {"prefix": "https://b.example/", "to": ""},  # disabled
        ]
    )
    assert fetching.resolve("https://a.example/data/dandelion/1.jpg", mirrors) == (
        "/srv/mirror/dandelion/1.jpg"
    )
    assert fetching.resolve("https://a.example/data/grass/2.jpg", mirrors) == (
        "http://127.0.0.1:8000/g/2.jpg"
    )
    assert fetching.resolve("https://b.example/x.jpg", mirrors) == "https://b.example/x.jpg"
    # scheme and host are case-insensitive (the row bypassed the mirror: a DNS failure);
    # the path is not
    assert fetching.resolve("HTTPS://A.Example/data/dandelion/1.jpg", mirrors) == (
        "/srv/mirror/dandelion/1.jpg"
    )
    assert fetching.resolve("https://a.example/DATA/x.jpg", mirrors) == (
        "https://a.example/DATA/x.jpg"
    )


def test_fetches_in_flight_are_bounded_while_the_consumer_saves():
    """While the node's consumer (Kedro saving a chunk) is busy, the pool must not run ahead
    through the whole catalogue holding every fetched image in memory."""
    import threading

    from plants_mlops.pipelines.ingestion.nodes import IN_FLIGHT_PER_WORKER, stream_rows

    started = []
    lock = threading.Lock()

    def one(row, client):
        with lock:
            started.append(row["id"])
        return row["id"]

    p = _policy(concurrency=2, mirrors=[])
    rows = [{"id": i} for i in range(500)]
    stream = stream_rows(rows, p, one)
    first = next(stream)
    import time

    time.sleep(0.5)  # the consumer is "saving": the workers have all the time to run ahead
    bound = 2 * IN_FLIGHT_PER_WORKER + 1
    assert len(started) <= bound, f"{len(started)} rows started while one was consumed"
    rest = list(stream)
    assert sorted([first, *rest]) == list(range(500))  # every row still comes out once


def test_saved_chunks_are_released_under_kedros_streaming(monkeypatch, tmp_path):
    """Kedro's tee keeps up to 57 yielded chunks alive: the node empties a chunk of files
    once Kedro asked for the next one (it is saved by then)."""
    import itertools

    from kedro.pipeline import node
    from more_itertools import interleave

    from plants_mlops.pipelines.ingestion import nodes

    monkeypatch.setattr(nodes, "SAVE_EVERY_IMAGES", 2)
    rows = manifest_rows(per_label=4)
    params = stage_params(
        "ingestion",
        raw_root="raw",
        mirrors=[{"prefix": PUBLIC_PREFIX, "to": ROOT_SAMPLES}],
        progress=False,
    )
    kedro_node = node(nodes.ingest_images, ["t", "inv", "p"], ["raw", "updates", "report"])
    streams = kedro_node.run({"t": _rows_frame(rows), "inv": {}, "p": params})
    files: list[dict] = []
    stored: set[str] = set()
    for name, data in zip(itertools.cycle(streams), interleave(*streams.values()), strict=False):
        if name == "raw":
            assert all(len(earlier) == 0 for earlier in files)
            stored |= set(data)
            files.append(data)
    assert len(files) >= 4 and len(stored) == 8  # every file went through a save


def test_a_jpeg_cut_before_its_end_marker_or_a_png_cut_short_fails_as_damaged_image(tmp_path):
    """One reason for an image whose bytes are incomplete, whatever the format: the row
    records ``damaged_image`` (the API answers the same, 400)."""
    import io
    from pathlib import Path

    from PIL import Image

    sample = Path(ROOT_SAMPLES + sample_path(manifest_rows(per_label=1)[0])).read_bytes()
    assert sample.endswith(b"\xff\xd9")
    buf = io.BytesIO()
    Image.open(io.BytesIO(sample)).save(buf, format="PNG")
    png = buf.getvalue()
    mirror = tmp_path / "mirror" / "cut"
    mirror.mkdir(parents=True)
    (mirror / "no_end.jpg").write_bytes(sample[:-64])  # the last bytes, FF D9 included
    (mirror / "half.jpg").write_bytes(sample[: len(sample) // 2])
    (mirror / "short.png").write_bytes(png[: len(png) - 100])
    rows = [
        {"url_source": f"{PUBLIC_PREFIX}cut/{name}", "label": "grass"}
        for name in ("no_end.jpg", "half.jpg", "short.png")
    ]
    params = stage_params(
        "ingestion",
        raw_root="data/01_raw",
        mirrors=[{"prefix": PUBLIC_PREFIX, "to": str(tmp_path / "mirror")}],
        progress=False,
    )
    new, updates, summary = ingest_all(_rows_frame(rows), {}, params)
    assert new == {}
    assert set(updates["status"]) == {contracts.STATUS_FAILED}
    assert all(e.startswith("damaged_image:") for e in updates["error"]), list(updates["error"])
    assert summary["failed_by_reason"] == {"damaged_image": 3}
