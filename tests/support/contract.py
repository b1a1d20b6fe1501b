"""The API contract run: schemathesis' CLI (``st run``) against a live API's own
``/openapi.json``, every check, all four phases (examples, coverage, fuzzing, stateful),
admin routes with the key. Shared by tests/test_api_contract.py (bounded) and
benchmarks/bench_api_contract.py (>= 2,000 cases)."""

from __future__ import annotations

import json
import os
import subprocess
from dataclasses import dataclass
from pathlib import Path

from support import servers
from support.serving import ADMIN_KEY

TESTS = Path(__file__).resolve().parents[1]
PHASES = "examples,coverage,fuzzing,stateful"
# The settings of the server a contract run talks to. The retrain route starts a command
# that exits at once; and one client sends thousands of requests, so the per-client
# feedback limit is lifted (a 429 there stands in for the validation the run checks; the
# limit has its own test in tests/test_serving_hardening.py).
SERVER_ENV = {"PLANTS_RETRAIN_COMMAND": "true", "PLANTS_FEEDBACK_PER_MINUTE": "1000000"}


@dataclass
class ContractRun:
    returncode: int
    output: str
    report: dict

    @property
    def cases(self) -> int:
        """Test cases schemathesis generated and sent (over the four phases)."""
        return int(self.report.get("test_cases", {}).get("generated", 0))

    @property
    def failures(self) -> list[dict]:
        return list(self.report.get("failures", [])) + list(self.report.get("errors", []))


def run_schemathesis(
    url: str, report_dir: Path, *, max_examples: int, seed: int = 0, timeout: float = 600
) -> ContractRun:
    report = report_dir / "schemathesis.json"
    argv = [
        str(servers.VENV_BIN / "st"),
        "--config-file",
        str(TESTS / "schemathesis.toml"),
        "run",
        f"{url}/openapi.json",
        "--checks",
        "all",
        "--phases",
        PHASES,
        "--max-examples",
        str(max_examples),
        "--seed",
        str(seed),
        "--generation-database",
        "none",
        "--workers",
        "1",
        "--request-timeout",
        "30",
        "--header",
        f"X-API-Key: {ADMIN_KEY}",
        "--report",
        "json",
        "--report-json-path",
        str(report),
        "--no-color",
        "--suppress-health-check",
        "all",
    ]
    env = {
        **os.environ,
        "SCHEMATHESIS_HOOKS": "support.schemathesis_hooks",
        "PYTHONPATH": os.pathsep.join([str(TESTS), os.environ.get("PYTHONPATH", "")]),
    }
    proc = subprocess.run(
        argv, capture_output=True, text=True, timeout=timeout, env=env, cwd=report_dir
    )
    data = json.loads(report.read_text()) if report.exists() else {}
    return ContractRun(proc.returncode, proc.stdout + proc.stderr, data)
