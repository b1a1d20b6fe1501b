"""Helpers for the ZenML tests: an isolated ZenML home, the real CLI, Client queries.

Everything ZenML-related runs in subprocesses so that each test session has its own
``ZENML_CONFIG_PATH`` (local SQLite store) and the pytest process never imports ZenML state.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

from support.servers import VENV_BIN, untraced

ALL_STAGES = [
    "ingestion",
    "formatting",
    "curation",
    "validation",
    "training",
    "evaluation",
    "behaviour",
    "registry",
]
# The ZenML tests check the orchestration, not the network: the small CNN from random
# weights (tests/test_training.py trains every architecture, the default included).
TINY_TRAINING = [
    "training.architecture=small_cnn",
    "training.weights=null",
    "training.epochs=1",
    "training.image_size=64",
    "training.batch_size=16",
]


def zenml_env(zen_home: Path, **extra: str) -> dict[str, str]:
    return {
        **os.environ,
        "ZENML_CONFIG_PATH": str(zen_home),
        "ZENML_ANALYTICS_OPT_IN": "false",
        "ZENML_AUTO_OPEN_DASHBOARD": "false",
        "ZENML_LOGGING_COLORS_DISABLED": "true",
        "KEDRO_DISABLE_TELEMETRY": "true",
        "COLUMNS": "200",
        **extra,
    }


def cli(
    args: list[str], env: dict[str, str], cwd: Path, check: bool = True, timeout: float = 900
) -> subprocess.CompletedProcess:
    """Run ``plants-mlops ARGS`` in ``cwd``; on failure the assertion shows the output tail."""
    proc = subprocess.run(
        [str(VENV_BIN / "plants-mlops"), *args],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    if check and proc.returncode != 0:
        raise AssertionError(
            f"plants-mlops {' '.join(args)} failed ({proc.returncode}):\n"
            f"{proc.stdout[-6000:]}\n{proc.stderr[-6000:]}"
        )
    return proc


def zenml_query(code: str, env: dict[str, str], cwd: Path) -> object:
    """Run ``code`` (which sets ``result``) with a ZenML ``client``; returns ``result``."""
    script = "import json\nfrom zenml.client import Client\nclient = Client()\n"
    script += textwrap.dedent(code)
    script += "\nprint('RESULT=' + json.dumps(result, default=str))\n"
    proc = subprocess.run(
        [sys.executable, "-c", script],
        cwd=cwd,
        env=untraced(env),  # a ZenML client: none of the project's code runs
        capture_output=True,
        text=True,
        timeout=300,
    )
    for line in proc.stdout.splitlines():
        if line.startswith("RESULT="):
            return json.loads(line[len("RESULT=") :])
    raise AssertionError(
        f"query failed ({proc.returncode}):\n{proc.stdout[-3000:]}\n{proc.stderr[-6000:]}"
    )


def run_json(path: Path) -> dict:
    return json.loads(path.read_text())


def rendered_text(url: str, budget_ms: int = 8000) -> str:
    """The text of ``url`` after headless Chromium ran its JavaScript (tags stripped)."""
    import re
    import shutil
    import tempfile

    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    assert chromium, "Debian's chromium is needed (installed by scripts/test-prereqs.sh)"
    with tempfile.TemporaryDirectory(prefix="chromium-") as profile:
        proc = subprocess.run(
            [
                chromium,
                "--headless",
                "--no-sandbox",
                "--disable-gpu",
                "--hide-scrollbars",
                f"--user-data-dir={profile}",
                f"--virtual-time-budget={budget_ms}",
                "--dump-dom",
                url,
            ],
            capture_output=True,
            text=True,
            timeout=180,
        )
    html = re.sub(r"<(style|script)\b.*?</\1>", " ", proc.stdout, flags=re.S)
    return re.sub(r"\s+", " ", re.sub(r"<[^>]+>", " ", html))


def pipeline_run(args: list[str], env: dict[str, str], cwd: Path, out: Path) -> dict:
    """``plants-mlops pipeline run ARGS --json-out OUT``; returns the run summary JSON."""
    cli(["pipeline", "run", *args, "--json-out", str(out)], env, cwd)
    return run_json(out)


def small_project(project: Path, env_name: str, tmp_path: Path, db_url: str | None = None) -> None:
    """Seed 40 images into the project's table, with validation thresholds a subset meets."""
    from data_testlib import SUBSET_VALIDATION, manifest_rows, seed, write_params

    seed(db_url or os.environ["PLANTS_DB_URL"], manifest_rows(per_label=20), tmp_path)
    write_params(project, env_name, SUBSET_VALIDATION)


class LocalZenml:
    """A 40-image project copy, a ZenML home with the ``local`` stack registered, and the
    runs made there: the first is the full pipeline, made once per session for the ZenML
    pipeline and dashboard tests (each run costs the better part of a minute here)."""

    def __init__(self, project: Path, env: dict[str, str], tmp: Path) -> None:
        self.project, self.env, self.tmp = project, env, tmp
        self.registered = cli(["stack", "register", "local"], env, project)
        self.runs: list[dict] = []
        self.consoles: list[str] = []  # what each run printed
        self.first = self.run(["--stack", "local", "--params", *TINY_TRAINING], traced=True)

    def run(self, args: list[str], traced: bool = False) -> dict:
        """``plants-mlops pipeline run ARGS``; its summary, recorded as the latest run.

        Only the first run is traced by coverage unless ``traced``: the later ones run the
        same CLI and step code again (cached steps run none), and a traced ZenML run costs
        about 1.6x the CPU of an untraced one. The few lines only a rerun reaches (nothing
        left to fetch, rows gone from the table) are measured by test_ingestion and
        test_formatting."""
        out = self.tmp / f"run{len(self.runs) + 1}.json"
        env = self.env if traced else untraced(self.env)
        proc = cli(["pipeline", "run", *args, "--json-out", str(out)], env, self.project)
        self.consoles.append(proc.stdout + proc.stderr)
        self.runs.append(run_json(out))
        return self.runs[-1]

    @property
    def latest(self) -> dict:
        return self.runs[-1]
