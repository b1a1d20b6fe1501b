"""Ingestion: plants_data URLs -> original image bytes in 01_raw (content-addressed)."""

from plants_mlops.pipelines.ingestion.pipeline import create_pipeline

__all__ = ["create_pipeline"]
