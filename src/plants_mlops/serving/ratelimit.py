"""Requests per client per minute, for the routes a client could flood (``/feedback``).

A sliding window per client address in this worker's memory: with N workers a client gets
up to N times the limit, which is what it is for (a runaway script, not an accounting).
"""

from __future__ import annotations

import threading
import time
from collections import deque

from fastapi import Request

from plants_mlops.serving.errors import ApiError

WINDOW_S = 60.0
MAX_CLIENTS = 10_000  # the least recently seen are forgotten beyond this


class RateLimiter:
    def __init__(self, per_minute: int) -> None:
        self.per_minute = int(per_minute)
        self._seen: dict[str, deque[float]] = {}
        self._lock = threading.Lock()

    def check(self, client: str) -> None:
        """Count a request of ``client``; ApiError 429 with Retry-After past the limit."""
        now = time.monotonic()
        with self._lock:
            times = self._seen.pop(client, None) or deque()
            while times and now - times[0] >= WINDOW_S:
                times.popleft()
            self._seen[client] = times  # most recently seen last
            if len(self._seen) > MAX_CLIENTS:
                self._seen.pop(next(iter(self._seen)))
            if len(times) >= self.per_minute:
                wait = max(1, int(WINDOW_S - (now - times[0])) + 1)
                raise ApiError(
                    429,
                    "rate_limited",
                    f"more than {self.per_minute} requests a minute from {client}; retry in "
                    f"{wait} s",
                    headers={"Retry-After": str(wait)},
                )
            times.append(now)


def client_of(request: Request) -> str:
    return request.client.host if request.client else "unknown"
