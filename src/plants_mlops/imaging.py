"""Image decoding, normalising and statistics shared by formatting, serving and monitoring.

One code path turns bytes into the model's view of an image, so that what the model was
trained on, what the API predicts on and what monitoring compares are computed the same way.
"""

from __future__ import annotations

import contextlib
import io
import math
import threading
import warnings
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageChops, ImageOps, UnidentifiedImageError

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


class DecodeBudget:
    """At most ``pixels`` pixels being decoded at once, across threads.

    A decode costs memory in proportion to its pixels, whatever the size of the file: a
    170 KB PNG of 6300x6300 takes about 160 MB while it decodes. The unit is a pixel of 4
    bytes (RGB or RGBA as Pillow holds them); the API reserves each image's
    :func:`decode_cost`, its pixels read from the header weighted by the bytes per pixel
    its decode holds (a 16-bit greyscale PNG or a progressive JPEG more, an 8-bit grey one
    less), before decoding it; uploads beyond the budget wait their turn (up to
    ``wait_seconds``, then ``busy``), so concurrent maximum-size uploads cannot add up.
    """

    def __init__(self, pixels: int, wait_seconds: float = 30.0) -> None:
        self.total = int(pixels)
        self.free = int(pixels)
        self.wait_seconds = wait_seconds
        self._cond = threading.Condition()

    @contextlib.contextmanager
    def reserve(self, pixels: int):
        need = min(int(pixels), self.total)  # one image alone always fits
        with self._cond:
            if not self._cond.wait_for(lambda: self.free >= need, self.wait_seconds):
                raise ImageDecodeError(
                    "busy", "too many large images being decoded; retry in a moment"
                )
            self.free -= need
        try:
            yield
        finally:
            with self._cond:
                self.free += need
                self._cond.notify_all()


# JPEG start-of-frame markers (baseline, progressive, lossless...; not DHT C4, JPG C8, DAC CC)
_JPEG_SOF = frozenset(range(0xC0, 0xD0)) - {0xC4, 0xC8, 0xCC}
_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def _jpeg_frame(data: bytes) -> tuple[int, int, int, list[tuple[int, int]]] | None:
    """(width, height, SOF marker, each component's (h, v) sampling factors) as Pillow reads
    a JPEG's header: walking the segment lengths from the start of the file to the start
    of scan, the last start-of-frame segment's; None when the walk does not get there."""
    i, end, frame = 2, len(data), None
    while i + 4 <= end:
        if data[i] != 0xFF:
            return None
        marker = data[i + 1]
        if marker == 0xFF:  # fill byte
            i += 1
            continue
        if marker == 0x01 or 0xD0 <= marker <= 0xD8:  # segments without a length
            i += 2
            continue
        if marker == 0xDA:  # start of scan: the header is over
            return frame
        if marker in _JPEG_SOF:
            if i + 10 > end:
                return None
            count = data[i + 9]
            sampling = [
                (data[j] >> 4, data[j] & 0x0F)
                for j in range(i + 11, min(i + 10 + 3 * count, end), 3)
            ]
            frame = (
                int.from_bytes(data[i + 7 : i + 9], "big"),
                int.from_bytes(data[i + 5 : i + 7], "big"),
                marker,
                sampling,
            )
        i += 2 + int.from_bytes(data[i + 2 : i + 4], "big")
    return None


# Huffman-coded SOFs (baseline, extended, progressive; not lossless C3/C7, not arithmetic)
_JPEG_HUFFMAN_DCT = frozenset({0xC0, 0xC1, 0xC2, 0xC5, 0xC6})


def _jpeg_scan_start(data: bytes) -> tuple[int, int, int, int] | None:
    """(offset of the first start-of-scan, SOF marker, width, height), or None when the
    header walk does not reach a scan."""
    i, end, sof = 2, len(data), None
    while i + 4 <= end:
        if data[i] != 0xFF:
            return None
        marker = data[i + 1]
        if marker == 0xFF:
            i += 1
            continue
        if marker == 0x01 or 0xD0 <= marker <= 0xD8:
            i += 2
            continue
        if marker == 0xDA:
            return (i, *sof) if sof else None
        if marker in _JPEG_SOF and i + 9 <= end:
            sof = (
                marker,
                int.from_bytes(data[i + 7 : i + 9], "big"),
                int.from_bytes(data[i + 5 : i + 7], "big"),
            )
        i += 2 + int.from_bytes(data[i + 2 : i + 4], "big")
    return None


