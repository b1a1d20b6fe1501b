"""Prometheus metrics of one app instance (own registry: several apps can live in a process).

With several uvicorn workers (``plants-mlops serve --workers N``) the serve command sets
``PROMETHEUS_MULTIPROC_DIR``: every worker writes its values there and ``/metrics``, in
whichever worker answers, reports the sum over the live workers (prometheus_client's
multiprocess mode; gauges say how they combine: ``livemax``, ``livemin``, ``livesum``).
"""

from __future__ import annotations

import glob
import os
from collections.abc import Sequence

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client import generate_latest as _generate_latest

LATENCY_BUCKETS = (0.002, 0.005, 0.01, 0.015, 0.02, 0.03, 0.05, 0.075, 0.1, 0.2, 0.5, 1.0, 2.5)


class ServiceMetrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.requests = Counter(
            "plants_http_requests_total", "HTTP requests", ["method", "route", "status"], registry=r
        )
        self.latency = Histogram(
            "plants_http_request_duration_seconds",
            "HTTP request latency",
            ["route"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.predictions = Counter(
            "plants_predictions_total",
            "Predictions per class",
            ["label", "model_version"],
            registry=r,
        )
        self.inference = Histogram(
            "plants_inference_duration_seconds",
            "Decode + preprocess + model time per image",
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.rejected = Counter(
            "plants_rejected_inputs_total", "Inputs refused, by reason", ["reason"], registry=r
        )
        self.model_info = Gauge(
            "plants_model_version_info",
            "1 for the version being served",
            ["name", "version"],
            registry=r,
            multiprocess_mode="livemax",  # 1 while any worker serves that version
        )
        self.model_loaded = Gauge(
            "plants_model_loaded",
            "1 once a model serves",
            registry=r,
            multiprocess_mode="liveall",  # one value per worker (a pid label)
        )
        self.reload_failures = Counter(
            "plants_model_reload_failures_total",
            "New model versions that failed to load",
            registry=r,
        )
        self.log_pending = Gauge(
            "plants_prediction_log_pending",
            "Records not yet written",
            registry=r,
            multiprocess_mode="livesum",
        )
        self.out_of_distribution = Counter(
            "plants_predictions_out_of_distribution_total",
            "Predictions flagged out of distribution (ood_score above the model's threshold)",
            ["model_version"],
            registry=r,
        )

    def model_swapped(self, name: str, version: str, labels: Sequence[str]) -> None:
        """A model is served: its version's gauge, and a zero per label of the model (its
        task's) before its first prediction."""
        for label in labels:
            self.predictions.labels(label=label, model_version=version)
        if MULTIPROCESS:  # the values live in files: zero the old version, do not forget it
            for labels in list(self.model_info._metrics):
                self.model_info.labels(*labels).set(0)
        else:
            self.model_info.clear()
        self.model_info.labels(name=name, version=version).set(1)
        self.out_of_distribution.labels(model_version=version)  # a zero before any flag
        self.model_loaded.set(1)

    def exposition(self) -> tuple[bytes, str]:
        """The text ``/metrics`` serves: this app's registry, or with several workers the
        values of every live worker combined."""
        if not MULTIPROCESS:
            return _generate_latest(self.registry), CONTENT_TYPE_LATEST
        from prometheus_client import multiprocess

        forget_dead_workers()
        combined = CollectorRegistry()
        multiprocess.MultiProcessCollector(combined)
        return _generate_latest(combined), CONTENT_TYPE_LATEST

    def workers_loaded(self) -> int:
        """How many live workers serve a model (multiprocess mode; else 0 or 1)."""
        if not MULTIPROCESS:
            return int(self.model_loaded._value.get() == 1)
        from prometheus_client import multiprocess

        forget_dead_workers()
        combined = CollectorRegistry()
        multiprocess.MultiProcessCollector(combined)
        return int(combined.get_sample_value("plants_model_loaded") or 0) + sum(
            1
            for metric in combined.collect()
            if metric.name == "plants_model_loaded"
            for sample in metric.samples
            if "pid" in sample.labels and sample.value == 1
        )

    def worker_exiting(self) -> None:
        """Drop this worker's live gauges from the combined values (multiprocess mode)."""
        if MULTIPROCESS:
            from prometheus_client import multiprocess

            multiprocess.mark_process_dead(os.getpid())


def forget_dead_workers() -> None:
    """Drop the live gauges of workers that died without exiting (``kill -9``, the OOM
    killer): the replacement uvicorn starts has another pid, and their files would count
    as a live worker's for good (a model ``/ready`` counts, a version ``/metrics`` shows)."""
    from prometheus_client import multiprocess

    directory = os.environ["PROMETHEUS_MULTIPROC_DIR"]
    for path in glob.glob(os.path.join(directory, "gauge_live*_*.db")):
        pid = int(path.rpartition("_")[2].removesuffix(".db"))
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            multiprocess.mark_process_dead(pid, directory)
        except PermissionError:  # alive, another user's
            continue


# prometheus_client picks file-backed values at import when this is set (serve --workers).
MULTIPROCESS = bool(os.environ.get("PROMETHEUS_MULTIPROC_DIR"))
