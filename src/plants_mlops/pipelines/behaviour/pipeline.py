"""``kedro run --pipelines behaviour``: the serving model under the task's label-preserving
edits (``task.label_preserving_edits``), on clear cases and on non-plant images ->
``behaviour_report`` (08_reporting), read by the registry gate."""

from kedro.pipeline import Node, Pipeline

from .nodes import measure_behaviour, report_behaviour


def create_pipeline(**kwargs) -> Pipeline:
    return Pipeline(
        [
            Node(
                measure_behaviour,
                [
                    "serving_model",
                    "serving_meta",
                    "dataset_index",
                    "fmt_images",
                    "params:behaviour",
                    "params:task",
                ],
                "behaviour_figures",
                name="measure_behaviour",
            ),
            Node(
                report_behaviour,
                ["behaviour_figures", "training_report", "params:behaviour"],
                ["behaviour_report", "behaviour_summary"],
                name="report_behaviour",
            ),
        ]
    )
