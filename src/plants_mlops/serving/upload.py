"""The image of a ``POST /predict`` upload, cut out of the raw multipart body.

A ``File()`` parameter costs the event loop about 0.2 ms per request (Starlette's form
parser, python-multipart's per-chunk callbacks, a SpooledTemporaryFile per part, FastAPI's
dependency solving and validation): a fifth of all that HTTP adds to a prediction on two
cores (docs/serving.md, *Where the server's CPU goes*). ``/predict`` takes one file, so it
reads its body (bounded by the middleware's size limit and timeout) and takes the part
named ``file`` out of it here: RFC 7578 ``multipart/form-data``, with python-multipart's
own header-parameter parser for the headers. Anything that is not such a body is a 422
with the same hint FastAPI's validation gives (errors.UPLOAD_HINT). Memory: the body and
the file's bytes, at most about twice the upload limit while the request runs, as before
(the form parser's temporary file plus the bytes read from it).
"""

from __future__ import annotations

from dataclasses import dataclass

from python_multipart.multipart import parse_options_header

from plants_mlops.serving.errors import UPLOAD_HINT, ApiError
from plants_mlops.serving.schemas import IMAGE_CONTENT_TYPES

FIELD = "file"
MAX_BOUNDARY = 200  # RFC 2046 says at most 70 characters; clients stay far below this
MAX_PART_HEADERS = 16 * 1024  # the headers of one part (a browser sends about 150 bytes)
# Parts looked at before giving up: a body of thousands of tiny parts would otherwise keep
# the event loop busy (Starlette's form parser stops at 1000 fields too).
MAX_PARTS = 1000

# The request body /predict documents (OpenAPI), as FastAPI would for a File() parameter.
OPENAPI_BODY = {
    "requestBody": {
        "required": True,
        "content": {
            "multipart/form-data": {
                "schema": {
                    "type": "object",
                    "title": "Body_predict",
                    "required": [FIELD],
                    "properties": {
                        FIELD: {
                            "type": "string",
                            "format": "binary",
                            "title": "File",
                            "description": "the image (JPEG, PNG, WebP, GIF, BMP)",
                        }
                    },
                },
                "encoding": {FIELD: {"contentType": IMAGE_CONTENT_TYPES}},
            }
        },
    }
}


@dataclass(frozen=True)
class UploadedFile:
    filename: str
    content_type: str  # of the part ("" when the client sent none)
    data: bytes


def _invalid(detail: str) -> ApiError:
    return ApiError(422, "invalid_request", f"{FIELD}: {detail} {UPLOAD_HINT}")


def _part_headers(raw: bytes) -> tuple[str | None, str | None, str]:
    """(field name, filename or None, content type) from one part's header block."""
    name = filename = None
    content_type = ""
    for line in raw.split(b"\r\n"):
        key, sep, value = line.partition(b":")
        if not sep:
            raise _invalid("a part header is not 'Name: value'")
        key = key.strip().lower()
        if key == b"content-disposition":
            kind, params = parse_options_header(value.strip())
            if kind != b"form-data":
                raise _invalid("a part's Content-Disposition is not form-data")
            if b"name" in params:
                name = params[b"name"].decode("utf-8", "replace")
            if b"filename" in params:
                filename = params[b"filename"].decode("utf-8", "replace")
        elif key == b"content-type":
            content_type = value.strip().decode("latin-1")
    return name, filename, content_type


def file_part(content_type: str, body: bytes) -> UploadedFile:
    """The part named ``file`` of a multipart/form-data ``body``; ApiError 422 when the
    body is not multipart, is cut short, or has no such file part."""
    kind, params = parse_options_header(content_type or "")
    if kind != b"multipart/form-data":
        shown = kind.decode("latin-1") or "no content type"
        raise _invalid(f"Field required (the body is {shown}, not multipart/form-data)")
    boundary = params.get(b"boundary", b"")
    if not 0 < len(boundary) <= MAX_BOUNDARY:
        raise _invalid("the multipart/form-data content type has no usable boundary")
    delimiter = b"--" + boundary
    next_part = b"\r\n" + delimiter
    start = body.find(delimiter)
    if start < 0:
        raise _invalid("the body holds no part (its boundary never appears)")
    pos = start + len(delimiter)
    parts = 0
    while not body.startswith(b"--", pos):  # "--" after a delimiter closes the body
        parts += 1
        if parts > MAX_PARTS:
            raise _invalid(f"more than {MAX_PARTS} parts before the file")
        line_end = body.find(b"\r\n", pos)
        if line_end < 0:
            raise _invalid("the body ends inside a part")
        head_end = body.find(b"\r\n\r\n", line_end)
        if head_end < 0 or head_end - line_end > MAX_PART_HEADERS:
            raise _invalid("a part's headers never end")
        end = body.find(next_part, head_end + 4)
        if end < 0:
            raise _invalid("the body ends inside a part (no closing boundary)")
        headers = body[line_end + 2 : head_end]  # empty when the part has none
        name, filename, part_type = _part_headers(headers) if headers else (None, None, "")
        if name == FIELD:
            if filename is None:
                raise _invalid("Expected a file upload (a part with a filename), got a text field")
            return UploadedFile(filename, part_type, body[head_end + 4 : end])
        pos = end + len(next_part)
    raise _invalid("Field required")
