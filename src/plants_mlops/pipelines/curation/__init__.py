"""``curation``: near-duplicates, label issues, off-topic images, the review queue."""

from plants_mlops.pipelines.curation.pipeline import create_pipeline

__all__ = ["create_pipeline"]
