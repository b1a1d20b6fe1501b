"""The measurement history lives in benchmarks/results/ (one row per run); the table in
docs/benchmarks.md is generated from it and must be in sync."""

from __future__ import annotations

import importlib.util
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _script():
    spec = importlib.util.spec_from_file_location(
        "results_table", ROOT / "benchmarks" / "results_table.py"
    )
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_docs_table_is_the_one_the_results_make():
    script = _script()
    page = (ROOT / "docs" / "benchmarks.md").read_text(encoding="utf-8")
    expected = script.page_with(page, script.table(script.rows()))
    assert page == expected, "run `python benchmarks/results_table.py --write`"


def test_every_run_names_its_date_machine_command_and_figures():
    results = _script().rows()
    assert results
    for row in results:
        assert all(row[k].strip() for k in ("date", "machine", "command", "figures")), row
        assert len(row["date"]) == 10 and row["date"][4] == "-", row["date"]


def test_a_changed_row_puts_the_page_out_of_sync(tmp_path):
    script = _script()
    (tmp_path / "runs.csv").write_text(
        "date,machine,command,figures\n2026-12-07,a CPU,make bench,1 img/s\n"
    )
    page = (ROOT / "docs" / "benchmarks.md").read_text(encoding="utf-8")
    assert script.page_with(page, script.table(script.rows(tmp_path))) != page
