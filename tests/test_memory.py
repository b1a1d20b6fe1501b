"""glibc's mmap threshold held low for the nodes tagged RETURN_MEMORY (plants_mlops/memory.py)."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from plants_mlops import memory
from plants_mlops.hooks import ProjectHooks

# Frees half of 64 buffers of 1 MiB, after a freed 8 MiB block has raised glibc's dynamic
# threshold (so, left alone, the 1 MiB buffers come from the heap, which keeps the holes).
_PROBE = """
import json, sys
import numpy as np
from plants_mlops import memory

def rss_mb():
    for line in open("/proc/self/status"):
        if line.startswith("VmRSS"):
            return int(line.split()[1]) / 1024

held = sys.argv[1] == "low" and memory.set_mmap_threshold(memory.SMALL_MMAP_THRESHOLD)
warm = np.ones(8 * 1024 * 1024 // 8)
del warm
base = rss_mb()
blocks = [np.ones(1024 * 1024 // 8) for _ in range(64)]
del blocks[::2]
print(json.dumps({"held": held, "kept_mb": rss_mb() - base}))
"""


def _probe(mode: str) -> dict:
    out = subprocess.run(
        [sys.executable, "-c", _PROBE, mode], capture_output=True, text=True, check=True
    )
    return json.loads(out.stdout)


def test_a_low_threshold_gives_freed_buffers_back_to_the_os():
    dynamic, low = _probe("dynamic"), _probe("low")
    assert low["held"] is True  # this machine's C library is glibc
    # 32 of the 64 MiB are still referenced in both; left alone the other 32 stay too
    assert dynamic["kept_mb"] > 56, dynamic
    assert low["kept_mb"] < 40, low


def test_the_hook_holds_the_threshold_low_only_around_tagged_nodes(monkeypatch):
    from kedro.framework.hooks.manager import _create_hook_manager
    from kedro.io import DataCatalog
    from kedro.pipeline import Pipeline, node
    from kedro.runner import SequentialRunner

    calls: list[tuple[str, int]] = []
    ran: list[str] = []

    def record(nbytes: int) -> bool:
        calls.append((ran[-1] if ran else "-", nbytes))
        return True

    def step(name):
        def run(x):
            ran.append(name)
            return x + 1

        return run

    monkeypatch.setattr(memory, "set_mmap_threshold", record)
    hooks = _create_hook_manager()
    hooks.register(ProjectHooks())
    pipeline = Pipeline(
        [
            node(step("plain"), "a", "b", name="plain"),
            node(step("tagged"), "b", "c", name="tagged", tags=[memory.RETURN_MEMORY]),
        ]
    )
    catalog = DataCatalog()
    catalog["a"] = 1
    SequentialRunner().run(pipeline, catalog, hooks)
    # set low when the tagged node loads its input (after "plain" ran), back up after it
    assert calls == [
        ("plain", memory.SMALL_MMAP_THRESHOLD),
        ("tagged", memory.LARGE_MMAP_THRESHOLD),
    ]


def test_the_decode_budget_is_held_until_the_decoded_pixels_are_released():
    """The budget covers a decode from its first byte until the full-size image is gone,
    not only the decode call (the API used to keep the image after releasing it)."""
    import io

    from PIL import Image

    from plants_mlops import imaging

    buf = io.BytesIO()
    Image.new("RGBA", (2000, 1500), (1, 2, 3, 4)).save(buf, "PNG")
    budget = imaging.DecodeBudget(10_000_000)
    with imaging.decoded_within(buf.getvalue(), budget) as decoded:
        assert budget.free == 10_000_000 - 2000 * 1500  # held while the pixels live
        small = imaging.square_resize(decoded.image, 32)
        image = decoded.image
    assert budget.free == 10_000_000
    assert small.size == (32, 32)
    with pytest.raises(ValueError, match="closed image"):
        image.getpixel((0, 0))  # released at the end of the block


_DECODE_PROBE = """
import json, sys
from plants_mlops import imaging

def status_mb(field):
    for line in open("/proc/self/status"):
        if line.startswith(field):
            return int(line.split()[1]) / 1024

data = open(sys.argv[1], "rb").read()
with open("/proc/self/clear_refs", "w") as f:
    f.write("5")  # the peak (VmHWM) starts again from the RSS now
base = status_mb("VmRSS:")
with imaging.decoded_within(data, None, fit=160) as decoded:
    size = decoded.image.size
print(json.dumps({"size": size, "added_mb": status_mb("VmHWM:") - base}))
"""


def test_the_api_decode_of_an_alpha_png_holds_one_full_size_copy_not_two(tmp_path):
    """A 4000x4000 RGBA PNG decodes into 64 MB; compositing it into a full-size RGB image
    took 64 MB more at the same time (128 MB added). The API's path (``fit``) adds a few
    MB to the decode."""
    from PIL import Image

    png = tmp_path / "alpha.png"
    Image.new("RGBA", (4000, 4000), (10, 200, 30, 128)).save(png, "PNG")
    out = subprocess.run(
        [sys.executable, "-c", _DECODE_PROBE, str(png)], capture_output=True, text=True, check=True
    )
    row = json.loads(out.stdout)
    assert row["size"] == [160, 160]
    assert row["added_mb"] < 64 * 1.25, row
