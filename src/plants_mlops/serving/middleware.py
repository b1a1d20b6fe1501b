"""One pure-ASGI middleware, added with ``app.add_middleware`` like any other: request id,
header and body limits (413 also for a chunked upload, 408 for a client gone silent
mid-body, 503 ``busy`` over the request-body bytes in flight), security headers, access
log, metrics, and a JSON 500 instead of a traceback."""

from __future__ import annotations

import asyncio
import logging
import re
import time
import uuid

from plants_mlops.serving.errors import error_json
from plants_mlops.serving.logs import ACCESS_LOGGER, request_id_var
from plants_mlops.serving.metrics import ServiceMetrics

log = logging.getLogger(ACCESS_LOGGER)
_SAFE_ID = re.compile(r"^[A-Za-z0-9._:-]{1,64}$")

# On every response: no MIME sniffing, never framed, no referrer leaks.
SECURITY_HEADERS = (
    (b"x-content-type-options", b"nosniff"),
    (b"x-frame-options", b"DENY"),
    (b"referrer-policy", b"no-referrer"),
)
# The upload page (/ and /static/) loads only its own files; the preview is a blob: URL.
PAGE_CSP = (
    b"default-src 'self'; img-src 'self' blob: data:; style-src 'self'; script-src 'self'; "
    b"connect-src 'self'; frame-ancestors 'none'; base-uri 'none'; form-action 'self'"
)


def security_headers(path: str) -> list[tuple[bytes, bytes]]:
    page = path == "/" or path.startswith("/static/")
    return [*SECURITY_HEADERS, *([(b"content-security-policy", PAGE_CSP)] if page else [])]


class BodyRefused(Exception):
    """Raised into the app when a body goes over its limit or its client goes silent."""


# Over the request-body bytes in flight: the decode budget's answer (imaging.DecodeBudget).
BUSY_DETAIL = "too many uploads being received at once; retry in a moment"
BUSY_RETRY_AFTER = b"1"

# Request headers: a browser sends about 20 and a few kB; refuse floods before any work.
MAX_HEADERS = 100
MAX_HEADER_BYTES = 16 * 1024


