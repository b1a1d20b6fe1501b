"""``kedro run --pipelines evaluation``: the ONNX model vs baselines vs the champion on the
test split -> ``evaluation_report`` (08_reporting)."""

from kedro.pipeline import Node, Pipeline

from .nodes import compile_report, evaluate_baselines, evaluate_candidate, evaluate_champion

SUBSET = "params:evaluation.subset"


def create_pipeline(**kwargs) -> Pipeline:
    return Pipeline(
        [
            Node(
                evaluate_candidate,
                ["serving_model", "serving_meta", "dataset_index", "fmt_images", SUBSET],
                "evaluation_candidate",
                name="evaluate_candidate",
            ),
            Node(
                evaluate_baselines,
                [
                    "serving_meta",
                    "dataset_index",
                    "fmt_images",
                    "params:evaluation.baselines",
                    SUBSET,
                ],
                "evaluation_baselines",
                name="evaluate_baselines",
            ),
            Node(
                evaluate_champion,
                ["serving_meta", "dataset_index", "fmt_images", "params:evaluation", SUBSET],
                "evaluation_champion",
                name="evaluate_champion",
            ),
            Node(
                compile_report,
                [
                    "evaluation_candidate",
                    "evaluation_baselines",
                    "evaluation_champion",
                    "training_report",
                    "params:evaluation",
                ],
                ["evaluation_report", "evaluation_report_html", "evaluation_summary"],
                name="compile_evaluation_report",
            ),
        ]
    )
