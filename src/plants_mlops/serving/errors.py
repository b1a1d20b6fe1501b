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
    "unsupported_image": 415,
    "damaged_image": 400,
    "too_large": 413,
    "busy": 503,
}


class ApiError(Exception):
    def __init__(
        self, status: int, code: str, detail: str, headers: dict[str, str] | None = None
    ) -> None:
        super().__init__(detail)
        self.status = status
        self.code = code
        self.detail = detail
        self.headers = headers  # e.g. Retry-After on a 429

    @classmethod
    def from_decode(cls, exc: ImageDecodeError) -> ApiError:
        retry = {"Retry-After": "1"} if exc.reason == "busy" else None  # the budget frees soon
        return cls(DECODE_STATUS.get(exc.reason, 400), exc.reason, exc.detail, retry)


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
    400: "malformed_body",
    404: "not_found",
    405: "method_not_allowed",
    401: "unauthorized",
    403: "forbidden",
    413: "too_large",
    415: "unsupported_media_type",
}


_METHODS = ("DELETE", "GET", "HEAD", "PATCH", "POST", "PUT")


def allowed_methods(app: FastAPI, scope: dict) -> str:
    """Every method some route of ``app`` fully matches at the request's path (Starlette's
    own matching, included routers too), for the ``Allow`` header of a 405."""
    from starlette.routing import Match

    allowed = [
        method
        for method in _METHODS
        if any(
            route.matches({**scope, "method": method})[0] == Match.FULL
            for route in app.router.routes
        )
    ]
    return ", ".join(allowed)


# Documented on every operation (the middleware's JSON 500), on every one that takes a
# body (its size limit), and on every one with a body or parameters (validation).
_SERVER_ERROR = "internal error: the body names the request id of the logged traceback"
_BODY_TOO_LARGE = "request body over the size limit"
_INVALID = "the request does not match this operation's schema (malformed JSON included)"
_UNPARSABLE = "the body could not be parsed at all (a broken multipart body, bytes that are not UTF-8 inside a JSON string)"
_BODY_TIMEOUT = "the client sent nothing for PLANTS_BODY_TIMEOUT_SECONDS while sending the body"
_HEADERS_TOO_LARGE = "too many request headers, or too many bytes of them"
_BUSY = "over PLANTS_MAX_INFLIGHT_BYTES of request bodies in flight (Retry-After)"


def document_errors(schema: dict) -> dict:
    """The OpenAPI document with what the server really answers on errors: every 4xx/5xx is
    ``ErrorResponse`` (FastAPI documents its own 422 body, ``HTTPValidationError``, which
    this API never sends: ``install``'s handler answers validation errors with
    ``ErrorResponse``), and the statuses any operation can get from the middleware and the
    validation are listed."""
    error = {"application/json": {"schema": {"$ref": "#/components/schemas/ErrorResponse"}}}
    for item in schema.get("paths", {}).values():
        for operation in item.values():
            responses = operation.setdefault("responses", {})
            if "requestBody" in operation or operation.get("parameters"):
                responses.setdefault("422", {"description": _INVALID})
            if "requestBody" in operation:
                responses.setdefault("400", {"description": _UNPARSABLE})
                responses.setdefault("408", {"description": _BODY_TIMEOUT})
                responses.setdefault("413", {"description": _BODY_TOO_LARGE})
                responses.setdefault("503", {"description": _BUSY})
            responses.setdefault("431", {"description": _HEADERS_TOO_LARGE})
            responses.setdefault("500", {"description": _SERVER_ERROR})
            for status, response in responses.items():
                if int(status) >= 400:
                    response["content"] = error
    components = schema.get("components", {}).get("schemas", {})
    for unused in ("HTTPValidationError", "ValidationError"):
        components.pop(unused, None)
    return schema


def install(app: FastAPI) -> None:
    original_openapi = app.openapi

    def openapi() -> dict:
        if app.openapi_schema is None:
            app.openapi_schema = document_errors(original_openapi())
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]

    @app.exception_handler(ApiError)
    async def _api_error(request: Request, exc: ApiError) -> JSONResponse:
        return JSONResponse(
            error_body(request, exc.code, exc.detail), status_code=exc.status, headers=exc.headers
        )

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        code = _HTTP_CODES.get(exc.status_code, "http_error")
        headers = dict(exc.headers or {})
        if exc.status_code == 400 and str(exc.detail).startswith("Too many files"):
            # Starlette's multipart parser stops at 1,000 parts, before the batch's limit
            limit = request.app.state.service.config.max_batch_files
            detail = f"over 1000 files; the batch limit is {limit}"
            return JSONResponse(error_body(request, "too_many_files", detail), status_code=413)
        if exc.status_code == 405:
            # Starlette names the methods of the first route whose path matched; a path
            # served by several routes (GET and POST /admin/retrain) allows them all.
            headers["Allow"] = allowed_methods(request.app, request.scope)
        return JSONResponse(
            error_body(request, code, str(exc.detail)),
            status_code=exc.status_code,
            headers=headers,
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
