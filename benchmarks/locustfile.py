"""Bounded Locust load on a local prediction API (127.0.0.1 only).

Start the API (``plants-mlops serve``), then:

    .venv/bin/locust -f benchmarks/locustfile.py --headless -u 8 -r 8 -t 30s \
        --host http://127.0.0.1:8000

Users upload the sample JPEGs to ``POST /predict`` (9 in 10 requests) and
``POST /predict/batch`` with 4 images (1 in 10), and read ``/ready`` now and then. The
run is bounded by ``-t``; the host must be a loopback address.
"""

from __future__ import annotations

import itertools
import random
from pathlib import Path
from urllib.parse import urlparse

from locust import HttpUser, constant, events, task

SAMPLES = Path(__file__).resolve().parents[1] / "samples" / "plants"
IMAGES = [(p.name, p.read_bytes()) for p in sorted(SAMPLES.glob("*/*.jpg"))]


@events.init.add_listener
def _only_loopback(environment, **_kwargs) -> None:
    host = urlparse(environment.host or "").hostname
    if host not in ("127.0.0.1", "localhost", "::1"):
        raise SystemExit(f"locustfile: refusing to load {environment.host!r}; use 127.0.0.1")


class PredictUser(HttpUser):
    wait_time = constant(0)

    def on_start(self) -> None:
        self._images = itertools.cycle(random.sample(IMAGES, len(IMAGES)))

    @task(9)
    def predict(self) -> None:
        name, data = next(self._images)
        with self.client.post(
            "/predict",
            files={"file": (name, data, "image/jpeg")},
            name="/predict",
            catch_response=True,
        ) as r:
            if r.status_code != 200 or "label" not in r.json():
                r.failure(f"{r.status_code}: {r.text[:200]}")

    @task(1)
    def predict_batch(self) -> None:
        files = [("files", (n, d, "image/jpeg")) for n, d in itertools.islice(self._images, 4)]
        with self.client.post(
            "/predict/batch", files=files, name="/predict/batch", catch_response=True
        ) as r:
            if r.status_code != 200 or r.json().get("failed"):
                r.failure(f"{r.status_code}: {r.text[:200]}")

    @task(1)
    def ready(self) -> None:
        self.client.get("/ready", name="/ready")
