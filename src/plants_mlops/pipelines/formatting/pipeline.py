from kedro.pipeline import Pipeline, node

from plants_mlops.pipelines.formatting.nodes import (
    build_dataset_index,
    format_new_images,
    summarize_formatting,
)


def create_pipeline(**kwargs) -> Pipeline:
    return Pipeline(
        [
            node(
                format_new_images,
                inputs=[
                    "raw_images",
                    "plants_data",
                    "fmt_inventory",
                    "fmt_index_previous",
                    "params:formatting",
                    "data_decisions",
                ],
                outputs=["fmt_images", "fmt_index", "fmt_report"],
                name="format_images",
            ),
            node(
                build_dataset_index,
                inputs=[
                    "fmt_index",
                    "fmt_report",
                    "params:formatting",
                    "params:task",
                ],
                outputs=["dataset_index", "dataset_fingerprint", "formatting_report"],
                name="build_dataset_index",
            ),
            node(
                summarize_formatting,
                inputs=["formatting_report", "dataset_fingerprint"],
                outputs="formatting_summary",
                name="summarize_formatting",
            ),
        ]
    )
