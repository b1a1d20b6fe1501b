"""The API contract at scale: schemathesis (every check; examples, coverage, fuzzing and
stateful phases; admin routes with the key; the server settings of ``support.contract``)
against the real API under uvicorn serving a tiny champion from a throw-away local MLflow
registry.
The test suite runs the same with a dozen examples per operation
(tests/test_api_contract.py); this one runs enough for >= 2,000 generated cases and prints
the case count, the failures and the time.

    .venv/bin/python benchmarks/bench_api_contract.py [--max-examples 200] [--seed 0]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))

from support.champion import register_champion  # noqa: E402  (the test suite's helpers)
from support.contract import SERVER_ENV, run_schemathesis  # noqa: E402
from support.serving import running_api  # noqa: E402


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--max-examples", type=int, default=200)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="bench-contract-") as tmp:
        folder = Path(tmp)
        tracking = f"sqlite:///{folder / 'mlflow.db'}"
        register_champion(tracking, name="plants-classifier")
        with running_api(
            folder / "api",
            tracking_uri=tracking,
            model_name="plants-classifier",
            env=SERVER_ENV,
        ) as api:
            started = time.monotonic()
            run = run_schemathesis(
                api.url, folder, max_examples=args.max_examples, seed=args.seed, timeout=3600
            )
            elapsed = time.monotonic() - started
            tracebacks = api.log_text().count("Traceback")
    report = run.report
    print(
        f"schemathesis {report.get('schemathesis_version')}, seed {args.seed}, "
        f"--max-examples {args.max_examples}, checks all, phases examples,coverage,fuzzing,stateful"
    )
    print(f"operations tested: {report['operations']['tested']} of {report['operations']['total']}")
    print("phases: " + ", ".join(f"{p} {v['status']}" for p, v in report["phases"].items()))
    print(f"cases generated: {run.cases}")
    print(f"failures: {len(run.failures)}  {[f.get('code', f) for f in run.failures]}")
    print(f"server tracebacks: {tracebacks}")
    print(f"time: {elapsed:.1f} s ({run.cases / elapsed:.0f} cases/s)")
    return 0 if run.returncode == 0 and not run.failures and tracebacks == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
