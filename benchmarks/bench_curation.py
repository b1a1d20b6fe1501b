"""Curation-stage time on the 400 shipped images: the curation pipeline cold (every
embedding computed) and warm (embeddings from the sha256 cache), and its peak memory.
Prints figures; asserts nothing.

    .venv/bin/python benchmarks/bench_curation.py [--repeat 2]

Builds the data layers once with `kedro run --pipelines ingestion,formatting` in a
temporary copy of the project (offline, from samples/plants), then times
`kedro run --pipelines curation` in process.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

from memory import peak_rss_mb  # benchmarks/memory.py

ROOT = Path(__file__).resolve().parents[1]


def project_copy(dest: Path) -> Path:
    dest.mkdir()
    shutil.copy(ROOT / "pyproject.toml", dest / "pyproject.toml")
    shutil.copytree(ROOT / "conf", dest / "conf", ignore=shutil.ignore_patterns("local"))
    (dest / "conf" / "local").mkdir()
    (dest / "samples").symlink_to(ROOT / "samples")
    (dest / "src").mkdir()
    return dest


def run(project: Path, pipelines: str) -> float:
    from kedro.framework.session import KedroSession
    from kedro.framework.startup import bootstrap_project

    started = time.perf_counter()
    with contextlib.chdir(project):
        bootstrap_project(project)
        with KedroSession.create(project_path=project) as session:
            session.run(pipeline_names=pipelines.split(","))
    return time.perf_counter() - started


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeat", type=int, default=2)
    args = ap.parse_args()
    os.environ.setdefault("KEDRO_DISABLE_TELEMETRY", "true")
    import logging

    logging.disable(logging.WARNING)
    with tempfile.TemporaryDirectory() as tmp:
        project = project_copy(Path(tmp) / "project")
        os.environ["PLANTS_DB_URL"] = f"sqlite:///{project / 'data' / 'plants.db'}"
        os.environ["MLFLOW_TRACKING_URI"] = f"sqlite:///{project / 'data' / 'mlflow.db'}"
        run(project, "ingestion,formatting")
        cache = project / "data" / "04_feature" / "curation_embeddings.parquet"
        cold, warm = [], []
        for _ in range(args.repeat):
            cache.unlink(missing_ok=True)
            cold.append(run(project, "curation"))
            warm.append(run(project, "curation"))
        print(
            f"curation on 400 images, cold (no embedding cache): median {statistics.median(cold):.1f} s {[round(x, 1) for x in cold]}"
        )
        print(
            f"curation on 400 images, warm (embeddings cached):  median {statistics.median(warm):.1f} s {[round(x, 1) for x in warm]}"
        )
        print(f"peak RSS of this process: {peak_rss_mb():.0f} MB")


if __name__ == "__main__":
    sys.exit(main())
