"""Ingestion killed with SIGKILL at arbitrary moments, then run again: every row ends `ok`,
no file in the raw layer is empty or holds other bytes than its name says, and a damaged
file left by an older crash is repaired. The real `kedro run` CLI in its own process."""

from __future__ import annotations

import hashlib
import os
import random
import signal
import subprocess
import time

from data_testlib import table
from support import servers

from plants_mlops.datasets import atomic


def _start(
    project,
    pipeline: str = "ingestion",
    kedro_env: str | None = None,
    extra_env: dict[str, str] | None = None,
) -> subprocess.Popen:
    """``kedro run --pipelines PIPELINE [--env KEDRO_ENV]``, to be killed. The runs these
    tests kill start untraced: a process ended by SIGKILL never writes its coverage data,
    so tracing it would only slow it down (the run that completes is traced)."""
    argv = [str(servers.VENV_BIN / "kedro"), "run", "--pipelines", pipeline]
    return subprocess.Popen(
        argv + (["--env", kedro_env] if kedro_env else []),
        cwd=project.path,
        env={**servers.untraced(), **(extra_env or {})},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )


def _raw_files(project) -> list:
    return sorted(p for p in (project.path / "data" / "01_raw").rglob("*") if p.is_file())


def test_killed_runs_lose_nothing_and_leave_no_partial_file(kedro_project):
    rng = random.Random(7)
    for _ in range(3):
        proc = _start(kedro_project)
        time.sleep(rng.uniform(3.0, 9.0))  # startup, fetching or saving: wherever it lands
        if proc.poll() is None:
            proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=60)
    # What a run killed in the middle of a write leaves (whether or not a kill above hit
    # one): a hidden temporary of a process that is gone.
    dead = subprocess.Popen(["true"])
    dead.wait()
    orphan = (
        kedro_project.path
        / "data"
        / "01_raw"
        / "grass"
        / (atomic.temp_name("x.jpg").replace(f"-{os.getpid()}-", f"-{dead.pid}-"))
    )
    orphan.parent.mkdir(parents=True, exist_ok=True)
    orphan.write_bytes(b"\xff\xd8half")
    kedro_project.run("ingestion")

    rows = table(os.environ["PLANTS_DB_URL"])
    assert len(rows) == 400 and set(rows["status"]) == {"ok"}
    assert [p.name for p in _raw_files(kedro_project) if p.name.endswith(".tmp")] == []
    files = [p for p in _raw_files(kedro_project) if not p.name.startswith(".")]
    assert len(files) == 400
    for path in files:
        data = path.read_bytes()
        assert data and hashlib.sha256(data).hexdigest() == path.stem, path


def test_an_empty_file_from_an_older_crash_is_fetched_again(kedro_project):
    kedro_project.run("ingestion")
    victim = _raw_files(kedro_project)[0]
    good = victim.read_bytes()
    victim.write_bytes(b"")  # what a crash used to leave
    kedro_project.run("ingestion")
    assert victim.read_bytes() == good
    assert set(table(os.environ["PLANTS_DB_URL"])["status"]) == {"ok"}


def test_a_killed_run_keeps_the_batches_it_already_saved(kedro_project, http_mirror, tmp_path):
    """Results are saved as they arrive: a run killed while one slow URL is still being
    fetched keeps every image fetched before, and the rerun does not fetch them again."""
    from data_testlib import manifest_rows, mirror_counts, mirror_params, seed, write_params

    good = manifest_rows()  # 400 rows
    slow = {"url_source": f"{http_mirror}faults/trickle.jpg", "label": "dandelion"}
    seed(os.environ["PLANTS_DB_URL"], [*good, slow], tmp_path)
    write_params(kedro_project.path, "local", mirror_params(http_mirror, total_timeout_s=60))
    before = mirror_counts(http_mirror)

    proc = _start(kedro_project)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        rows = table(os.environ["PLANTS_DB_URL"])
        if (rows["status"] == "ok").sum() >= 400:
            break  # every good row saved; the trickle row is still downloading
        assert proc.poll() is None, "the run ended before it could be killed"
        time.sleep(0.2)
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=60)
    rows = table(os.environ["PLANTS_DB_URL"]).set_index("url_source")
    assert rows.loc[slow["url_source"], "status"] == "pending"  # killed mid-download
    files = [p for p in _raw_files(kedro_project) if not p.name.startswith(".")]
    assert len(files) == 400

    write_params(kedro_project.path, "local", mirror_params(http_mirror, total_timeout_s=1))
    kedro_project.run("ingestion")
    after = mirror_counts(http_mirror)
    fetched_twice = [
        path
        for path, n in after.items()
        if not path.startswith("/faults/") and n - before.get(path, 0) > 1
    ]
    assert fetched_twice == []
    rows = table(os.environ["PLANTS_DB_URL"]).set_index("url_source")
    assert rows.loc[slow["url_source"], "error"].startswith("timeout:")


