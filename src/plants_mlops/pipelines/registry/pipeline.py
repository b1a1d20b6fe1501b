"""``kedro run --pipelines registry``: register the trained model, gate it, move an alias."""

from kedro.pipeline import Node, Pipeline

from .nodes import register_and_gate


def create_pipeline(**kwargs) -> Pipeline:
    return Pipeline(
        [
            Node(
                register_and_gate,
                ["training_report", "evaluation_report", "params:registry", "behaviour_report"],
                ["registry_decision", "registry_summary"],
                name="register_and_gate",
            ),
        ]
    )
