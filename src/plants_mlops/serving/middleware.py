"""One pure-ASGI middleware for every request: request id, size limit, access log, metrics,
and a JSON 500 instead of a traceback if anything below fails."""

from __future__ import annotations

import json
import logging
import re
import time
import uuid

from plants_mlops.serving.logs import request_id_var
from plants_mlops.serving.metrics import ServiceMetrics

log = logging.getLogger("plants_mlops.serving.access")
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


class BodyTooLarge(Exception):
    pass


class RequestContextMiddleware:
    def __init__(
        self,
        app,
        *,
        metrics: ServiceMetrics,
        max_body_bytes,
    ) -> None:
        self.app = app
        self.metrics = metrics
        self.max_body_bytes = max_body_bytes  # callable(path) -> int

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = dict(scope.get("headers") or ())
        incoming = headers.get(b"x-request-id", b"").decode("latin-1")
        rid = incoming if _SAFE_ID.match(incoming) else uuid.uuid4().hex
        scope.setdefault("state", {})["request_id"] = rid
        token = request_id_var.set(rid)
        started = time.perf_counter()
        state = {"status": 500, "started": False, "too_large": False}
        limit = self.max_body_bytes(scope["path"])

        async def send_wrapper(message) -> None:
            if state["too_large"]:
                # The body went over the limit while the app read it (a chunked upload has
                # no Content-Length to refuse up front). FastAPI turns any error while
                # parsing a body into its own 400: answer what happened instead, once.
                if message["type"] == "http.response.start":
                    state["too_large"] = False
                    await self._json(
                        send_wrapper,
                        413,
                        "too_large",
                        f"request body exceeds the limit of {limit} bytes",
                        rid,
                    )
                    state["too_large"] = None  # drop the rest of the app's response
                return
            if state["too_large"] is None:
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

        async def receive_wrapper():
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > limit:
                    state["too_large"] = True
                    raise BodyTooLarge()
            return message

        try:
            declared = int(headers.get(b"content-length", b"0") or 0)
        except ValueError:
            declared = 0
        try:
            if declared > limit:
                await self._json(
                    send_wrapper,
                    413,
                    "too_large",
                    f"request body of {declared} bytes exceeds the limit of {limit}",
                    rid,
                )
            else:
                await self.app(scope, receive_wrapper, send_wrapper)
        except BodyTooLarge:
            state["too_large"] = False
            if not state["started"]:
                await self._json(
                    send_wrapper,
                    413,
                    "too_large",
                    f"request body exceeds the limit of {limit} bytes",
                    rid,
                )
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
            elapsed = time.perf_counter() - started
            route = scope.get("route")
            route_path = getattr(route, "path", None) or "unmatched"
            self.metrics.requests.labels(
                method=scope["method"], route=route_path, status=str(state["status"])
            ).inc()
            self.metrics.latency.labels(route=route_path).observe(elapsed)
            if route_path not in ("/metrics", "/health", "/ready"):
                log.info(
                    "%s %s %s",
                    scope["method"],
                    scope["path"],
                    state["status"],
                    extra={
                        "event": "http_request",
                        "method": scope["method"],
                        "path": scope["path"],
                        "status": state["status"],
                        "duration_ms": round(elapsed * 1000, 3),
                    },
                )
            request_id_var.reset(token)

    @staticmethod
    async def _json(send, status: int, code: str, detail: str, rid: str) -> None:
        body = json.dumps({"error": code, "detail": detail, "request_id": rid}).encode()
        await send(
            {
                "type": "http.response.start",
                "status": status,
                "headers": [
                    (b"content-type", b"application/json"),
                    (b"content-length", str(len(body)).encode()),
                    (b"connection", b"close"),
                ],
            }
        )
        await send({"type": "http.response.body", "body": body})
