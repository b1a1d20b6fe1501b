"""Formatting: raw -> fmt images + fmt index -> dataset index (split) + fingerprint."""

from plants_mlops.pipelines.formatting.pipeline import create_pipeline

__all__ = ["create_pipeline"]
