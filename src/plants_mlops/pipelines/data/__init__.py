"""``data``: ingestion + formatting + curation + validation in one run (``kedro run --pipelines data``).

A folder of its own (not a composition in pipeline_registry.py) because kedro 1.7 imports
only the pipeline folders named on the command line.
"""

from kedro.pipeline import Pipeline

from plants_mlops.pipelines import curation, formatting, ingestion, validation


def create_pipeline(**kwargs) -> Pipeline:
    return (
        ingestion.create_pipeline()
        + formatting.create_pipeline()
        + curation.create_pipeline()
        + validation.create_pipeline()
    )
