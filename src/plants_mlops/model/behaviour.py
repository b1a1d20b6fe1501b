"""What the behaviour step shows a model: meaning-preserving edits, clear cases and
images that are not plant photos at all (docs/model.md, *Behaviour tests*).

- :data:`EDITS`: the invariance edits (mirror, quarter turns, blur, darker/brighter,
  heavy JPEG, centre crop); a task lists those its labels survive
  (``task.label_preserving_edits``: a plant turned is a plant, a 6 turned is a 9).
- :func:`generated_images`: non-photos made here, deterministically (noise, flat colour,
  shapes, a page of text, a screenshot-like window).
- :func:`package_photos`: real photos that installed packages ship as files
  (scikit-learn's sample images, matplotlib's sample data, scikit-image's ``data``
  folder); read by path, no import of those packages and no download.
- Two disjoint OOD sets: :data:`TUNE_PHOTOS` plus the generated images are what the OOD
  method and its settings were chosen on (``benchmarks/bench_ood.py``); the
  :data:`REPORT_PHOTOS` were never looked at while choosing, so the share flagged on them
  is an honest figure (the gate and the model card read that one).
"""

from __future__ import annotations

import io
from collections.abc import Callable, Sequence
from importlib import metadata
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFilter, ImageFont
from pydantic import BaseModel, ConfigDict


class BehaviourMetrics(BaseModel):
    """The headline figures of ``behaviour_report.metrics`` (the gate and the model card
    read them). Shares in [0, 1]; None: not measurable for this model (no OOD detector)."""

    model_config = ConfigDict(extra="allow")  # plus invariance_<edit> per edit

    invariance_min: float | None  # labels unchanged, the worst edit but the mirror
    invariance_mirror: float | None
    functionality: float | None  # shipped clear cases labelled right (None: no case for
    # the task's labels under task.clear_cases)
    ood_flagged: float | None  # held-out non-plant photos (REPORT_PHOTOS) flagged
    ood_tune_flagged: float | None  # the set the detector was chosen on (not a result)
    false_flags: float | None  # test-split images flagged out of distribution


def _jpeg(img: Image.Image, quality: int) -> Image.Image:
    buf = io.BytesIO()
    img.save(buf, format="JPEG", quality=quality)
    buf.seek(0)
    return Image.open(buf).convert("RGB")


def _centre_crop(img: Image.Image, fraction: float) -> Image.Image:
    w, h = img.size
    cw, ch = round(w * fraction), round(h * fraction)
    left, top = (w - cw) // 2, (h - ch) // 2
    return img.crop((left, top, left + cw, top + ch))


def _brightness(img: Image.Image, factor: float) -> Image.Image:
    arr = np.asarray(img, dtype=np.float32) * factor
    return Image.fromarray(np.clip(arr, 0, 255).astype(np.uint8))


# Edit name -> the edit. The probe trains on the mirror and the quarter turns (probe.hflip,
# probe.turns) when the task lists them.
EDITS: dict[str, Callable[[Image.Image], Image.Image]] = {
    "mirror": lambda im: im.transpose(Image.Transpose.FLIP_LEFT_RIGHT),
    "rotate90": lambda im: im.transpose(Image.Transpose.ROTATE_90),
    "rotate180": lambda im: im.transpose(Image.Transpose.ROTATE_180),
    "rotate270": lambda im: im.transpose(Image.Transpose.ROTATE_270),
    "blur": lambda im: im.filter(ImageFilter.GaussianBlur(radius=2)),
    "darken": lambda im: _brightness(im, 0.6),
    "brighten": lambda im: _brightness(im, 1.4),
    "jpeg_q10": lambda im: _jpeg(im, 10),
    "crop80": lambda im: _centre_crop(im, 0.8),
    "crop60": lambda im: _centre_crop(im, 0.6),
}
QUARTER_TURNS = ("rotate90", "rotate180", "rotate270")


