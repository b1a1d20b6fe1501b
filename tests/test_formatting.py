"""Formatting: the full offline run (kedro CLI) and the split/duplicate rules."""

from __future__ import annotations

import hashlib
import io

import pandas as pd
import pytest
from data_testlib import read_json
from PIL import Image
from support.images import SAMPLES
from support.params import base_labels, stage_params, task_params

from plants_mlops import contracts, imaging
from plants_mlops.pipelines.formatting.nodes import (
    DATASET_INDEX_COLUMNS,
    build_dataset_index,
    format_images,
    split_of,
)

SPLIT = {"train": 0.7, "val": 0.15, "test": 0.15, "salt": "plants-split-v1"}


@pytest.mark.slow
def test_offline_data_run_of_the_full_manifest_builds_every_layer(data_project):
    """`kedro run --pipelines data` on a fresh project (the session's ``built_data``, copied
    here): seeds the table from the manifest, reads the shipped sample folder (the default
    mirror), formats and validates. Formatting again goes through the real CLI."""
    data = data_project.path / "data"

    raw = sorted((data / "01_raw").rglob("*.jpg"))
    assert len(raw) == 400
    for path in raw:  # original bytes: the file name is the content hash
        assert hashlib.sha256(path.read_bytes()).hexdigest() == path.stem

    fmt_index = pd.read_parquet(data / "02_intermediate" / "fmt_index.parquet")
    assert list(fmt_index.columns[:5]) == [
        "sha256",
        "label",
        "image_key",
        "source_id",
        "url_source",
    ]
    assert set(imaging.STAT_COLUMNS) <= set(fmt_index.columns)
    assert len(fmt_index) == 400 and (fmt_index[["width", "height"]] == 160).all().all()
    one = fmt_index.iloc[0]
    img = Image.open(data / "02_intermediate" / "fmt_images" / f"{one.image_key}.jpg")
    assert (img.format, img.mode, img.size) == ("JPEG", "RGB", (160, 160))

    index = pd.read_parquet(data / "03_primary" / "dataset_index.parquet")
    assert list(index.columns) == DATASET_INDEX_COLUMNS and len(index) == 400
    fingerprint = read_json(data / "03_primary" / "dataset_fingerprint.json")
    assert fingerprint["n_images"] == 400
    assert sum(fingerprint["per_split"].values()) == 400
    assert fingerprint["per_label"] == {"dandelion": 200, "grass": 200}
    report = read_json(data / "08_reporting" / "validation_report.json")
    assert report["passed"] is True, [c for c in report["checks"] if not c["passed"]]

    # Formatting again changes nothing: same index, same fingerprint, and no image work.
    fmt_files = sorted((data / "02_intermediate" / "fmt_images").rglob("*.jpg"))
    mtimes = [p.stat().st_mtime_ns for p in fmt_files]
    data_project.run_cli("formatting")
    again = read_json(data / "03_primary" / "dataset_fingerprint.json")
    assert again["fingerprint"] == fingerprint["fingerprint"]
    rerun = read_json(data / "08_reporting" / "formatting_report.json")
    assert (rerun["formatted_now"], rerun["reused"], rerun["formatted"]) == (0, 400, 400)
    assert [p.stat().st_mtime_ns for p in fmt_files] == mtimes  # no fmt file rewritten
    pd.testing.assert_frame_equal(
        pd.read_parquet(data / "02_intermediate" / "fmt_index.parquet"), fmt_index
    )


def _jpeg(color, size=(64, 48), mode="RGB") -> bytes:
    buf = io.BytesIO()
    Image.new(mode, size, color).save(buf, format="PNG" if mode == "RGBA" else "JPEG")
    return buf.getvalue()


def _table(entries):
    return pd.DataFrame(
        [
            {
                "id": i + 1,
                "url_source": f"https://x/{i}.jpg",
                "label": lab,
                "sha256": sha,
                "status": st,
            }
            for i, (lab, sha, st) in enumerate(entries)
        ]
    )


