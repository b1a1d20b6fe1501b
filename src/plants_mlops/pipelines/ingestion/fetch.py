"""Downloading one URL the careful way: mirrors, timeouts, retries with backoff, size cap.

Kept apart from the Kedro nodes so the policy reads in one place and is testable alone.
"""

from __future__ import annotations

import ipaddress
import posixpath
import random
import socket
import time
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import unquote, urlparse

import httpx

from plants_mlops.params import FetchPolicy

RETRYABLE_STATUS = frozenset({408, 425, 429, 500, 502, 503, 504})


class FetchError(Exception):
    """A URL could not be fetched; ``reason`` is a short tag (http_404, timeout, ...)."""

    def __init__(self, reason: str, detail: str, attempts: int = 1) -> None:
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail
        self.attempts = attempts


@dataclass(frozen=True)
class Mirror:
    prefix: str
    target: str  # a local folder, or a base URL (http(s)://...)


def parse_mirrors(raw: list[dict] | None) -> list[Mirror]:
    """``[{prefix, to}]`` from the parameters; an empty ``to`` disables that mirror."""
    mirrors = [Mirror(str(m["prefix"]), str(m.get("to") or "")) for m in raw or []]
    return sorted((m for m in mirrors if m.target), key=lambda m: -len(m.prefix))


def _case_folded_origin(url: str) -> str:
    """``url`` with its scheme and host in lower case (they are case-insensitive; the path
    is not), the same length."""
    scheme, sep, rest = url.partition("://")
    if not sep:
        return url
    host, slash, path = rest.partition("/")
    return f"{scheme.lower()}{sep}{host.lower()}{slash}{path}"


def resolve(url: str, mirrors: list[Mirror]) -> str:
    """Where to actually read ``url`` from: the first (longest) matching mirror, else itself.
    A mirror folder is never escaped (``../``, encoded or not): FetchError ``forbidden_path``."""
    folded = _case_folded_origin(url)
    for m in mirrors:
        prefix = _case_folded_origin(m.prefix)
        if folded.startswith(prefix):
            rest = folded[len(prefix) :]  # the path: never case-folded
            if m.target.startswith(("http://", "https://")):
                return m.target.rstrip("/") + "/" + rest.lstrip("/")
            base = Path(m.target).resolve()
            path = (base / unquote(rest)).resolve()
            if not path.is_relative_to(base):
                raise FetchError("forbidden_path", f"{url} leaves the mirror folder {base}")
            return str(path)
    return url


@dataclass(frozen=True)
class Origin:
    """Where a configured HTTP mirror lives: exact scheme, host and port, and the path
    prefix under which it serves. Only URLs inside it skip the public-address check."""

    scheme: str
    host: str
    port: int
    path: str  # always ends with "/"

    @classmethod
    def of(cls, url: str) -> Origin:
        parsed = urlparse(url)
        path = _clean_path(parsed.path)
        return cls(
            parsed.scheme, (parsed.hostname or "").lower(), _port(parsed), path.rstrip("/") + "/"
        )

    def holds(self, url: str) -> bool:
        parsed = urlparse(url)
        return (
            parsed.scheme == self.scheme
            and (parsed.hostname or "").lower() == self.host
            and _port(parsed) == self.port
            and (_clean_path(parsed.path) + "/").startswith(self.path)
        )


def _port(parsed) -> int:
    try:
        port = parsed.port
    except ValueError:
        port = -1  # an unparsable port never matches a mirror
    return port if port is not None else {"http": 80, "https": 443}.get(parsed.scheme, -1)


def _clean_path(path: str) -> str:
    """The path with percent-escapes decoded and dot segments resolved ("/" when empty)."""
    return posixpath.normpath("/" + unquote(path).lstrip("/")).replace("//", "/")


def trusted_origins(mirrors: list[Mirror]) -> tuple[Origin, ...]:
    """The HTTP mirrors the configuration names (private addresses allowed inside them)."""
    return tuple(
        Origin.of(m.target) for m in mirrors if m.target.startswith(("http://", "https://"))
    )


def check_address(url: str, policy: FetchPolicy, trusted: tuple[Origin, ...] = ()) -> None:
    """Refuse a URL that is not http(s), that carries userinfo (``user@host``), or whose
    host resolves to a non-public address (loopback, private, link-local, multicast,
    reserved), unless it lies inside a configured mirror's origin and path
    (:class:`Origin`) or ``allow_private_networks`` is on. Checked before connecting, on
    every hop (redirects included)."""
    parsed = urlparse(url)
    if parsed.scheme not in ("http", "https"):
        raise FetchError("forbidden_scheme", f"{parsed.scheme}:// is not fetched (http, https)")
    if "@" in parsed.netloc:
        raise FetchError("forbidden_userinfo", f"{url}: a URL with user@ is never fetched")
    host = parsed.hostname or ""
    if policy.allow_private_networks or any(o.holds(url) for o in trusted):
        return
    try:
        infos = socket.getaddrinfo(host, parsed.port or 80, proto=socket.IPPROTO_TCP)
    except socket.gaierror as exc:
        raise FetchError("dns", f"{host}: {exc.strerror or exc}") from None
    for info in infos:
        address = ipaddress.ip_address(info[4][0].split("%", 1)[0])
        if not address.is_global:
            raise FetchError(
                "forbidden_address",
                f"{host} resolves to {address}, not a public address: refused (set "
                "ingestion.allow_private_networks or make it a mirror to allow it)",
            )


