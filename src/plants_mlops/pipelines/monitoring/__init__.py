"""Monitoring: the prediction log's current window vs the reference split (Evidently)."""

from plants_mlops.pipelines.monitoring.pipeline import create_pipeline

__all__ = ["create_pipeline"]
