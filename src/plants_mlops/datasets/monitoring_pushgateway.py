"""``PushgatewayDataset``: gauges pushed to a Prometheus Pushgateway, write-only.

Why a dataset: the monitoring pipeline is a batch run, which Prometheus cannot scrape; its
verdict and drift scores go to a Pushgateway that Prometheus scrapes, so that a drift
verdict raises the ``PlantsDriftDetected`` alert (deploy/prometheus/rules/alerts.yml).
Pushing is I/O, so it lives here and the node that builds the gauges stays pure.

The data is a mapping ``{metric name: {"help": str, "samples": [{"labels": {...},
"value": float}, ...]}}``. A save replaces every metric of the dataset's job on the
gateway (``push_to_gateway``, HTTP PUT): a verdict never mixes with the previous run's.
With no ``gateway`` (the default: ``PLANTS_PUSHGATEWAY_URL`` unset) nothing is pushed.
"""

from __future__ import annotations

import logging
from typing import Any

from kedro.io.core import AbstractDataset, DatasetError

log = logging.getLogger(__name__)


class PushgatewayDataset(AbstractDataset[dict[str, Any], dict[str, Any]]):
    """Example catalog entry::

    monitoring_metrics:
      type: plants_mlops.datasets.monitoring_pushgateway.PushgatewayDataset
      gateway: ${oc.env:PLANTS_PUSHGATEWAY_URL,null}
      job: plants-monitoring
    """

    def __init__(
        self,
        *,
        gateway: str | None = None,
        job: str = "plants-monitoring",
        grouping_key: dict[str, str] | None = None,
        timeout: float = 10.0,
        metadata: dict[str, Any] | None = None,
    ) -> None:
        self._gateway = gateway or None
        self._job = job
        self._grouping_key = dict(grouping_key or {})
        self._timeout = timeout
        self.metadata = metadata

    def _describe(self) -> dict[str, Any]:
        return {"gateway": self._gateway, "job": self._job, "grouping_key": self._grouping_key}

    def load(self) -> dict[str, Any]:
        raise DatasetError("PushgatewayDataset is write-only: query Prometheus instead")

    def save(self, data: dict[str, Any]) -> None:
        if not self._gateway:
            log.info("no Pushgateway configured (PLANTS_PUSHGATEWAY_URL): metrics not pushed")
            return
        from prometheus_client import CollectorRegistry, Gauge, push_to_gateway

        registry = CollectorRegistry()
        for name, spec in data.items():
            samples = spec.get("samples") or []
            labelnames = sorted({k for s in samples for k in (s.get("labels") or {})})
            gauge = Gauge(name, spec.get("help") or name, labelnames, registry=registry)
            for sample in samples:
                labels = sample.get("labels") or {}
                value = float(sample["value"])
                if labelnames:
                    gauge.labels(**{k: str(labels.get(k, "")) for k in labelnames}).set(value)
                else:
                    gauge.set(value)
        try:
            push_to_gateway(
                self._gateway,
                job=self._job,
                registry=registry,
                grouping_key=self._grouping_key,
                timeout=self._timeout,
            )
        except OSError as exc:  # URLError, connection refused, timeout
            raise DatasetError(f"cannot push to the Pushgateway {self._gateway}: {exc}") from exc
        log.info("pushed %d metric(s) to %s (job %s)", len(data), self._gateway, self._job)
