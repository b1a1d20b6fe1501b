"""serving/upload.py: the /predict file part cut out of a raw multipart body, checked
against the bodies real clients send (httpx, as requests/curl/browsers do) and against
bodies that are not uploads at all. The route itself is exercised over HTTP in
test_serving.py and test_api_contract.py."""

from __future__ import annotations

import httpx
import pytest

from plants_mlops.serving.errors import ApiError
from plants_mlops.serving.upload import file_part


def _encoded(files, data=None) -> tuple[str, bytes]:
    """(content type, body) exactly as an HTTP client encodes this form."""
    request = httpx.Request("POST", "http://x/predict", files=files, data=data)
    return request.headers["content-type"], request.read()


PAYLOADS = {
    "jpeg-like": b"\xff\xd8\xff\xe0" + bytes(range(256)) * 40 + b"\xff\xd9",
    "crlf-and-dashes": b"a\r\n--b\r\n\r\n--\r\n" * 50,
    "empty": b"",
}


@pytest.mark.parametrize("payload", PAYLOADS, ids=list(PAYLOADS))
def test_the_file_part_is_returned_byte_for_byte_among_other_fields(payload):
    data = PAYLOADS[payload]
    ctype, body = _encoded(
        files={"file": ("é photo.jpg", data, "image/jpeg"), "other": ("x.txt", b"x", "text/plain")},
        data={"note": "--not a boundary\r\n\r\n"},
    )
    part = file_part(ctype, body)
    assert part.data == data
    assert part.filename == "é photo.jpg"
    assert part.content_type == "image/jpeg"


def test_a_quoted_boundary_a_preamble_and_parts_without_headers_are_read():
    body = (
        b"preamble to ignore\r\n--abc\r\n\r\nno headers here\r\n"
        b'--abc\r\nContent-Disposition: form-data; name="file"; filename="a.png"\r\n\r\n'
        b"PNGDATA\r\n--abc--\r\nepilogue"
    )
    part = file_part('multipart/form-data; boundary="abc"', body)
    assert (part.filename, part.content_type, part.data) == ("a.png", "", b"PNGDATA")


BAD = {
    "json": ("application/json", b'{"image": "eA=="}', "not multipart/form-data"),
    "raw image": ("image/jpeg", b"\xff\xd8\xff", "not multipart/form-data"),
    "no content type": ("", b"x", "no content type"),
    "no boundary": ("multipart/form-data", b"--x\r\n", "no usable boundary"),
    "boundary absent": ("multipart/form-data; boundary=zz", b"hello", "never appears"),
    "cut in the headers": ("multipart/form-data; boundary=zz", b"--zz\r\nContent-Dis", "never end"),
    "no closing boundary": (
        "multipart/form-data; boundary=zz",
        b'--zz\r\nContent-Disposition: form-data; name="file"; filename="a"\r\n\r\nDATA',
        "no closing boundary",
    ),
    "no file field": (
        "multipart/form-data; boundary=zz",
        b'--zz\r\nContent-Disposition: form-data; name="other"; filename="a"\r\n\r\nD\r\n--zz--',
        "Field required",
    ),
    "a text field named file": (
        "multipart/form-data; boundary=zz",
        b'--zz\r\nContent-Disposition: form-data; name="file"\r\n\r\nD\r\n--zz--',
        "got a text field",
    ),
    "a header without a colon": (
        "multipart/form-data; boundary=zz",
        b"--zz\r\nnonsense\r\n\r\nD\r\n--zz--",
        "not 'Name: value'",
    ),
    "thousands of parts": (
        "multipart/form-data; boundary=zz",
        b"--zz" + b"\r\n\r\nx\r\n--zz" * 5000 + b"--",
        "more than 1000 parts",
    ),
    "not form-data": (
        "multipart/form-data; boundary=zz",
        b'--zz\r\nContent-Disposition: attachment; name="file"; filename="a"\r\n\r\nD\r\n--zz--',
        "not form-data",
    ),
}


@pytest.mark.parametrize("case", BAD, ids=list(BAD))
def test_bodies_that_are_not_a_file_upload_get_a_422_with_the_upload_hint(case):
    ctype, body, says = BAD[case]
    with pytest.raises(ApiError) as err:
        file_part(ctype, body)
    assert err.value.status == 422 and err.value.code == "invalid_request"
    assert says in err.value.detail
    assert "multipart/form-data with the image in the field 'file'" in err.value.detail