def check_jpeg_complete(data: bytes) -> None:
    """Refuse (``damaged_image``) a JPEG that its decoder would quietly pad with grey: no
    end-of-image marker after the scan (cut short), or fewer scan bytes than its declared
    size needs (at least one bit per 8x8 luma block for Huffman-coded DCT, the smallest a
    block can take; a 6000x6000 image needs >= 70 KB, a cut one carries a few hundred bytes
    and a forged end marker). Not a JPEG, or one whose header does not reach a scan:
    nothing to say here (the decoder judges it)."""
    if data[:2] != b"\xff\xd8":
        return
    found = _jpeg_scan_start(data)
    if found is None:
        return
    sos, sof, width, height = found
    eoi = data.rfind(b"\xff\xd9")
    if eoi < sos:
        raise ImageDecodeError(
            "damaged_image",
            f"JPEG has no end-of-image marker after its scan: cut short ({len(data)} bytes)",
        )
    if sof in _JPEG_HUFFMAN_DCT:
        need = -(-width // 8) * -(-height // 8) // 8
        if eoi - sos < need:
            raise ImageDecodeError(
                "damaged_image",
                f"JPEG declares {width}x{height} pixels but carries {eoi - sos} bytes of scan "
                f"data (at least {need} needed): padded or cut short",
            )


# Bytes per pixel a decode to the model's square holds at its peak (imaging.fit_rgb), by
# the mode Pillow decodes into, as measured (bench_decode_formats.py): 4 for RGB and RGBA
# (Pillow keeps 4 bytes a pixel), 1 for 8-bit grey (resampled as grey, never a full-size
# RGB copy), a wide greyscale's decoder buffers and 8-bit copy (16-bit: 4.1 measured;
# 32-bit integer and float TIFF: 5.9-6.5), and a full-size RGB or RGBA copy after a
# palette, grey with alpha (stored in 4 bytes), 1-bit or CMYK image.
DECODE_BYTES_PER_PIXEL = {
    "L": 1,
    "I;16": 4.5,
    "I;16L": 4.5,
    "I;16B": 4.5,
    "I;16N": 4.5,
    "I": 6.5,
    "F": 6.5,
    "1": 5,
    "P": 5,
    "LA": 8,
    "PA": 8,
    "CMYK": 8,
}
# A progressive JPEG keeps every DCT coefficient of the whole image while it decodes (2
# bytes each, 64 per 8x8 block of each component, however small the output is drafted):
# 6 bytes a pixel for 4:4:4 colour, 3 for 4:2:0, besides its output.
_JPEG_PROGRESSIVE = frozenset({0xC2, 0xC6, 0xCA, 0xCE})
_PNG_MODES = {0: "L", 2: "RGB", 3: "P", 4: "LA", 6: "RGBA"}  # IHDR colour type -> mode


def _jpeg_cost(frame: tuple[int, int, int, list[tuple[int, int]]]) -> float:
    _, _, marker, sampling = frame
    mode = {1: "L", 4: "CMYK"}.get(len(sampling), "RGB")
    cost = DECODE_BYTES_PER_PIXEL.get(mode, 4)
    if marker in _JPEG_PROGRESSIVE and sampling:
        h_max = max(h for h, _ in sampling) or 1
        v_max = max(v for _, v in sampling) or 1
        cost += 2 * sum(h * v for h, v in sampling) / (h_max * v_max)
    return cost


def _header(data: bytes) -> tuple[int, float]:
    """(width x height, bytes per pixel its decode needs) from the image's header, or
    (0, 0) when the bytes are not a readable image. JPEG and PNG headers are read
    directly (a few us: the API asks for every upload); other formats through Pillow."""
    if data[:2] == b"\xff\xd8":
        frame = _jpeg_frame(data)
        if frame is not None:
            return frame[0] * frame[1], _jpeg_cost(frame)
    elif data[:8] == _PNG_SIGNATURE and data[12:16] == b"IHDR":
        pixels = int.from_bytes(data[16:20], "big") * int.from_bytes(data[20:24], "big")
        depth, colour = data[24:26] if len(data) >= 26 else (8, 2)
        mode = _PNG_MODES.get(colour, "RGB")
        if mode == "L" and depth != 8:
            mode = "I;16" if depth == 16 else "1" if depth == 1 else "L"
        return pixels, DECODE_BYTES_PER_PIXEL.get(mode, 4)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            probe = Image.open(io.BytesIO(data))
    except (Image.DecompressionBombError, UnidentifiedImageError, OSError, SyntaxError, ValueError):
        return 0, 0
    return probe.size[0] * probe.size[1], DECODE_BYTES_PER_PIXEL.get(probe.mode, 4)


def header_pixels(data: bytes) -> int:
    """Width x height from the image's header (no pixel decoded), or 0 when the bytes are
    not a readable image: ``decode_image`` then says what is wrong with them."""
    return _header(data)[0]


def decode_cost(data: bytes) -> int:
    """What decoding ``data`` is charged in a :class:`DecodeBudget`: its pixels, from the
    header, weighted by the bytes per pixel its decode holds (``DECODE_BYTES_PER_PIXEL``,
    a progressive JPEG's coefficients) over the budget's 4; 0 when not a readable image."""
    return _charge(*_header(data))


def _charge(pixels: int, bytes_per_pixel: float) -> int:
    """``pixels`` decoded at ``bytes_per_pixel``, in the budget's pixels of 4 bytes."""
    return math.ceil(pixels * bytes_per_pixel / 4)


def decode_image(
    data: bytes,
    *,
    max_pixels: int = MAX_PIXELS,
    budget: DecodeBudget | None = None,
    fit: int | None = None,
) -> DecodedImage:
    """Decode, fully verify and normalise image bytes.

    Raises ImageDecodeError with reason ``empty``, ``not_an_image``, ``too_large``,
    ``damaged_image`` (cut short, padded out or corrupt: a JPEG without its end marker or
    with too few scan bytes, ``check_jpeg_complete``; a PNG cut short or with a bad CRC;
    whatever else the decoder cannot finish), or ``busy`` when ``budget`` has no room in
    time. Greyscale, palette,
    CMYK and alpha images are converted to RGB (alpha is composited on white, as a browser
    shows it). The size is checked from the header, before any pixel is decoded.

    ``fit``: the image comes back as ``square_resize(rgb, fit)`` (the same pixels, see
    :func:`fit_rgb`), made without a full-size RGB copy of an image with alpha; a JPEG
    over twice ``fit`` on its shorter side is decoded at a reduced scale that keeps it at
    least that (the square then differs from a full-size decode's by a fraction of a
    grey level on average). Formatting and serving both decode this way, so training
    sees what the API sees.
    """
    if not data:
        raise ImageDecodeError("empty", "zero bytes")
    head = data[:512].lstrip().lower()
    if head.startswith((b"<!doctype html", b"<html", b"<?xml", b"{")):
        raise ImageDecodeError("not_an_image", "got a text document (HTML/XML/JSON), not an image")
    # Pillow's own bomb check (a warning over MAX_IMAGE_PIXELS, an error over twice it)
    # runs in Image.open: a caller's larger limit raises it; the size check below decides.
    if max_pixels > (Image.MAX_IMAGE_PIXELS or max_pixels):
        Image.MAX_IMAGE_PIXELS = max_pixels
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            probe = Image.open(io.BytesIO(data))
            width, height = probe.size
            if width * height > max_pixels:
                raise ImageDecodeError(
                    "too_large", f"{width}x{height} pixels exceeds the limit of {max_pixels}"
                )
            fmt = (probe.format or "").lower()
            probe.verify()  # structure check (truncated PNG chunks, bad CRCs)
            check_jpeg_complete(data)  # what libjpeg would pad with grey, before decoding it
            with budget.reserve(width * height) if budget else contextlib.nullcontext():
                img = Image.open(io.BytesIO(data))
                if fit is not None:
                    # A JPEG at least twice the square's side decodes at 1/2, 1/4 or 1/8
                    # scale (libjpeg's DCT scaling), its sides still >= 2 x fit, so the
                    # square is resampled from twice its resolution as before (a 12 Mpx
                    # photo: 0.6 MB of pixels instead of 36, in half to a seventh of the
                    # time: reading the compressed data remains).
                    img.draft(None, (2 * fit, 2 * fit))
                img.load()  # the decode: truncated JPEG data raises here
                ImageOps.exif_transpose(img, in_place=True)  # a copy only when it rotates
                img = to_rgb(img) if fit is None else fit_rgb(img, fit)
    except ImageDecodeError:
        raise
    except Image.DecompressionBombError as exc:  # over twice the limit: not even opened
        raise ImageDecodeError(
            "too_large", f"image of more than {max_pixels} pixels, the limit"
        ) from exc
    except UnidentifiedImageError as exc:
        raise ImageDecodeError("not_an_image", "bytes are not a recognised image format") from exc
    except (OSError, SyntaxError, ValueError) as exc:
        raise ImageDecodeError(
            "damaged_image", f"image data is damaged or incomplete ({exc})"
        ) from exc
    ext = {"jpeg": "jpg", "mpo": "jpg"}.get(fmt, fmt) or "bin"
    return DecodedImage(image=img, format=ext, original_size=(width, height))


# Decodes at least this large hand the heap's free pages back when their pixels go.
TRIM_AFTER_PIXELS = 4_000_000


@contextlib.contextmanager
def decoded_within(
    data: bytes,
    budget: DecodeBudget | None,
    *,
    max_pixels: int = MAX_PIXELS,
    fit: int | None = None,
) -> Iterator[DecodedImage]:
    """Decode ``data`` holding ``budget`` for its cost (:func:`decode_cost`) from the
    first decoded byte until the block ends, when the pixels are released: the caller
    makes what it keeps (the model input, a thumbnail) inside the block. An image over
    ``max_pixels`` is refused (``too_large``) without waiting for the budget. ``fit``: the
    image is ``square_resize(rgb, fit)`` (:func:`fit_rgb`; the decode's full-size pixels
    are gone before the block starts)."""
    pixels, cost = _header(data)
    need = _charge(pixels, cost) if 0 < pixels <= max_pixels else 0
    with budget.reserve(need) if budget is not None and need else contextlib.nullcontext():
        decoded = decode_image(data, max_pixels=max_pixels, fit=fit)
        try:
            yield decoded
        finally:
            decoded.image.close()
            del decoded
    if pixels >= TRIM_AFTER_PIXELS:
        from plants_mlops import memory

        memory.trim()


_BAND_ROWS = 256
_WIDE_MODES = ("I;16", "I;16L", "I;16B", "I;16N", "I", "F")


def _to_8_bit(img: Image.Image) -> Image.Image:
    """A 16-bit or 32-bit integer (modes ``I;16*``, ``I``: 0..65535) or float (``F``: 0..1)
    greyscale image as 8-bit ``L``, scaled as a viewer shows it, in bands of rows (no
    full-size wide copy). Pillow's own ``convert`` clips at 255: such a photo became white
    (or black for floats). Other ranges are refused: nothing says what they mean."""
    low, high = img.getextrema()
    top = 1.0 if img.mode == "F" else 65535
    if not 0 <= low <= high <= top:
        kind = "float" if img.mode == "F" else "32-bit integer"
        raise ImageDecodeError(
            "unsupported_image",
            f"{kind} greyscale pixels from {low:g} to {high:g}: save the image with 8 or 16 "
            "bits per channel" + (" (or floats from 0 to 1)" if img.mode == "F" else ""),
        )
    out = Image.new("L", img.size)
    width, height = img.size
    for row in range(0, height, _BAND_ROWS):
        band = np.asarray(img.crop((0, row, width, min(row + _BAND_ROWS, height))), np.float64)
        out.paste(Image.fromarray(np.rint(band * (255 / top)).astype(np.uint8)), (0, row))
    return out


def to_rgb(img: Image.Image) -> Image.Image:
    if img.mode == "RGB":
        return img
    if img.mode in _WIDE_MODES:
        return _to_8_bit(img).convert("RGB")
    if img.mode in ("RGBA", "LA") or (img.mode == "P" and "transparency" in img.info):
        # On white, as a browser shows it: pasted through its own alpha, which needs one
        # RGB image more, not the three full-size RGBA copies alpha_composite takes.
        rgba = img if img.mode == "RGBA" else img.convert("RGBA")
        out = Image.new("RGB", rgba.size, (255, 255, 255))
        out.paste(rgba, (0, 0), rgba)
        return out
    return img.convert("RGB")


def square_resize(img: Image.Image, size: int) -> Image.Image:
    """Resize the shorter side to ``size`` and centre-crop to ``size x size``."""
    return ImageOps.fit(img, (size, size), method=Image.Resampling.BILINEAR, centering=(0.5, 0.5))


def _has_alpha(img: Image.Image) -> bool:
    return img.mode in ("RGBA", "LA") or (img.mode == "P" and "transparency" in img.info)


def _fit_box(width: int, height: int) -> tuple[float, float, float, float]:
    """The source box ``ImageOps.fit`` resizes to a square (centring 0.5, no bleed)."""
    ratio = width / height
    if ratio == 1.0:
        crop_w, crop_h = width, height
    elif ratio >= 1.0:
        crop_w, crop_h = 1.0 * height, height
    else:
        crop_w, crop_h = width, width / 1.0
    left, top = (width - crop_w) * 0.5, (height - crop_h) * 0.5
    return (left, top, left + crop_w, top + crop_h)


def fit_rgb(img: Image.Image, size: int) -> Image.Image:
    """``square_resize(to_rgb(img), size)``, pixel for pixel, without a full-size RGB copy
    of an image with alpha (for a 6300x6300 RGBA PNG: 159 MB less held at once) or of a
    greyscale one (resampled as 8-bit grey, then made RGB at the square's size). ``img``
    may be changed in place.

    The alpha image is composited on white in place, in bands of rows: pasting white
    through the inverted alpha computes, per byte, the same rounded blend as
    :func:`to_rgb`'s paste of the image through its alpha onto white. The square is then
    resampled from the RGBA bytes by Pillow's core resize, which treats each band on its
    own as it does for RGB (``Image.resize`` would first make a full-size premultiplied
    copy of an RGBA image); its alpha band is dropped at the square's size."""
    if img.mode == "L" or img.mode in _WIDE_MODES:
        # greyscale resampled as grey: the same bytes in each band, no full-size RGB copy
        grey = img if img.mode == "L" else _to_8_bit(img)
        return square_resize(grey, size).convert("RGB")
    if not _has_alpha(img):
        return square_resize(to_rgb(img), size)
    rgba = img if img.mode == "RGBA" else img.convert("RGBA")
    width, height = rgba.size
    for top in range(0, height, _BAND_ROWS):
        box = (0, top, width, min(top + _BAND_ROWS, height))
        inverse = ImageChops.invert(rgba.crop(box).getchannel("A"))
        rgba.paste((255, 255, 255, 255), box, inverse)
    box = _fit_box(width, height)
    if rgba.size == (size, size) and box == (0, 0, size, size):
        return rgba.convert("RGB")
    square = rgba._new(rgba.im.resize((size, size), Image.Resampling.BILINEAR, box))
    return square.convert("RGB")


_LEVELS = np.arange(256, dtype=np.int64)
_LEVELS_SQ = _LEVELS * _LEVELS


def _edge_response(grey: Image.Image) -> np.ndarray:
    """Pillow's ``ImageFilter.FIND_EDGES`` (8 x centre - the 8 neighbours, clipped to
    0-255, the border pixels copied), pixel for pixel, in int16 numpy: half Pillow's time,
    as a 3x3 box sum of row sums then column sums."""
    a = np.asarray(grey, dtype=np.int16)
    rows = a[:, :-2] + a[:, 1:-1] + a[:, 2:]
    box = rows[:-2] + rows[1:-1] + rows[2:]
    edges = a.copy()
    edges[1:-1, 1:-1] = np.clip(9 * a[1:-1, 1:-1] - box, 0, 255)
    return edges


def _mean_var(sum1: float, sum2: float, n: int) -> tuple[float, float]:
    """Mean and population variance, in [0, 1] units, from 8-bit sums."""
    mean = sum1 / n
    return mean / 255.0, max(0.0, sum2 / n - mean * mean) / (255.0 * 255.0)


def image_stats(img: Image.Image) -> dict[str, float]:
    """Cheap per-image statistics used for validation and drift monitoring.

    brightness/contrast: mean/std of luminance in [0, 1]; mean_r/g/b: channel means in
    [0, 1]; sharpness: variance of the Laplacian-like edge response (higher = sharper).
    Formatting runs it per image and the API's prediction-log writer per request, so it
    works on exact integer sums (Pillow's band histograms, int64 dot products) in a few C
    passes: the same figures as float32 numpy over pixels / 255, to about 1e-7.
    """
    rgb = img if img.mode == "RGB" else img.convert("RGB")
    grey = rgb.convert("L")
    hists = np.array(rgb.histogram() + grey.histogram(), dtype=np.int64).reshape(4, 256)
    n = int(hists[0].sum())
    sums, squares = hists @ _LEVELS, hists @ _LEVELS_SQ
    (mean_r, _), (mean_g, _), (mean_b, _), (brightness, grey_var) = (
        _mean_var(int(sums[i]), int(squares[i]), n) for i in range(4)
    )
    edges = _edge_response(grey).ravel().astype(np.int64)
    _, edge_var = _mean_var(int(edges.sum()), int(edges @ edges), edges.size)
    return {
        "width": float(img.width),
        "height": float(img.height),
        "brightness": brightness,
        "contrast": grey_var**0.5,
        "mean_r": mean_r,
        "mean_g": mean_g,
        "mean_b": mean_b,
        "sharpness": edge_var,
    }


def encode_jpeg(img: Image.Image, quality: int = 95) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format="JPEG", quality=quality)
    return buf.getvalue()


