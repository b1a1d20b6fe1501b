from kedro.pipeline import Pipeline, node

from plants_mlops.pipelines.validation.nodes import enforce_validation, validate_data


def create_pipeline(**kwargs) -> Pipeline:
    return Pipeline(
        [
            node(
                validate_data,
                inputs=[
                    "plants_data",
                    "fmt_index",
                    "dataset_index",
                    "params:validation",
                    "params:formatting",
                ],
                outputs="validation_report",
                name="validate_data",
            ),
            # A second node, so the report is saved before a failure stops the run.
            node(
                enforce_validation,
                inputs=["validation_report", "dataset_fingerprint"],
                outputs="validation_passed",
                name="enforce_validation",
            ),
        ]
    )