def test_formatting_killed_at_random_never_trains_on_partial_data(kedro_project, tmp_path):
    """Formatting is killed with SIGKILL at arbitrary moments; training then either refuses
    in one clear line (the index or the fmt layer differs from what validation passed) or,
    when the kill came after formatting finished, trains on every indexed image."""
    import json

    import pandas as pd
    from data_testlib import SUBSET_VALIDATION, manifest_rows, seed, write_params

    seed(os.environ["PLANTS_DB_URL"], manifest_rows(per_label=20), tmp_path)
    write_params(kedro_project.path, "local", SUBSET_VALIDATION)
    kedro_project.run("data")
    fmt = kedro_project.path / "data" / "02_intermediate" / "fmt_images"
    rng = random.Random(11)
    tiny = {
        "training.epochs": 1,
        "training.architecture": "small_cnn",
        "training.weights": "null",
        "training.image_size": 64,
        "training.mlflow.enabled": "false",
    }
    outcomes = []
    for _ in range(2):
        proc = _start(kedro_project, "formatting")
        time.sleep(rng.uniform(2.0, 7.0))
        if proc.poll() is None:
            proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=60)
        done = kedro_project.run("training", params=tiny, check=False)
        index = pd.read_parquet(kedro_project.path / "data/03_primary/dataset_index.parquet")
        on_disk = {p.relative_to(fmt).with_suffix("").as_posix() for p in fmt.rglob("*.jpg")}
        complete = set(index["image_key"]) <= on_disk
        if done.returncode != 0:
            assert "refusing to train" in done.stderr, done.stderr[-2000:]
            assert "Traceback" not in done.stderr.split("refusing to train")[-1][:300]
            outcomes.append("refused")
        else:
            assert complete  # it trained: every indexed image was there
            report = json.loads(
                (kedro_project.path / "data/08_reporting/training_report.json").read_text()
            )
            assert report["split_sizes_used"]["train"] == int((index["split"] == "train").sum())
            outcomes.append("trained")
    assert outcomes  # each kill ended one way or the other, never in a partial training


def test_killed_runs_on_s3_lose_nothing_leave_no_partial_object_and_refetch_little(
    kedro_project, s3_endpoint, s3_bucket, http_mirror, tmp_path
):
    """The kill test on the S3 server (`--env minio`): after SIGKILLs at arbitrary moments
    and a rerun, every row is ok, every object holds the bytes its name says, and only
    what was in flight or not saved yet when a run died is fetched again."""
    import boto3
    from data_testlib import manifest_rows, mirror_counts, mirror_params, seed, write_params

    from plants_mlops.pipelines.ingestion.nodes import IN_FLIGHT_PER_WORKER, SAVE_EVERY_IMAGES

    rows = manifest_rows()
    seed(os.environ["PLANTS_DB_URL"], rows, tmp_path)
    params = mirror_params(http_mirror)
    write_params(kedro_project.path, "minio", params)
    env = {"PLANTS_S3_ENDPOINT_URL": s3_endpoint, "PLANTS_S3_BUCKET": s3_bucket}
    before = mirror_counts(http_mirror)
    rng = random.Random(5)
    kills = 0
    for _ in range(3):
        proc = _start(kedro_project, kedro_env="minio", extra_env=env)
        time.sleep(rng.uniform(5.0, 10.0))
        if proc.poll() is None:
            proc.send_signal(signal.SIGKILL)
            kills += 1
        proc.wait(timeout=60)
    kedro_project.run("ingestion", env="minio", extra_env=env)

    stored = table(os.environ["PLANTS_DB_URL"])
    assert len(stored) == 400 and set(stored["status"]) == {"ok"}
    s3 = boto3.client("s3", endpoint_url=s3_endpoint)
    keys = [
        o["Key"]
        for page in s3.get_paginator("list_objects_v2").paginate(Bucket=s3_bucket, Prefix="01_raw/")
        for o in page.get("Contents", [])
    ]
    assert len(keys) == 400
    for key in keys:  # no partial object: each is whole, its bytes hash to its name
        body = s3.get_object(Bucket=s3_bucket, Key=key)["Body"].read()
        assert body and hashlib.sha256(body).hexdigest() == key.rsplit("/", 1)[1].split(".")[0]
    after = mirror_counts(http_mirror)
    served = {p: n - before.get(p, 0) for p, n in after.items() if not p.startswith("/faults/")}
    refetched = sum(n - 1 for n in served.values() if n > 1)
    window = int(params["ingestion"].get("concurrency", 8)) * IN_FLIGHT_PER_WORKER
    assert refetched <= kills * (SAVE_EVERY_IMAGES + window), (refetched, kills)
    assert max(served.values()) <= 1 + kills


def test_a_second_ingestion_on_the_same_data_root_exits_saying_since_when(
    kedro_project, http_mirror, tmp_path
):
    """Two ingestion runs at once used to download everything twice: the second now
    stops in one line before its first node, and the first finishes alone."""
    import json

    from data_testlib import manifest_rows, mirror_params, seed, write_params

    slow = {"url_source": f"{http_mirror}faults/trickle.jpg", "label": "dandelion"}
    seed(os.environ["PLANTS_DB_URL"], [*manifest_rows(per_label=5), slow], tmp_path)
    write_params(kedro_project.path, "local", mirror_params(http_mirror, total_timeout_s=60))
    lock = kedro_project.path / "data" / ".locks" / "ingestion.lock"
    first = _start(kedro_project)
    try:
        deadline = time.monotonic() + 90
        while not (lock.exists() and lock.read_bytes()):
            assert first.poll() is None and time.monotonic() < deadline, "first run never locked"
            time.sleep(0.2)
        owner = json.loads(lock.read_text())
        second = kedro_project.run_cli("ingestion", check=False)
        assert second.returncode == 1
        assert "Traceback" not in second.stderr, second.stderr[-3000:]
        last = second.stderr.strip().splitlines()[-1]
        assert last.startswith("error: ingestion is already running on ")
        assert f"since {owner['since']} (pid {first.pid} " in last
    finally:
        first.send_signal(signal.SIGKILL)
        first.wait(timeout=60)
    # The kernel dropped the killed run's lock: the next run proceeds.
    write_params(kedro_project.path, "local", mirror_params(http_mirror, total_timeout_s=1))
    assert kedro_project.run_cli("ingestion", check=False).returncode == 0
