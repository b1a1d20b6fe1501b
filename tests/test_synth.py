"""The synthetic catalogue for scale tests: deterministic, distinct, broken rows that fail
with their reasons when ingested from its real loopback mirror."""

from __future__ import annotations

import csv
import hashlib

import pandas as pd
from support.params import base_labels, stage_params

from plants_mlops import cli, contracts, db
from plants_mlops.commands import mirror
from plants_mlops.datasets import data_synth
from plants_mlops.pipelines.ingestion.nodes import ingest_all


def _files(root) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*.jpg"))}


def test_synth_is_deterministic_distinct_and_breaks_the_share_asked(tmp_path):
    a = data_synth.synth(120, tmp_path / "a", labels=base_labels(), seed=3, broken_share=0.1)
    data_synth.synth(120, tmp_path / "b", labels=base_labels(), seed=3, broken_share=0.1)
    c = data_synth.synth(120, tmp_path / "c", labels=base_labels(), seed=4, broken_share=0.1)
    files_a, files_b = _files(tmp_path / "a"), _files(tmp_path / "b")
    assert files_a == files_b  # same (n, seed): the same bytes
    assert files_a != _files(tmp_path / "c")
    assert a.per_label == {label: 60 for label in base_labels()}
    assert a.broken == {kind: 3 for kind in data_synth.BROKEN_KINDS}
    rows = list(csv.DictReader(a.manifest_text().splitlines()))
    assert len(rows) == 120 and len({r["url_source"] for r in rows}) == 120
    good = [r for r in rows if r["sha256"]]
    assert len(good) == 120 - 12
    shas = {hashlib.sha256(d).hexdigest() for k, d in files_a.items() if k.count("/") == 1}
    assert len(shas) == len(good) == len({r["sha256"] for r in good})  # distinct by sha256
    assert {r["sha256"] for r in good} == shas
    assert c.n == 120


def test_ingesting_the_synthetic_mirror_keeps_good_rows_and_names_the_broken(tmp_path):
    report = data_synth.synth(
        48, tmp_path / "cat", labels=base_labels(), seed=1, broken_share=1 / 6
    )
    manifest = list(csv.DictReader(report.manifest_text().splitlines()))
    frame = pd.DataFrame(
        [
            {
                "id": i + 1,
                "url_source": r["url_source"],
                "label": r["label"],
                "sha256": r["sha256"] or None,
                "status": contracts.STATUS_PENDING,
                "url_s3": None,
                "error": None,
            }
            for i, r in enumerate(manifest)
        ]
    )
    with mirror.serve(tmp_path / "cat", slow_s=0.3) as url:
        params = stage_params(
            "ingestion",
            raw_root="raw",
            mirrors=[{"prefix": data_synth.DEFAULT_PREFIX, "to": url}],
            max_attempts=1,
            progress=False,
        )
        files, updates, summary = ingest_all(frame, {}, params)
    assert summary["fetched"] == 48 - 6
    assert summary["failed_by_reason"] == {"http_404": 2, "not_an_image": 2, "damaged_image": 2}
    assert len(files) == 42  # the slow rows arrive, later
    failed = updates[updates["status"] == contracts.STATUS_FAILED]
    assert len(failed) == 6 and failed["error"].notna().all()


def test_data_synth_command_writes_and_seeds(tmp_path, capsys):
    db_url = f"sqlite:///{tmp_path / 'plants.db'}"
    out = tmp_path / "cat"
    rc = cli.main(
        ["data", "synth", "30", "--seed", "2", "--out", str(out), "--seed-db", "--db-url", db_url]
    )
    assert rc == 0
    assert "30 added" in capsys.readouterr().out
    assert len(db.load_rows(db.make_engine(db_url))) == 30
