"""API errors: one JSON shape (``ErrorResponse``) for every 4xx/5xx, never a traceback."""

from __future__ import annotations

import json

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from plants_mlops.imaging import ImageDecodeError

# The hint of every "not an upload" 422 (FastAPI's validation and serving/upload.py).
UPLOAD_HINT = (
    "(send multipart/form-data with the image in the field 'file', or 'files' for /predict/batch)"
)

# imaging.decode_image reasons -> (HTTP status, message prefix)
DECODE_STATUS = {
    "empty": 400,
    "not_an_image": 415,
    "truncated": 400,
    "too_large": 413,
    "busy": 503,
}


class ApiError(Exception):
    def __init__(self, status: int, code: str, detail: str) -> None:
        super().__init__(detail)
        self.status = status
        self.code = code
        self.detail = detail

    @classmethod
    def from_decode(cls, exc: ImageDecodeError) -> ApiError:
        return cls(DECODE_STATUS.get(exc.reason, 400), exc.reason, exc.detail)


def error_body(request: Request | None, code: str, detail: str) -> dict:
    rid = (
        request.state.request_id
        if request is not None and hasattr(request.state, "request_id")
        else None
    )
    return {"error": code, "detail": detail, "request_id": rid}


def error_json(code: str, detail: str, request_id: str | None) -> bytes:
    """``error_body``'s document as bytes, for what answers in raw ASGI (the middleware's
    own refusals, the ``/predict`` shortcut)."""
    return json.dumps({"error": code, "detail": detail, "request_id": request_id}).encode()


_HTTP_CODES = {
    404: "not_found",
    405: "method_not_allowed",
    401: "unauthorized",
    403: "forbidden",
    413: "too_large",
    415: "unsupported_media_type",
}


def install(app: FastAPI) -> None:
    @app.exception_handler(ApiError)
    async def _api_error(request: Request, exc: ApiError) -> JSONResponse:
        return JSONResponse(error_body(request, exc.code, exc.detail), status_code=exc.status)

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        code = _HTTP_CODES.get(exc.status_code, "http_error")
        return JSONResponse(
            error_body(request, code, str(exc.detail)),
            status_code=exc.status_code,
            headers=exc.headers,
        )

    @app.exception_handler(RequestValidationError)
    async def _validation(request: Request, exc: RequestValidationError) -> JSONResponse:
        parts = []
        for err in exc.errors()[:5]:
            where = ".".join(str(p) for p in err.get("loc", ()) if p != "body") or "request"
            parts.append(f"{where}: {err.get('msg', 'invalid')}")
        detail = "; ".join(parts)
        if any(str(e.get("loc", ("",))[-1]) in ("file", "files") for e in exc.errors()):
            detail += " " + UPLOAD_HINT
        return JSONResponse(error_body(request, "invalid_request", detail), status_code=422)