def test_fmt_images_are_square_rgb_and_only_ok_rows_with_raw_bytes_count():
    blobs = {"a": _jpeg((200, 180, 20)), "b": _jpeg((0, 0, 0, 0), mode="RGBA"), "c": b"junk"}
    sha = {k: hashlib.sha256(v).hexdigest() for k, v in blobs.items()}
    raw = {
        f"dandelion/{sha['a']}.jpg": lambda: blobs["a"],
        f"grass/{sha['b']}.png": lambda: blobs["b"],
        f"grass/{sha['c']}.jpg": lambda: blobs["c"],
        f"grass/{'f' * 64}.jpg": lambda: blobs["a"],  # no table row: ignored
    }
    table = _table(
        [
            ("dandelion", sha["a"], "ok"),
            ("dandelion", sha["a"], "ok"),  # a second URL with the same bytes
            ("grass", sha["b"], "ok"),
            ("grass", sha["c"], "ok"),  # stored, but not an image
            ("grass", "e" * 64, "ok"),  # ok, but its raw file is gone
            ("grass", None, "failed"),
        ]
    )
    fmt, index, report = format_images(
        raw, table, stage_params("formatting", image_size=32, workers=2)
    )
    assert sorted(fmt) == sorted([f"dandelion/{sha['a']}", f"grass/{sha['b']}"])
    decoded = {k: Image.open(io.BytesIO(b)) for k, b in fmt.items()}
    assert all(im.mode == "RGB" and im.size == (32, 32) for im in decoded.values())
    # each fmt JPEG's sha256 is in the index: training checks the files against it
    assert dict(zip(index["image_key"], index["fmt_sha256"], strict=True)) == {
        k: hashlib.sha256(b).hexdigest() for k, b in fmt.items()
    }
    # transparent PNG composited on white, as a browser shows it
    assert index.set_index("label").loc["grass", "brightness"] == pytest.approx(1.0)
    assert list(index["source_id"]) == [1, 3]
    assert report["rows_sharing_content"] == 1
    assert [m["source_id"] for m in report["missing_raw"]] == [5]
    assert report["undecodable"][0]["source_id"] == 4


def _fmt_index(shas_labels):
    rows = []
    for sha, label in shas_labels:
        rows.append(
            {
                "sha256": sha,
                "label": label,
                "image_key": f"{label}/{sha}",
                "source_id": 1,
                "url_source": "u",
            }
            | {c: 0.5 for c in imaging.STAT_COLUMNS}
            | {"orig_width": 100.0, "orig_height": 100.0}
        )
    return pd.DataFrame(rows)


def test_adding_images_never_moves_existing_ones_between_splits():
    shas = [hashlib.sha256(str(i).encode()).hexdigest() for i in range(600)]
    labels = [base_labels()[i % 2] for i in range(600)]
    params = stage_params("formatting", image_size=160, split=SPLIT)
    small, fp_small, _ = build_dataset_index(
        _fmt_index(list(zip(shas[:200], labels, strict=False))), {}, params, task_params()
    )
    big, fp_big, _ = build_dataset_index(
        _fmt_index(list(zip(shas, labels, strict=True))), {}, params, task_params()
    )
    moved = small.merge(big, on="sha256", suffixes=("_small", "_big"))
    assert len(moved) == 200 and (moved["split_small"] == moved["split_big"]).all()
    assert fp_small["fingerprint"] != fp_big["fingerprint"]
    shares = big["split"].value_counts(normalize=True)
    for split in contracts.SPLITS:
        assert shares[split] == pytest.approx(SPLIT[split], abs=0.05)
    assert split_of(shas[0], SPLIT) == split_of(shas[0], dict(SPLIT))


def test_duplicate_bytes_are_kept_once_and_contradicting_labels_dropped():
    a, b = "a" * 64, "b" * 64
    fmt = _fmt_index([(a, "dandelion"), (b, "dandelion"), (b, "grass")])
    params = stage_params("formatting", image_size=160, split=SPLIT)
    index, fingerprint, report = build_dataset_index(fmt, {}, params, task_params())
    assert list(index["sha256"]) == [a]
    assert {d["image_key"] for d in report["duplicates_dropped"]} == {
        f"dandelion/{b}",
        f"grass/{b}",
    }
    assert fingerprint["n_images"] == 1


def test_split_proportions_must_sum_to_one():
    with pytest.raises(ValueError, match="must sum to 1"):
        build_dataset_index(
            _fmt_index([("a" * 64, "grass")]),
            {},
            stage_params("formatting", split={"train": 0.8, "val": 0.15, "test": 0.15}),
            task_params(),
        )