def backoff_delay(policy: FetchPolicy, attempt: int, retry_after: str | None = None) -> float:
    """Exponential backoff with jitter; a numeric Retry-After header wins (capped)."""
    if retry_after and retry_after.strip().isdigit():
        return min(float(retry_after), policy.backoff_max_s)
    base = min(policy.backoff_max_s, policy.backoff_s * 2 ** (attempt - 1))
    return base * (0.5 + random.random() / 2)


def fetch(source: str, client: httpx.Client, policy: FetchPolicy) -> tuple[bytes, int]:
    """The bytes at ``source`` (URL or local path) and the number of attempts it took.

    Retries 5xx/408/429, timeouts and connection errors; never other 4xx (a 404 is final).
    """
    if not source.startswith(("http://", "https://")):
        if "://" in source:  # a URL of another scheme (file://...) named by the manifest
            raise FetchError(
                "forbidden_scheme", f"{source.split('://', 1)[0]}:// is not fetched (http, https)"
            )
        return _read_local(source, policy), 1  # a path inside a mirror folder (resolve)
    last: FetchError | None = None
    for attempt in range(1, policy.max_attempts + 1):
        retry_after = None
        try:
            return _get(source, client, policy), attempt
        except httpx.TimeoutException as exc:
            last = FetchError(
                "timeout",
                f"no complete answer from {source} within {policy.read_timeout_s:g} s "
                f"({type(exc).__name__})",
            )
        except httpx.TransportError as exc:
            last = FetchError("connection", f"{source}: {type(exc).__name__}: {exc}")
        except _HTTPStatus as exc:
            if exc.status not in RETRYABLE_STATUS:
                raise FetchError(f"http_{exc.status}", exc.detail, attempt) from None
            last = FetchError(f"http_{exc.status}", exc.detail)
            retry_after = exc.retry_after
        if attempt < policy.max_attempts:
            time.sleep(backoff_delay(policy, attempt, retry_after))
    assert last is not None
    raise FetchError(
        last.reason, f"{last.detail} (gave up after {policy.max_attempts} attempts)", attempt
    )


class _HTTPStatus(Exception):
    def __init__(self, status: int, detail: str, retry_after: str | None) -> None:
        super().__init__(detail)
        self.status, self.detail, self.retry_after = status, detail, retry_after


def _get(url: str, client: httpx.Client, policy: FetchPolicy) -> bytes:
    deadline = time.monotonic() + policy.total_timeout_s
    with client.stream("GET", url) as resp:
        if resp.status_code != 200:
            raise _HTTPStatus(
                resp.status_code,
                f"GET {url} answered {resp.status_code} {resp.reason_phrase}",
                resp.headers.get("retry-after"),
            )
        declared = resp.headers.get("content-length")
        if declared and declared.isdigit() and int(declared) > policy.max_bytes:
            raise FetchError("too_large", f"{url} declares {declared} bytes > {policy.max_bytes}")
        chunks, size = [], 0
        for chunk in resp.iter_bytes():
            if time.monotonic() > deadline:
                raise FetchError(
                    "timeout",
                    f"{url}: {size} bytes after {policy.total_timeout_s:g} s, the whole-download "
                    "deadline (ingestion.total_timeout_s)",
                )
            size += len(chunk)
            if size > policy.max_bytes:
                raise FetchError("too_large", f"{url} sent more than {policy.max_bytes} bytes")
            chunks.append(chunk)
        return b"".join(chunks)


def _read_local(source: str, policy: FetchPolicy) -> bytes:
    path = Path(source)
    if not path.is_file():
        raise FetchError("not_found", f"no file at {path}")
    if path.stat().st_size > policy.max_bytes:
        raise FetchError("too_large", f"{path} is over {policy.max_bytes} bytes")
    return path.read_bytes()


def make_client(
    policy: FetchPolicy, concurrency: int, trusted: tuple[Origin, ...] = ()
) -> httpx.Client:
    """One pooled client; every request it sends, redirect hops included, is checked by
    :func:`check_address` first."""
    timeout = httpx.Timeout(
        policy.read_timeout_s, connect=policy.connect_timeout_s, pool=policy.read_timeout_s * 4
    )
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)

    def check(request: httpx.Request) -> None:
        check_address(str(request.url), policy, trusted)

    return httpx.Client(
        timeout=timeout,
        limits=limits,
        follow_redirects=True,
        max_redirects=5,
        event_hooks={"request": [check]},
        headers={"User-Agent": "plants-mlops-ingestion/0.1"},
    )
