"""Every file the project saves is whole or absent: a full disk (a small tmpfs) or a
killed run leaves the previous file readable and, at most, a temporary that the next run
sweeps. The catalog's own dataset types, on local disk and on the S3 server."""

from __future__ import annotations

import os
import shutil
import subprocess
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from plants_mlops.datasets import atomic
from plants_mlops.datasets.data_optional import OptionalParquetDataset
from plants_mlops.datasets.data_parquet import ParquetDataset
from plants_mlops.datasets.data_raw_store import ImageStoreDataset
from plants_mlops.datasets.model_files import ModelFileDataset


@pytest.fixture
def small_disk(tmp_path) -> Path:
    """A 40 MB file system of its own (tmpfs), unmounted afterwards."""
    mount = tmp_path / "disk"
    mount.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=40m", "tmpfs", str(mount)], check=True)
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=False)


def _fill(disk: Path, leave: int) -> Path:
    """Fill ``disk`` until ``leave`` bytes are free; returns the filler file."""
    filler = disk / "filler.bin"
    free = shutil.disk_usage(disk).free
    with open(filler, "wb") as fh:
        fh.truncate(0)
        fh.write(b"\0" * max(0, free - leave))
    return filler


def _frame(n: int, seed: int = 0) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    return pd.DataFrame(
        {"image_key": [f"grass/{rng.bytes(32).hex()}" for _ in range(n)], "x": rng.random(n)}
    )


def _leftovers(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.rglob("*") if p.name.endswith(".tmp"))


def test_a_full_disk_leaves_every_saved_file_whole_and_no_temporary(small_disk):
    index = ParquetDataset(filepath=str(small_disk / "02_intermediate/fmt_index.parquet"))
    report = atomic.JSONDataset(filepath=str(small_disk / "08_reporting/report.json"))
    model = ModelFileDataset(filepath=str(small_disk / "06_models/model.onnx"))
    images = ImageStoreDataset(path=str(small_disk / "02_intermediate/fmt_images"))
    small = _frame(50)
    index.save(small)
    report.save({"run": 1})
    model.save(b"m" * 1000)
    images.save({"grass/" + "a" * 64: b"\xff\xd8first"})

    filler = _fill(small_disk, leave=64 * 1024)
    big = _frame(20_000, seed=1)  # ~1.5 MB of parquet: cannot fit
    full = r"No space left on device"  # kedro wraps the OSError in a DatasetError
    with pytest.raises(Exception, match=full):
        index.save(big)
    with pytest.raises(Exception, match=full):
        report.save({"run": 2, "pad": "x" * 500_000})
    with pytest.raises(Exception, match=full):
        model.save(b"n" * 500_000)
    with pytest.raises(Exception, match=full):
        images.save({"grass/" + "a" * 64: b"\xff\xd8" + b"s" * 500_000})

    # The previous files are intact and readable; nothing half-written is left behind.
    pd.testing.assert_frame_equal(index.load(), small)
    assert report.load() == {"run": 1}
    assert model.load() == b"m" * 1000
    assert images.load()["grass/" + "a" * 64].read() == b"\xff\xd8first"
    assert _leftovers(small_disk) == []

    filler.unlink()  # space freed: the same saves now simply work
    index.save(big)
    pd.testing.assert_frame_equal(index.load(), big)
    report.save({"run": 2})
    assert report.load() == {"run": 2}


def test_a_damaged_previous_fmt_index_counts_as_missing(tmp_path):
    """What a full disk used to leave (a 49,152-byte parquet file): formatting treats it
    as no previous index (formats again) instead of failing until someone deletes it."""
    path = tmp_path / "fmt_index.parquet"
    ParquetDataset(filepath=str(path)).save(_frame(2000))
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    assert OptionalParquetDataset(filepath=str(path)).load().empty


def test_temporaries_of_dead_runs_are_swept_and_live_ones_kept(tmp_path):
    dead = subprocess.Popen(["true"])
    dead.wait()
    live_name = atomic.temp_name("b.jpg")  # this process's: it may still finish it
    dead_name = live_name.replace(f"-{os.getpid()}-", f"-{dead.pid}-")
    folder = tmp_path / "01_raw" / "grass"
    folder.mkdir(parents=True)
    for name in (live_name, dead_name, ".c.jpg.0123abcd.tmp", "keep.jpg"):
        (folder / name).write_bytes(b"x")
    old = time.time() - atomic.STALE_AFTER_S - 60
    os.utime(folder / ".c.jpg.0123abcd.tmp", (old, old))  # a legacy one, a day old
    assert atomic.sweep_stale(None, "file", str(tmp_path / "01_raw"), recursive=True) == 2
    assert sorted(p.name for p in folder.iterdir()) == sorted([live_name, "keep.jpg"])


def test_saves_on_s3_publish_whole_objects_and_leave_no_temporary(s3_endpoint, s3_bucket):
    import boto3

    creds = {"client_kwargs": {"endpoint_url": s3_endpoint}}
    frame = _frame(100)
    ParquetDataset(filepath=f"s3://{s3_bucket}/03_primary/idx.parquet", credentials=creds).save(
        frame
    )
    atomic.JSONDataset(filepath=f"s3://{s3_bucket}/08_reporting/r.json", credentials=creds).save(
        {"ok": True}
    )
    keys = [
        o["Key"]
        for o in boto3.client("s3", endpoint_url=s3_endpoint).list_objects_v2(Bucket=s3_bucket)[
            "Contents"
        ]
    ]
    assert sorted(keys) == ["03_primary/idx.parquet", "08_reporting/r.json"]
    loaded = ParquetDataset(
        filepath=f"s3://{s3_bucket}/03_primary/idx.parquet", credentials=creds
    ).load()
    pd.testing.assert_frame_equal(loaded, frame)