def test_formatting_is_incremental_and_gives_the_index_of_a_full_rebuild():
    """Only raw images without a formatted twin (file present and row in the previous fmt
    index, at the current size) are decoded; the index equals a from-scratch run's."""
    from plants_mlops.pipelines.formatting.nodes import format_new_images

    blobs = {i: _jpeg((10 * i, 200 - 10 * i, 30)) for i in range(6)}
    sha = {i: hashlib.sha256(b).hexdigest() for i, b in blobs.items()}
    labels = {i: ("dandelion", "grass")[i % 2] for i in blobs}
    raw = {f"{labels[i]}/{sha[i]}.jpg": (lambda b=b: b) for i, b in blobs.items()}
    table = _table([(labels[i], sha[i], "ok") for i in blobs])
    params = stage_params("formatting", image_size=32, workers=2)
    full_images, full_index, _ = format_images(raw, table, params)

    def run(inventory, previous, p=params):
        chunks = list(format_new_images(raw, table, inventory, previous, p))
        images = {k: v for c in chunks for k, v in c[0].items()}
        return images, chunks[-1][1], chunks[-1][2]

    inventory = {f"{k}.jpg": None for k in full_images}
    images, index, report = run(inventory, full_index)
    assert images == {} and (report["formatted_now"], report["reused"]) == (0, 6)
    pd.testing.assert_frame_equal(index, full_index)

    # one fmt file lost, one image without an index row (a run killed before its index
    # was saved): those two only are formatted again
    lost, unindexed = f"{labels[1]}/{sha[1]}", f"{labels[4]}/{sha[4]}"
    partial_inventory = {k: v for k, v in inventory.items() if k != f"{lost}.jpg"}
    previous = full_index[full_index["image_key"] != unindexed]
    images, index, report = run(partial_inventory, previous)
    assert sorted(images) == sorted([lost, unindexed])
    assert (report["formatted_now"], report["reused"]) == (2, 4)
    pd.testing.assert_frame_equal(index, full_index)

    # another image size: nothing formatted at the old size is reused
    images, index, report = run(
        inventory, full_index, stage_params("formatting", image_size=24, workers=2)
    )
    assert report["formatted_now"] == 6 and (index["width"] == 24).all()

    # a row no longer ok drops out of the index without any image work
    fewer = table.assign(status=["ok"] * 5 + ["failed"])
    chunks = list(format_new_images(raw, fewer, inventory, full_index, params))
    assert chunks[-1][2]["formatted_now"] == 0
    assert len(chunks[-1][1]) == 5


def test_chunks_already_saved_are_released_under_kedros_streaming(monkeypatch):
    """Kedro streams a generator node's outputs through itertools.tee, which keeps up to 57
    chunks alive: a chunk the node yielded must be emptied once Kedro asked for the next
    one (by then it is saved), or a 10,000-image run holds every fmt image at once."""
    import itertools

    from kedro.pipeline import node
    from more_itertools import interleave

    from plants_mlops.pipelines.formatting import nodes

    monkeypatch.setattr(nodes, "FORMAT_CHUNK", 2)
    blobs = {i: _jpeg((20 * i, 100, 200 - 20 * i)) for i in range(7)}
    sha = {i: hashlib.sha256(b).hexdigest() for i, b in blobs.items()}
    raw = {f"grass/{sha[i]}.jpg": (lambda b=b: b) for i, b in blobs.items()}
    table = _table([("grass", sha[i], "ok") for i in blobs])
    kedro_node = node(
        nodes.format_new_images,
        ["raw", "table", "inventory", "previous", "params"],
        ["fmt_images", "fmt_index", "fmt_report"],
    )
    streams = kedro_node.run(
        {
            "raw": raw,
            "table": table,
            "inventory": {},
            "previous": pd.DataFrame(),
            "params": stage_params("formatting", image_size=16, workers=1),
        }
    )
    saved: dict[str, list] = {"fmt_images": [], "fmt_index": []}
    seen_images: set[str] = set()
    for name, data in zip(itertools.cycle(streams), interleave(*streams.values()), strict=False):
        if name == "fmt_images":  # what Kedro saves, as it saves it
            assert all(len(earlier) == 0 for earlier in saved["fmt_images"])
            seen_images |= set(data)
            saved["fmt_images"].append(data)
        elif name == "fmt_index":
            assert all(len(earlier) == 0 for earlier in saved["fmt_index"])
            saved["fmt_index"].append(data)
    assert len(saved["fmt_images"]) == 4 and len(seen_images) == 7  # every image was saved
    assert len(saved["fmt_index"][-1]) == 7  # the last (whole) index is kept


