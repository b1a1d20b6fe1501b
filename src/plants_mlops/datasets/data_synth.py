"""A deterministic synthetic catalogue for scale tests: N distinct small JPEGs over K
labels, a share of broken rows and a manifest CSV (``plants_mlops.commands.mirror`` serves
them over loopback HTTP).

Images are cheap variations of a few dozen pre-rendered base pictures per label (crop,
size 64-200 px, brightness) with the image's number written into its top-left pixels, so
every file differs by sha256 and the same ``(n, seed)`` always gives the same bytes.

Broken rows (``broken_share`` of N, spread evenly over the kinds):
- ``missing``: the URL answers 404;
- ``truncated``: the first half of a JPEG;
- ``not_an_image``: an HTML page served with status 200;
- ``slow``: a valid JPEG served after ``slow_s`` seconds (slow, not failing).
Broken rows carry no expected sha256 in the manifest; good rows do.
"""

from __future__ import annotations

import csv
import hashlib
import io
import random
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

BROKEN_KINDS = ("missing", "truncated", "not_an_image", "slow")
BASES_PER_LABEL = 32
BASE_SIZE = 256
MANIFEST = "manifest.csv"
DEFAULT_PREFIX = "https://synth.plants.invalid/"


@dataclass
class SynthReport:
    out: str
    manifest: str
    n: int
    seed: int
    per_label: dict[str, int] = field(default_factory=dict)
    broken: dict[str, int] = field(default_factory=dict)
    bytes_written: int = 0
    seconds: float = 0.0

    def manifest_text(self) -> str:
        return Path(self.manifest).read_text()


def _disc_colour(k: int, n_labels: int) -> tuple[int, int, int] | None:
    """The flower colour of class ``k``: with two labels yellow discs for the first and
    none for the second (dandelions and grass); with K > 2 a hue of its own per class."""
    if n_labels == 2:
        return (235, 215, 20) if k == 0 else None
    import colorsys

    r, g, b = colorsys.hsv_to_rgb(k / n_labels, 0.9, 1.0)
    return int(r * 255), int(g * 255), int(b * 255)


def _base_images(k: int, n_labels: int, rng: np.random.Generator) -> list[Image.Image]:
    """A few pictures per class: green grass strokes, with discs in the class's colour
    (``_disc_colour``), so a model can tell the classes apart."""
    colour = _disc_colour(k, n_labels)
    out = []
    for _ in range(BASES_PER_LABEL):
        green = rng.integers(60, 160)
        arr = np.zeros((BASE_SIZE, BASE_SIZE, 3), dtype=np.uint8)
        arr[..., 1] = green
        arr[..., 0] = rng.integers(10, 60)
        arr[..., 2] = rng.integers(10, 50)
        noise = rng.integers(-40, 40, size=(BASE_SIZE, BASE_SIZE, 1))
        arr = np.clip(arr.astype(np.int16) + noise, 0, 255).astype(np.uint8)
        img = Image.fromarray(arr)
        draw = ImageDraw.Draw(img)
        for _ in range(60):
            x, y = rng.integers(0, BASE_SIZE, size=2)
            dx, dy = rng.integers(-12, 12), rng.integers(-60, -10)
            shade = (int(rng.integers(20, 80)), int(rng.integers(120, 220)), 30)
            draw.line([(int(x), int(y)), (int(x + dx), int(y + dy))], fill=shade, width=2)
        if colour is not None:  # flower heads
            for _ in range(int(rng.integers(2, 7))):
                x, y = rng.integers(20, BASE_SIZE - 20, size=2)
                r = int(rng.integers(8, 24))
                if n_labels == 2:  # the two-class catalogue's bytes as they always were
                    fill = (int(rng.integers(220, 256)), int(rng.integers(190, 240)), 20)
                else:
                    fill = tuple(int(np.clip(c + rng.integers(-20, 20), 0, 255)) for c in colour)
                draw.ellipse([int(x) - r, int(y) - r, int(x) + r, int(y) + r], fill=fill)
        out.append(img)
    return out


