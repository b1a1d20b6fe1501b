"""Test images built from the real samples: odd modes, damaged bytes, a decompression bomb."""

from __future__ import annotations

import io
from functools import cache
from pathlib import Path

from PIL import Image

SAMPLES = Path(__file__).resolve().parents[2] / "samples" / "plants"


def sample_paths(label: str | None = None) -> list[Path]:
    return list(_sample_paths(label))


@cache  # the request loops of the serving tests ask for a sample per request
def _sample_paths(label: str | None) -> tuple[Path, ...]:
    pattern = f"{label}/*.jpg" if label else "*/*.jpg"
    return tuple(sorted(SAMPLES.glob(pattern)))


def sample_jpeg(i: int = 0, label: str = "dandelion") -> bytes:
    return sample_paths(label)[i].read_bytes()


def enlarge_jpeg(data: bytes, size: str = "4032x3024") -> bytes:
    """The image ``data`` enlarged to ``size`` ("WxH"), saved at JPEG quality 90 as a
    phone camera saves its 12 Mpx photos (the benchmarks' phone photos too)."""
    width, height = (int(v) for v in size.lower().split("x"))
    with Image.open(io.BytesIO(data)) as img:
        big = img.convert("RGB").resize((width, height), Image.Resampling.BICUBIC)
    return _encode(big, "JPEG", quality=90)


def mosaic_jpeg(i: int = 0, size: str = "4032x3024", tile: int = 144) -> bytes:
    """A ``size`` JPEG (quality 92) tiled with sample photos from the ``i``-th on: the fine
    detail of a real phone photo (about 5 MB at 12 Mpx), where an enlarged sample is smooth."""
    from plants_mlops import imaging

    width, height = (int(v) for v in size.lower().split("x"))
    paths = sample_paths()
    out = Image.new("RGB", (width, height))
    for n, (y, x) in enumerate(
        (y, x) for y in range(0, height, tile) for x in range(0, width, tile)
    ):
        with Image.open(paths[(i + n) % len(paths)]) as img:
            out.paste(imaging.square_resize(img.convert("RGB"), tile), (x, y))
    return _encode(out, "JPEG", quality=92)


def phone_jpeg(i: int = 0) -> bytes:
    """A sample photo as a phone camera's 12 Mpx JPEG."""
    return enlarge_jpeg(sample_jpeg(i))


def record_decodes(monkeypatch) -> list[tuple[int, int]]:
    """The size of every image Pillow decodes from now on in this test, appended as it is."""
    from PIL import ImageFile

    sizes: list[tuple[int, int]] = []
    real_load = ImageFile.ImageFile.load

    def load(self):
        result = real_load(self)
        sizes.append(self.size)
        return result

    monkeypatch.setattr(ImageFile.ImageFile, "load", load)
    return sizes


def _encode(img: Image.Image, fmt: str, **kw) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format=fmt, **kw)
    return buf.getvalue()


def png_with_alpha() -> bytes:
    img = Image.open(io.BytesIO(sample_jpeg(1))).convert("RGBA")
    img.putalpha(128)
    return _encode(img, "PNG")


def greyscale_jpeg() -> bytes:
    return _encode(Image.open(io.BytesIO(sample_jpeg(2))).convert("L"), "JPEG")


def cmyk_jpeg() -> bytes:
    return _encode(Image.open(io.BytesIO(sample_jpeg(3))).convert("CMYK"), "JPEG")


def palette_gif() -> bytes:
    return _encode(Image.open(io.BytesIO(sample_jpeg(4, "grass"))).convert("P"), "GIF")


def truncated_jpeg() -> bytes:
    data = sample_jpeg(5)
    return data[: len(data) // 2]


@cache
def padded_jpeg() -> bytes:
    """693 bytes that declare 6000x6000: a JPEG's header and first scan bytes, then a
    forged end-of-image marker (libjpeg pads the rest with grey)."""
    data = _encode(Image.new("RGB", (6000, 6000), (90, 140, 60)), "JPEG", quality=75)
    return data[:691] + b"\xff\xd9"


@cache
def decompression_bomb_png() -> bytes:
    """A small file (~60 KB) that declares 8000x8000 = 64 M pixels."""
    return _encode(Image.new("L", (8000, 8000)), "PNG", optimize=False, compress_level=9)


def yellow_disc_on_grass(centre_x: int, size: int = 160, radius: int = 25) -> Image.Image:
    """A dandelion-yellow disc on a noisy lawn-green field, centred at (centre_x, size / 2):
    the same picture with the object moved, for explanations that must follow it."""
    import numpy as np
    from PIL import ImageDraw

    rng = np.random.default_rng(1)
    arr = np.stack(
        [
            rng.integers(30, 70, (size, size)),
            rng.integers(90, 150, (size, size)),
            rng.integers(20, 50, (size, size)),
        ],
        axis=-1,
    ).astype(np.uint8)
    img = Image.fromarray(arr)
    cy = size // 2
    ImageDraw.Draw(img).ellipse(
        (centre_x - radius, cy - radius, centre_x + radius, cy + radius), fill=(250, 215, 30)
    )
    return img
