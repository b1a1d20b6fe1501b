"""The raw layer's byte store (local disk and the S3 server): saving a chunk costs what the
chunk holds, not what the store holds."""

from __future__ import annotations

import hashlib

import pytest

from plants_mlops.datasets.data_raw_store import BlobStoreDataset


def _blob(i: int) -> tuple[str, bytes]:
    data = f"image {i}".encode() * 10
    return f"grass/{hashlib.sha256(data).hexdigest()}.jpg", data


@pytest.fixture(params=["local", "s3"])
def store(request, tmp_path) -> BlobStoreDataset:
    if request.param == "local":
        return BlobStoreDataset(path=str(tmp_path / "raw"))
    endpoint = request.getfixturevalue("s3_endpoint")
    bucket = request.getfixturevalue("s3_bucket")
    return BlobStoreDataset(
        path=f"s3://{bucket}/01_raw",
        credentials={"key": "test", "secret": "test", "client_kwargs": {"endpoint_url": endpoint}},
    )


def test_saving_a_chunk_never_lists_the_whole_store(store):
    """Ingestion saves every 100 images: listing the store per chunk is O(N^2) over a
    100,000-image catalogue (and a LIST of the whole prefix per chunk on S3)."""
    store.save(dict(_blob(i) for i in range(300)))
    listed = []
    real_find = store._fs.find

    def spy(*args, **kwargs):  # the real listing, counted
        listed.append(args)
        return real_find(*args, **kwargs)

    store._fs.find = spy
    damaged_key, good = _blob(7)
    new = dict(_blob(i) for i in range(300, 305))
    store.save({**new, _blob(3)[0]: _blob(3)[1], damaged_key: good})
    assert listed == []
    store._fs.find = real_find
    loaded = store.load()
    assert len(loaded) == 305
    for key, data in new.items():
        assert loaded[key]() == data


def test_same_size_keys_are_skipped_and_damaged_ones_written_again(store):
    key, data = _blob(1)
    store.save({key: data})
    path = f"{store._root}/{key}"
    store._fs.pipe_file(path, b"x")  # a damaged copy (another size)
    store.save({key: data})
    assert store.load()[key]() == data
    store._fs.pipe_file(path, b"y" * len(data))  # same size: taken as the same content
    store.save({key: data})
    assert store.load()[key]() == b"y" * len(data)
