"""Schemathesis hooks (loaded with ``SCHEMATHESIS_HOOKS=support.schemathesis_hooks``): the
upload routes declare their file parts as images (``encoding.contentType``), and these
strategies make each such part a real, decodable image of a random size and colour, so
the "schema-valid data is accepted" check means something for ``/predict``."""

from __future__ import annotations

import io

import schemathesis
from hypothesis import strategies as st


def _image(fmt: str, size: tuple[int, int], colour: tuple[int, int, int]) -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.new("RGB", size, colour).save(buf, format=fmt)
    return buf.getvalue()


_SIZES = st.tuples(st.integers(8, 96), st.integers(8, 96))
_COLOURS = st.tuples(st.integers(0, 255), st.integers(0, 255), st.integers(0, 255))

for _media_type, _fmt in (("image/jpeg", "JPEG"), ("image/png", "PNG"), ("image/webp", "WEBP")):
    schemathesis.openapi.media_type(
        _media_type, st.builds(lambda s, c, f=_fmt: _image(f, s, c), _SIZES, _COLOURS)
    )