def probe_views(probe) -> list[str]:
    """The edits whose views of every training image are rows of the linear probe (and of
    the OOD detector's reference) beside the image and its mirror (``training.probe``: the
    quarter turns with ``turns``, then ``extra_views``), each once."""
    return list(dict.fromkeys([*(QUARTER_TURNS if probe.turns else ()), *probe.extra_views]))


class EditedImages(Sequence):
    """``images`` (a sequence of RGB PIL images, decoded on access) with ``edit`` applied
    on access: a split's edited copy costs no memory."""

    def __init__(self, images: Sequence, edit: Callable[[Image.Image], Image.Image]) -> None:
        self._images, self._edit = images, edit

    def __len__(self) -> int:
        return len(self._images)

    def __getitem__(self, i):
        if isinstance(i, slice):
            return [self._edit(im) for im in self._images[i]]
        return self._edit(self._images[i])


def generated_images(size: int = 256, seed: int = 0) -> dict[str, Image.Image]:
    """Non-photos, the same on every run: noise, flat colours, shapes, text, a screenshot."""
    rng = np.random.default_rng(seed)
    out: dict[str, Image.Image] = {}
    out["noise_uniform"] = Image.fromarray(rng.integers(0, 256, (size, size, 3), np.uint8))
    grey = rng.normal(128, 40, (size // 8, size // 8, 1)).clip(0, 255).astype(np.uint8)
    out["noise_blocks_grey"] = Image.fromarray(np.repeat(grey, 3, axis=2)).resize(
        (size, size), Image.Resampling.NEAREST
    )
    for name, colour in (
        ("flat_white", (255, 255, 255)),
        ("flat_black", (0, 0, 0)),
        ("flat_blue", (40, 90, 200)),
        ("flat_green", (60, 160, 70)),
    ):
        out[name] = Image.new("RGB", (size, size), colour)
    shapes = Image.new("RGB", (size, size), (235, 235, 235))
    draw = ImageDraw.Draw(shapes)
    draw.ellipse((20, 20, size // 2, size // 2), fill=(220, 40, 40))
    draw.rectangle((size // 2, size // 3, size - 20, size - 30), fill=(40, 40, 220))
    draw.polygon(
        [(30, size - 20), (size // 3, size // 2), (size // 2, size - 20)], fill=(250, 200, 0)
    )
    out["shapes"] = shapes
    out["text_page"] = _text_page(size)
    out["screenshot"] = _screenshot(size)
    return out


_WORDS = [
    "the",
    "quick",
    "brown",
    "fox",
    "jumps",
    "over",
    "the",
    "lazy",
    "dog",
    "while",
    "a",
    "model",
    "answers",
    "every",
    "request",
    "with",
    "a",
    "label",
    "it",
    "has",
    "learned",
    "from",
    "a",
    "few",
    "hundred",
    "photos",
    "of",
    "lawns",
    "and",
    "flowers",
]


def _font(px: int):
    try:
        return ImageFont.load_default(size=px)
    except TypeError:  # Pillow without FreeType sizes
        return ImageFont.load_default()


def _text_page(size: int) -> Image.Image:
    page = Image.new("RGB", (size, size), (250, 250, 246))
    draw = ImageDraw.Draw(page)
    font = _font(max(size // 20, 8))
    y, i = 8, 0
    while y < size - 12:
        line = " ".join(_WORDS[(i + j) % len(_WORDS)] for j in range(6))
        draw.text((8, y), line, fill=(20, 20, 20), font=font)
        y += max(size // 16, 10)
        i += 5
    return page


def _screenshot(size: int) -> Image.Image:
    shot = Image.new("RGB", (size, size), (245, 246, 248))
    draw = ImageDraw.Draw(shot)
    draw.rectangle((0, 0, size, size // 10), fill=(45, 52, 64))
    draw.rectangle((0, size // 10, size // 4, size), fill=(225, 228, 233))
    font = _font(max(size // 24, 8))
    for row in range(6):
        y = size // 10 + 12 + row * (size // 8)
        draw.text((6, y), f"item {row + 1}", fill=(60, 60, 60), font=font)
        draw.rectangle((size // 4 + 10, y, size - 12, y + size // 14), outline=(180, 180, 190))
        draw.text((size // 4 + 14, y + 2), "Lorem ipsum dolor", fill=(30, 30, 30), font=font)
    draw.rectangle((size - 70, size - 34, size - 12, size - 12), fill=(30, 110, 220))
    return shot


# Real photos from installed packages: (distribution, path inside it). None is a plant
# photo of the task (scikit-image's ``grass.png``, a lawn texture, is left out on purpose).
TUNE_PHOTOS: dict[str, tuple[str, str]] = {
    "china": ("scikit-learn", "sklearn/datasets/images/china.jpg"),
    "camera": ("scikit-image", "skimage/data/camera.png"),
    "coins": ("scikit-image", "skimage/data/coins.png"),
    "moon": ("scikit-image", "skimage/data/moon.png"),
    "brick": ("scikit-image", "skimage/data/brick.png"),
}
REPORT_PHOTOS: dict[str, tuple[str, str]] = {
    "cat_chelsea": ("scikit-image", "skimage/data/chelsea.png"),
    "coffee_cup": ("scikit-image", "skimage/data/coffee.png"),
    "astronaut": ("scikit-image", "skimage/data/astronaut.png"),
    "rocket": ("scikit-image", "skimage/data/rocket.jpg"),
    "motorcycle": ("scikit-image", "skimage/data/motorcycle_left.png"),
    "hubble": ("scikit-image", "skimage/data/hubble_deep_field.jpg"),
    "retina": ("scikit-image", "skimage/data/retina.jpg"),
    "microscopy_ihc": ("scikit-image", "skimage/data/ihc.png"),
    "gravel": ("scikit-image", "skimage/data/gravel.png"),
    "text_page": ("scikit-image", "skimage/data/page.png"),
    "text_photo": ("scikit-image", "skimage/data/text.png"),
    "grace_hopper": ("matplotlib", "matplotlib/mpl-data/sample_data/grace_hopper.jpg"),
    "flower": ("scikit-learn", "sklearn/datasets/images/flower.jpg"),
}


def photo_path(distribution: str, relative: str) -> Path:
    """Where an installed distribution keeps one of its files (no import of it)."""
    try:
        path = Path(str(metadata.distribution(distribution).locate_file(relative)))
    except metadata.PackageNotFoundError as exc:
        raise FileNotFoundError(f"{distribution} is not installed (needed for {relative})") from exc
    if not path.is_file():
        raise FileNotFoundError(f"{distribution} ships no {relative}")
    return path


def package_photos(which: dict[str, tuple[str, str]]) -> dict[str, Image.Image]:
    """The photos ``which`` names, decoded to RGB."""
    out = {}
    for name, (dist, rel) in which.items():
        with Image.open(photo_path(dist, rel)) as im:
            out[name] = im.convert("RGB")
    return out


def tune_set(size: int = 256) -> dict[str, Image.Image]:
    """What the OOD method was chosen on: the generated images and :data:`TUNE_PHOTOS`."""
    return {
        **{f"gen_{k}": v for k, v in generated_images(size).items()},
        **package_photos(TUNE_PHOTOS),
    }


def report_set() -> dict[str, Image.Image]:
    """The held-out real photos the share flagged is reported on."""
    return package_photos(REPORT_PHOTOS)


def clear_cases(
    folder: Path, labels: tuple[str, ...]
) -> tuple[list[str], list[Image.Image], np.ndarray]:
    """The minimum-functionality set: ``folder/<label>/*`` images -> (names, images, label
    indices). A label without a folder has no cases (a K-class task may ship fewer)."""
    names, images, y = [], [], []
    for idx, label in enumerate(labels):
        sub = Path(folder) / label
        for path in sorted(sub.glob("*")) if sub.is_dir() else []:
            if path.suffix.lower() not in (".jpg", ".jpeg", ".png", ".webp"):
                continue
            with Image.open(path) as im:
                images.append(im.convert("RGB"))
            names.append(f"{label}/{path.name}")
            y.append(idx)
    return names, images, np.asarray(y, dtype=np.int64)