def render(i: int, label: str, bases: list[Image.Image], seed: int) -> bytes:
    """JPEG bytes of image ``i`` (deterministic in ``(i, label, seed)``, distinct in ``i``)."""
    rng = random.Random(f"{seed}:{label}:{i}")
    base = bases[rng.randrange(len(bases))]
    side = rng.randint(96, BASE_SIZE)
    x, y = rng.randint(0, BASE_SIZE - side), rng.randint(0, BASE_SIZE - side)
    size = rng.randint(64, 200)
    img = base.crop((x, y, x + side, y + side)).resize((size, size), Image.Resampling.BILINEAR)
    if rng.random() < 0.5:
        img = img.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
    arr = np.asarray(img, dtype=np.float32) * rng.uniform(0.8, 1.2)
    arr = np.clip(arr, 0, 255).astype(np.uint8)
    # the number in the top-left 8x8 block, one bit per 8x1 row of pixels (survives JPEG)
    for bit in range(8):
        arr[bit, :8] = 255 if (i >> bit) & 1 else 0
    arr[:8, 8:16] = ((i >> 8) & 0xFF, (i >> 16) & 0xFF, (i >> 24) & 0xFF)
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="JPEG", quality=85)
    return buf.getvalue()


def broken_kind(i: int, n: int, broken_share: float) -> str | None:
    """The broken kind of row ``i`` (evenly spaced through the catalogue), or None."""
    n_broken = round(n * broken_share)
    if n_broken <= 0:
        return None
    step = n / n_broken
    j = int(i / step)
    if int(j * step) != i:
        return None
    return BROKEN_KINDS[j % len(BROKEN_KINDS)]


def synth(
    n: int,
    out: str | Path,
    *,
    labels: Sequence[str],
    seed: int = 0,
    broken_share: float = 0.01,
    prefix: str = DEFAULT_PREFIX,
) -> SynthReport:
    """Write ``n`` images (row i of class i mod K) under ``out/{label}/``, the broken rows'
    files, and ``out/manifest.csv`` (``url_source,label,sha256``; URLs under ``prefix``,
    to be mapped onto the mirror by an ingestion ``mirrors`` entry)."""
    labels = tuple(labels)
    if n < 1:
        raise ValueError("n must be at least 1")
    if len(labels) < 2 or len(set(labels)) != len(labels):
        raise ValueError(f"two or more distinct labels, got {list(labels)}")
    if not 0.0 <= broken_share < 1.0:
        raise ValueError("broken_share must be in [0, 1)")
    t0 = time.perf_counter()
    out = Path(out)
    np_rng = np.random.default_rng(seed)
    bases = {label: _base_images(k, len(labels), np_rng) for k, label in enumerate(labels)}
    report = SynthReport(out=str(out), manifest=str(out / MANIFEST), n=n, seed=seed)
    prefix = prefix.rstrip("/") + "/"
    for label in labels:
        (out / label).mkdir(parents=True, exist_ok=True)
    with open(out / MANIFEST, "w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(["url_source", "label", "sha256"])
        for i in range(n):
            label = labels[i % len(labels)]
            report.per_label[label] = report.per_label.get(label, 0) + 1
            kind = broken_kind(i, n, broken_share)
            name = f"{i:07d}.jpg"
            rel = f"{label}/{name}" if kind in (None, "missing") else f"{kind}/{label}/{name}"
            sha = ""
            if kind == "missing":
                pass  # no file: 404
            else:
                data = render(i, label, bases[label], seed)
                if kind == "truncated":
                    data = data[: len(data) // 2]
                elif kind == "not_an_image":
                    data = b"<html><body>moved</body></html>"
                elif kind is None:
                    sha = hashlib.sha256(data).hexdigest()
                path = out / rel
                path.parent.mkdir(parents=True, exist_ok=True)
                path.write_bytes(data)
                report.bytes_written += len(data)
            if kind:
                report.broken[kind] = report.broken.get(kind, 0) + 1
            writer.writerow([prefix + rel, label, sha])
    report.seconds = round(time.perf_counter() - t0, 3)
    return report
