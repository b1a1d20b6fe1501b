"""Validation: Pandera schemas and dataset-level rules on plants_data and both indexes."""

from plants_mlops.pipelines.validation.pipeline import create_pipeline

__all__ = ["create_pipeline"]
