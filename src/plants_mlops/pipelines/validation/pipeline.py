from kedro.pipeline import Pipeline, node

from plants_mlops.pipelines.validation.nodes import (
    enforce_validation,
    summarize_validation,
    validate_and_report,
)


def create_pipeline(**kwargs) -> Pipeline:
    return Pipeline(
        [
            node(
                validate_and_report,
                inputs=[
                    "plants_data",
                    "fmt_index",
                    "dataset_index",
                    "params:validation",
                    "params:formatting",
                    "curation_near_duplicates",
                ],
                outputs=["validation_report", "validation_report_html", "validation_results"],
                name="validate_data",
            ),
            # A second node, so the report is saved before a failure stops the run.
            node(
                enforce_validation,
                inputs=["validation_results", "dataset_fingerprint"],
                outputs="validation_passed",
                name="enforce_validation",
            ),
            node(
                summarize_validation,
                inputs=["validation_passed", "validation_results"],
                outputs="validation_summary",
                name="summarize_validation",
            ),
        ]
    )
