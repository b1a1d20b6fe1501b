"""Damaged stores (a SQLite database with overwritten pages or cut short, a truncated
parquet file) are named in one line with their fix: `db status` checks integrity
(`PRAGMA quick_check`) instead of counting rows from a damaged file, and every stage stops
in one line, exit status 1, no traceback."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

from plants_mlops import cli


def _status(capsys, url: str) -> tuple[int, str, str]:
    capsys.readouterr()
    rc = cli.main(["db", "status", "--db-url", url])
    out = capsys.readouterr()
    return rc, out.out, out.err


def _damage_pages(path: Path) -> None:
    """Overwrite the middle pages of the file (what a bad disk or a torn copy leaves)."""
    data = bytearray(path.read_bytes())
    start = (len(data) // 4096 // 2) * 4096
    data[start : start + 8192] = b"\x55" * 8192
    path.write_bytes(bytes(data))


def _one_line(err: str) -> str:
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    return lines[0]


def test_db_status_checks_integrity_and_names_a_damaged_file(tmp_path, capsys):
    path = tmp_path / "plants.db"
    url = f"sqlite:///{path}"
    assert cli.main(["db", "seed", "--db-url", url]) == 0
    rc, out, _ = _status(capsys, url)
    assert rc == 0 and "rows: 400" in out and "integrity: ok" in out
    pristine = path.read_bytes()

    _damage_pages(path)
    rc, out, err = _status(capsys, url)
    line = _one_line(err)
    assert rc == 1 and out == ""
    assert f"database file {path} is damaged" in line
    assert "plants-mlops db seed" in line

    path.write_bytes(pristine[: len(pristine) // 3])  # cut short
    rc, _, err = _status(capsys, url)
    assert rc == 1 and f"database file {path} is damaged" in _one_line(err)


def test_stages_on_a_damaged_database_or_parquet_stop_in_one_line(data_project):
    data = data_project.path / "data"
    index = data / "03_primary" / "dataset_index.parquet"
    saved = index.read_bytes()
    index.write_bytes(saved[: len(saved) // 2])
    done = data_project.run_cli("validation", check=False)
    assert done.returncode == 1
    assert "Traceback" not in done.stderr + done.stdout, done.stderr[-3000:]
    last = done.stderr.strip().splitlines()[-1]
    assert last.startswith("error: ") and f"{index} is damaged" in last
    index.write_bytes(saved)

    db_path = Path(os.environ["PLANTS_DB_URL"].removeprefix("sqlite:///"))
    shutil.copy(db_path, db_path.with_suffix(".bak"))
    _damage_pages(db_path)
    done = data_project.run_cli("ingestion", check=False)
    assert done.returncode == 1
    assert "Traceback" not in done.stderr + done.stdout, done.stderr[-3000:]
    last = done.stderr.strip().splitlines()[-1]
    assert last.startswith("error: ") and f"database file {db_path} is damaged" in last
