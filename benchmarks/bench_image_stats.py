"""CPU per image of ``imaging.image_stats`` against its float32 numpy definition.

Formatting computes the statistics once per image and the API's prediction-log writer once
per request, on the fmt image (``square_resize`` to 160 px). This prints the CPU time per
image of the shipped function and of the plain numpy version it replaced (kept here as the
reference), and the largest relative difference between their figures.

    .venv/bin/python benchmarks/bench_image_stats.py [--images 100] [--repeat 5]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
from PIL import Image, ImageFilter

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

from plants_mlops import imaging  # noqa: E402

FMT_SIZE = 160  # conf/base/parameters_formatting.yml: formatting.image_size


def numpy_reference(img: Image.Image) -> dict[str, float]:
    """The statistics as first written: float32 numpy over pixels / 255."""
    rgb = np.asarray(img.convert("RGB"), dtype=np.float32) / 255.0
    grey = np.asarray(img.convert("L"), dtype=np.float32) / 255.0
    edges = np.asarray(img.convert("L").filter(ImageFilter.FIND_EDGES), dtype=np.float32) / 255.0
    return {
        "width": float(img.width),
        "height": float(img.height),
        "brightness": float(grey.mean()),
        "contrast": float(grey.std()),
        "mean_r": float(rgb[..., 0].mean()),
        "mean_g": float(rgb[..., 1].mean()),
        "mean_b": float(rgb[..., 2].mean()),
        "sharpness": float(edges.var()),
    }


def cpu_ms_per_image(fn, images: list[Image.Image], repeat: int) -> float:
    started = time.process_time()
    for _ in range(repeat):
        for img in images:
            fn(img)
    return (time.process_time() - started) * 1000 / (repeat * len(images))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--images", type=int, default=100)
    ap.add_argument("--repeat", type=int, default=5)
    args = ap.parse_args(argv)
    files = sorted((ROOT / "samples" / "plants").rglob("*.jpg"))[: args.images]
    images = [
        imaging.square_resize(imaging.decode_image(p.read_bytes()).image, FMT_SIZE) for p in files
    ]
    worst = 0.0
    for img in images:
        ref, new = numpy_reference(img), imaging.image_stats(img)
        for key, value in ref.items():
            worst = max(worst, abs(new[key] - value) / max(abs(value), 1e-12))
    for fn in (numpy_reference, imaging.image_stats):  # warm-up
        cpu_ms_per_image(fn, images[:10], 1)
    ref_ms = cpu_ms_per_image(numpy_reference, images, args.repeat)
    new_ms = cpu_ms_per_image(imaging.image_stats, images, args.repeat)
    print(f"{len(images)} sample JPEGs at {FMT_SIZE} px, {args.repeat} passes, CPU per image:")
    print(f"  imaging.image_stats        {new_ms:6.3f} ms")
    print(f"  float32 numpy reference    {ref_ms:6.3f} ms  ({ref_ms / new_ms:.1f}x)")
    print(f"  largest relative difference of a figure: {worst:.1e}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