class RequestContextMiddleware:
    def __init__(
        self,
        app,
        *,
        metrics: ServiceMetrics,
        max_body_bytes,
        body_timeout: float = 30.0,
        max_inflight_bytes: int | None = None,
    ) -> None:
        self.app = app
        self.metrics = metrics
        self.max_body_bytes = max_body_bytes  # callable(path) -> int
        self.body_timeout = body_timeout  # seconds a client may stay silent mid-body
        # Request-body bytes this process holds at once (declared or received so far, until
        # the request ends): the bodies waiting for a prediction thread are in memory.
        self.max_inflight_bytes = max_inflight_bytes
        self.inflight = 0

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = dict(scope.get("headers") or ())
        incoming = headers.get(b"x-request-id", b"").decode("latin-1")
        rid = incoming if _SAFE_ID.match(incoming) else uuid.uuid4().hex
        scope.setdefault("state", {})["request_id"] = rid
        method = scope["method"]
        if method == "HEAD":  # served as GET; the server sends no body for a HEAD
            scope = {**scope, "method": "GET"}
        token = request_id_var.set(rid)
        started = time.perf_counter()
        # "refused": why the body stopped being read ("too_large", "timeout"), then None
        # once that answer went out.
        state = {"status": 500, "started": False, "refused": ""}
        limit = self.max_body_bytes(scope["path"])
        refusals = {
            "too_large": (413, f"request body exceeds the limit of {limit} bytes"),
            "timeout": (
                408,
                f"the client sent nothing for {self.body_timeout:g} s while sending the body",
            ),
            "busy": (503, BUSY_DETAIL),
        }

        async def refuse(reason: str) -> None:
            state["refused"] = ""
            status, detail = refusals[reason]
            code = "request_timeout" if reason == "timeout" else reason
            await self._json(send_wrapper, status, code, detail, rid)
            state["refused"] = None  # drop whatever the app still sends

        async def send_wrapper(message) -> None:
            if state["refused"] is None:
                return
            if state["refused"]:
                # The body was refused while the app read it (a chunked upload has no
                # Content-Length to refuse up front; a client went silent). FastAPI turns
                # any error while parsing a body into its own 400: answer what happened.
                if message["type"] == "http.response.start":
                    await refuse(state["refused"])
                return
            if message["type"] == "http.response.start":
                state["status"] = message["status"]
                state["started"] = True
                message.setdefault("headers", [])
                message["headers"] = [
                    *message["headers"],
                    (b"x-request-id", rid.encode()),
                    *security_headers(scope["path"]),
                ]
            await send(message)

        received = 0
        held = 0  # bytes this request counts in self.inflight

        def hold(total: int) -> bool:
            """Count ``total`` body bytes for this request; False when that would take the
            process over its in-flight limit (a request alone is always let in)."""
            nonlocal held
            more = total - held
            if more <= 0 or self.max_inflight_bytes is None:
                return True
            others = self.inflight - held
            if others and others + total > self.max_inflight_bytes:
                return False
            self.inflight += more
            held = total
            return True

        async def receive_wrapper():
            nonlocal received
            try:
                # asyncio.timeout, not wait_for: wait_for wraps every receive in a new Task
                async with asyncio.timeout(self.body_timeout):
                    message = await receive()
            except TimeoutError:
                state["refused"] = "timeout"
                raise BodyRefused() from None
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > limit:
                    state["refused"] = "too_large"
                    raise BodyRefused()
                if not hold(received):  # a chunked body, counted as it arrives
                    state["refused"] = "busy"
                    raise BodyRefused()
            return message

        try:
            declared = int(headers.get(b"content-length", b"0") or 0)
        except ValueError:
            declared = 0
        raw_headers = scope.get("headers") or ()
        header_bytes = sum(len(k) + len(v) for k, v in raw_headers)
        try:
            if len(raw_headers) > MAX_HEADERS or header_bytes > MAX_HEADER_BYTES:
                await self._json(
                    send_wrapper,
                    431,
                    "headers_too_large",
                    f"{len(raw_headers)} headers, {header_bytes} bytes: the limits are "
                    f"{MAX_HEADERS} headers and {MAX_HEADER_BYTES} bytes",
                    rid,
                )
            elif declared > limit:
                await self._json(
                    send_wrapper,
                    413,
                    "too_large",
                    f"request body of {declared} bytes exceeds the limit of {limit}",
                    rid,
                )
            elif not hold(declared):
                await self._json(send_wrapper, 503, "busy", BUSY_DETAIL, rid)
            else:
                await self.app(scope, receive_wrapper, send_wrapper)
        except BodyRefused:  # the app let it through: answer here, unless it already did
            if state["refused"] and not state["started"]:
                await refuse(state["refused"])
        except Exception:  # log the traceback, never send it
            log.exception(
                "unhandled error", extra={"event": "unhandled_error", "path": scope["path"]}
            )
            if not state["started"]:
                await self._json(
                    send_wrapper,
                    500,
                    "internal_error",
                    "the server failed to handle this request; see its log with this request id",
                    rid,
                )
        finally:
            self.inflight -= held
            elapsed = time.perf_counter() - started
            route = scope.get("route")
            route_path = getattr(route, "path", None) or "unmatched"
            self.metrics.requests.labels(
                method=method, route=route_path, status=str(state["status"])
            ).inc()
            self.metrics.latency.labels(route=route_path).observe(elapsed)
            if route_path not in ("/metrics", "/health", "/ready"):
                log.info(
                    "%s %s %s",
                    method,
                    scope["path"],
                    state["status"],
                    extra={
                        "event": "http_request",
                        "method": method,
                        "path": scope["path"],
                        "status": state["status"],
                        "duration_ms": round(elapsed * 1000, 3),
                    },
                )
            request_id_var.reset(token)

    @staticmethod
    async def _json(send, status: int, code: str, detail: str, rid: str) -> None:
        extra = [(b"retry-after", BUSY_RETRY_AFTER)] if status == 503 else []
        await send_json(send, status, error_json(code, detail, rid), extra)


async def send_json(send, status: int, body: bytes, extra=()) -> None:
    """A whole JSON response in raw ASGI; the connection closes after it (the body that
    was refused may still be arriving)."""
    headers = [
        (b"content-type", b"application/json"),
        (b"content-length", str(len(body)).encode()),
        (b"connection", b"close"),
        *extra,
    ]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})
