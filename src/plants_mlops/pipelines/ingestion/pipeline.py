from kedro.pipeline import Pipeline, node

from plants_mlops.pipelines.ingestion.nodes import ingest_images, summarize_ingestion


def create_pipeline(**kwargs) -> Pipeline:
    return Pipeline(
        [
            node(
                ingest_images,
                inputs=["plants_data", "raw_inventory", "params:ingestion"],
                outputs=["raw_images", "plants_data_updates", "ingestion_report"],
                name="ingest_images",
            ),
            node(
                summarize_ingestion,
                inputs="ingestion_report",
                outputs="ingestion_summary",
                name="summarize_ingestion",
            ),
        ]
    )
