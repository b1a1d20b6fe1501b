"""Prometheus metrics of one app instance (own registry: several apps can live in a process)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from plants_mlops import contracts

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
        )
        self.model_loaded = Gauge("plants_model_loaded", "1 once a model serves", registry=r)
        self.reload_failures = Counter(
            "plants_model_reload_failures_total",
            "New model versions that failed to load",
            registry=r,
        )
        self.log_pending = Gauge(
            "plants_prediction_log_pending", "Records not yet written", registry=r
        )
        for label in contracts.LABELS:  # expose zeroes before the first prediction
            self.predictions.labels(label=label, model_version="none")

    def model_swapped(self, name: str, version: str) -> None:
        self.model_info.clear()
        self.model_info.labels(name=name, version=version).set(1)
        self.model_loaded.set(1)
