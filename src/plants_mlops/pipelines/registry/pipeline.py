"""``kedro run --pipelines registry``: register the trained model, gate it, move an alias,
write the version's model card."""

from kedro.pipeline import Node, Pipeline

from .card import write_model_card
from .nodes import register_and_gate


def create_pipeline(**kwargs) -> Pipeline:
    return Pipeline(
        [
            Node(
                register_and_gate,
                [
                    "training_report",
                    "evaluation_report",
                    "params:registry",
                    "behaviour_report",
                    "params:task",
                ],
                ["registry_decision", "registry_summary"],
                name="register_and_gate",
            ),
            Node(
                write_model_card,
                [
                    "registry_decision",
                    "training_report",
                    "evaluation_report",
                    "serving_model",
                    "serving_meta",
                    "dataset_index",
                    "fmt_images",
                    "dataset_fingerprint",
                    "formatting_report",
                    "data_decisions",
                    "behaviour_report",
                    "params:model_card",
                    "params:registry",
                    "params:task",
                ],
                ["model_card_md", "model_card_html", "model_card"],
                name="write_model_card",
            ),
        ]
    )
