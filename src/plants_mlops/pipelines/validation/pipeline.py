from kedro.pipeline import Pipeline, node

from plants_mlops.memory import RETURN_MEMORY
from plants_mlops.pipelines.validation.nodes import (
    check_dataset_index,
    check_fmt_index,
    check_table,
    enforce_validation,
    summarize_validation,
    validate_and_report,
)


def create_pipeline(**kwargs) -> Pipeline:
    # One node per dataset, so that the table and the two indexes are never in memory
    # together (each is loaded for its node and freed after it); the report node then
    # gets only their checks. Tagged RETURN_MEMORY: the frames' buffers go back to the OS
    # when a node frees them (plants_mlops/memory.py).
    return Pipeline(
        [
            node(
                check_fmt_index,
                inputs=["fmt_index", "params:validation", "params:formatting", "params:task"],
                outputs=["validation_fmt_index_checks", "validation_formatted_keys"],
                name="check_fmt_index",
                tags=[RETURN_MEMORY],
            ),
            node(
                check_table,
                inputs=[
                    "plants_data",
                    "validation_formatted_keys",
                    "params:validation",
                    "params:task",
                ],
                outputs="validation_table_checks",
                name="check_table",
                tags=[RETURN_MEMORY],
            ),
            node(
                check_dataset_index,
                inputs=[
                    "dataset_index",
                    "params:validation",
                    "params:formatting",
                    "params:task",
                    "curation_near_duplicates",
                ],
                outputs="validation_dataset_index_checks",
                name="check_dataset_index",
                tags=[RETURN_MEMORY],
            ),
            node(
                validate_and_report,
                inputs=[
                    "validation_table_checks",
                    "validation_fmt_index_checks",
                    "validation_dataset_index_checks",
                    "params:validation",
                    "params:formatting",
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