def test_image_stats_match_the_pixel_definitions():
    """The histogram/int16 statistics equal their definitions over the pixels (float64
    numpy: means and population std/var in [0, 1], the edge response being Pillow's
    FIND_EDGES filter), on photos and on sizes where the 3x3 border handling matters."""
    import numpy as np
    from PIL import ImageFilter

    rng = np.random.default_rng(7)
    photos = [
        imaging.square_resize(imaging.decode_image(p.read_bytes()).image, 160)
        for p in sorted(SAMPLES.rglob("*.jpg"))[:6]
    ]
    noise = [
        Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8))
        for h, w in [(1, 1), (2, 5), (3, 3), (161, 97)]
    ]
    for img in photos + noise:
        rgb = np.asarray(img, dtype=np.float64) / 255.0
        grey = np.asarray(img.convert("L"), dtype=np.float64) / 255.0
        edges = np.asarray(img.convert("L").filter(ImageFilter.FIND_EDGES)) / 255.0
        expected = {
            "width": img.width,
            "height": img.height,
            "brightness": grey.mean(),
            "contrast": grey.std(),
            "mean_r": rgb[..., 0].mean(),
            "mean_g": rgb[..., 1].mean(),
            "mean_b": rgb[..., 2].mean(),
            "sharpness": edges.var(),
        }
        assert imaging.image_stats(img) == pytest.approx(expected, rel=1e-9, abs=1e-12)
        assert np.array_equal(
            imaging._edge_response(img.convert("L")),
            np.asarray(img.convert("L").filter(ImageFilter.FIND_EDGES)),
        )


def test_the_model_input_is_its_definition_bit_for_bit():
    """``to_model_input`` (what training, evaluation and the API feed the network) equals
    the written definition, float32 [0, 1] HWC pixels minus the mean over the std, as CHW,
    value for value: the planes are computed contiguously for speed, never differently."""
    import numpy as np

    mean, std = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
    rng = np.random.default_rng(3)
    photo = imaging.decode_image(sorted(SAMPLES.rglob("*.jpg"))[0].read_bytes()).image
    noise = Image.fromarray(rng.integers(0, 256, (97, 161, 3), dtype=np.uint8))
    for img, resize, size in [(photo, 160, 160), (photo, 256, 224), (noise, 64, 64)]:
        view = np.asarray(imaging.model_view(img, resize_size=resize, image_size=size))
        hwc = (view.astype(np.float32) * np.float32(1 / 255) - np.float32(mean)) / np.float32(std)
        got = imaging.to_model_input(img, resize_size=resize, image_size=size, mean=mean, std=std)
        assert got.dtype == np.float32 and got.flags["C_CONTIGUOUS"]
        assert got.shape == (3, size, size)
        assert np.array_equal(got, hwc.transpose(2, 0, 1))


def test_a_phone_size_jpeg_decodes_at_reduced_scale_to_the_pixels_of_a_full_decode(
    monkeypatch,
):
    """A 12 Mpx photo for a 160-px square: the JPEG decoder makes at most a quarter of the
    full size per side (2 x 160 px or more on the shorter side, not 4032 x 3024), and the
    square differs from a full decode's by under half a grey level on average; an image
    under twice the square's side is decoded at full size, pixel for pixel as before. The
    API (``decoded_within``) and formatting both take this path."""
    import numpy as np
    from support import images

    phone = images.phone_jpeg(0)
    small = sorted(SAMPLES.rglob("*.jpg"))[1].read_bytes()
    with monkeypatch.context() as spy:
        decoded_sizes = images.record_decodes(spy)
        got = imaging.decode_image(phone, fit=160)
    assert got.image.size == (160, 160) and got.original_size == (4032, 3024)
    width, height = decoded_sizes[-1]
    assert min(width, height) >= 320 and width <= 4032 // 4, decoded_sizes

    full = imaging.square_resize(imaging.decode_image(phone).image, 160)
    diff = np.abs(np.asarray(got.image, float) - np.asarray(full, float))
    assert diff.mean() < 0.5 and np.percentile(diff, 99) <= 3

    with imaging.decoded_within(small, None, fit=160) as d:
        same = np.asarray(d.image)
    expected = imaging.square_resize(imaging.decode_image(small).image, 160)
    assert np.array_equal(same, np.asarray(expected))