def model_view(img: Image.Image, *, resize_size: int, image_size: int) -> Image.Image:
    """The picture the model sees, before normalisation: square_resize(resize_size), then
    resized to ``image_size`` (what :func:`to_model_input` feeds the network)."""
    img = square_resize(img, resize_size)
    if image_size != resize_size:
        img = img.resize((image_size, image_size), Image.Resampling.BILINEAR)
    return img


def to_model_input(
    img: Image.Image,
    *,
    resize_size: int,
    image_size: int,
    mean: tuple[float, float, float],
    std: tuple[float, float, float],
) -> np.ndarray:
    """The serving/eval preprocessing, once: square_resize(resize_size) -> image_size ->
    [0,1] -> (x - mean) / std -> float32 CHW. ``img`` must already be RGB (decode_image).

    The planes are made contiguous before the arithmetic: numpy broadcasts a per-channel
    mean over an HWC array with an inner loop of 3 elements, 9x slower for a 160-px image
    (0.6 ms instead of 0.07 ms); the float32 operations per pixel are the same ones, so
    the values are identical."""
    img = model_view(img, resize_size=resize_size, image_size=image_size)
    arr = np.asarray(img).transpose(2, 0, 1).astype(np.float32, order="C")
    arr *= np.float32(1.0 / 255.0)
    arr -= np.asarray(mean, dtype=np.float32)[:, None, None]
    arr /= np.asarray(std, dtype=np.float32)[:, None, None]
    return arr
