"""Image decoding, normalising and statistics shared by formatting, serving and monitoring.

One code path turns bytes into the model's view of an image, so that what the model was
trained on, what the API predicts on and what monitoring compares are computed the same way.
"""

from __future__ import annotations

import io
import warnings
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageFilter, ImageOps, UnidentifiedImageError

# Refuse decompression bombs explicitly instead of relying on Pillow's warning.
MAX_PIXELS = 40_000_000
Image.MAX_IMAGE_PIXELS = MAX_PIXELS

STAT_COLUMNS = (
    "width",
    "height",
    "brightness",
    "contrast",
    "mean_r",
    "mean_g",
    "mean_b",
    "sharpness",
)


class ImageDecodeError(ValueError):
    """The bytes are not a complete image we can use; ``reason`` is a short machine tag."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail


@dataclass(frozen=True)
class DecodedImage:
    image: Image.Image  # RGB, EXIF orientation applied
    format: str  # file extension of the original encoding: jpg, png, webp, ...
    original_size: tuple[int, int]


def decode_image(data: bytes, *, max_pixels: int = MAX_PIXELS) -> DecodedImage:
    """Decode, fully verify and normalise image bytes.

    Raises ImageDecodeError with reason ``empty``, ``not_an_image``, ``too_large`` or
    ``truncated``. Greyscale, palette, CMYK and alpha images are converted to RGB (alpha
    is composited on white, as a browser shows it).
    """
    if not data:
        raise ImageDecodeError("empty", "zero bytes")
    head = data[:512].lstrip().lower()
    if head.startswith((b"<!doctype html", b"<html", b"<?xml", b"{")):
        raise ImageDecodeError("not_an_image", "got a text document (HTML/XML/JSON), not an image")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            probe = Image.open(io.BytesIO(data))
            width, height = probe.size
            if width * height > max_pixels:
                raise ImageDecodeError(
                    "too_large", f"{width}x{height} pixels exceeds the limit of {max_pixels}"
                )
            fmt = (probe.format or "").lower()
            probe.verify()  # structure check (truncated PNG chunks, bad CRCs)
            img = Image.open(io.BytesIO(data))
            img.load()  # full decode: truncated JPEG data raises here
    except ImageDecodeError:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise ImageDecodeError("too_large", str(exc)) from exc
    except UnidentifiedImageError as exc:
        raise ImageDecodeError("not_an_image", "bytes are not a recognised image format") from exc
    except (OSError, SyntaxError, ValueError) as exc:
        raise ImageDecodeError("truncated", f"image data is damaged or incomplete ({exc})") from exc
    img = ImageOps.exif_transpose(img)
    img = to_rgb(img)
    ext = {"jpeg": "jpg", "mpo": "jpg"}.get(fmt, fmt) or "bin"
    return DecodedImage(image=img, format=ext, original_size=(width, height))


def to_rgb(img: Image.Image) -> Image.Image:
    if img.mode == "RGB":
        return img
    if img.mode in ("RGBA", "LA") or (img.mode == "P" and "transparency" in img.info):
        rgba = img.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    return img.convert("RGB")


def square_resize(img: Image.Image, size: int) -> Image.Image:
    """Resize the shorter side to ``size`` and centre-crop to ``size x size``."""
    return ImageOps.fit(img, (size, size), method=Image.Resampling.BILINEAR, centering=(0.5, 0.5))


def image_stats(img: Image.Image) -> dict[str, float]:
    """Cheap per-image statistics used for validation and drift monitoring.

    brightness/contrast: mean/std of luminance in [0, 1]; mean_r/g/b: channel means in
    [0, 1]; sharpness: variance of the Laplacian-like edge response (higher = sharper).
    """
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


def encode_jpeg(img: Image.Image, quality: int = 95) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format="JPEG", quality=quality)
    return buf.getvalue()


def to_model_input(
    img: Image.Image,
    *,
    resize_size: int,
    image_size: int,
    mean: tuple[float, float, float],
    std: tuple[float, float, float],
) -> np.ndarray:
    """The serving/eval preprocessing, once: square_resize(resize_size) -> image_size ->
    [0,1] -> (x - mean) / std -> float32 CHW. ``img`` must already be RGB (decode_image)."""
    img = square_resize(img, resize_size)
    if image_size != resize_size:
        img = img.resize((image_size, image_size), Image.Resampling.BILINEAR)
    arr = np.asarray(img, dtype=np.float32) * (1.0 / 255.0)
    arr = (arr - np.asarray(mean, dtype=np.float32)) / np.asarray(std, dtype=np.float32)
    return np.ascontiguousarray(arr.transpose(2, 0, 1))
