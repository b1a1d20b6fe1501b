"""The measurement history as one Markdown table: ``benchmarks/results/*.csv`` (one row
per run: date, machine, command, figures), newest first.

    python benchmarks/results_table.py            # print the table
    python benchmarks/results_table.py --write    # put it into docs/benchmarks.md

The table sits between the ``<!-- results:start -->`` and ``<!-- results:end -->`` lines
of docs/benchmarks.md; tests/test_benchmark_results.py checks that it is in sync.
"""

from __future__ import annotations

import argparse
import csv
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
PAGE = ROOT / "docs" / "benchmarks.md"
START, END = "<!-- results:start -->", "<!-- results:end -->"
COLUMNS = ("date", "machine", "command", "figures")


def rows(folder: Path = RESULTS) -> list[dict[str, str]]:
    out = []
    for path in sorted(folder.glob("*.csv")):
        with path.open(newline="", encoding="utf-8") as fh:
            reader = csv.DictReader(fh)
            if tuple(reader.fieldnames or ()) != COLUMNS:
                raise SystemExit(f"{path}: columns must be {', '.join(COLUMNS)}")
            out += list(reader)
    return sorted(out, key=lambda r: r["date"], reverse=True)  # stable: file order kept


def table(results: list[dict[str, str]]) -> str:
    def cell(text: str) -> str:
        return text.replace("|", "\\|").replace("\n", " ")

    lines = ["| date | machine | command | figures |", "| --- | --- | --- | --- |"]
    for r in results:
        command = f"`{cell(r['command'])}`"
        lines.append(f"| {r['date']} | {cell(r['machine'])} | {command} | {cell(r['figures'])} |")
    return "\n".join(lines)


def page_with(text: str, generated: str) -> str:
    """``text`` with the part between the markers replaced by ``generated``."""
    head, rest = text.split(START, 1)
    _, tail = rest.split(END, 1)
    return f"{head}{START}\n{generated}\n{END}{tail}"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--write", action="store_true", help="update docs/benchmarks.md")
    args = parser.parse_args()
    generated = table(rows())
    if args.write:
        PAGE.write_text(page_with(PAGE.read_text(encoding="utf-8"), generated), encoding="utf-8")
    else:
        print(generated)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
