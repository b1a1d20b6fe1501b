"""``kedro run --pipelines training``: dataset index + fmt images -> checkpoint, float ONNX
export, the serving model in its chosen precision (fp32 or int8), serving metadata and an
MLflow run (see docs/model.md)."""

from kedro.pipeline import Node, Pipeline

from .nodes import (
    attach_ood_detector,
    choose_serving_precision,
    export_serving_model,
    log_training_run,
    require_valid_data,
    train_model,
)


def create_pipeline(**kwargs) -> Pipeline:
    return Pipeline(
        [
            Node(
                require_valid_data,
                inputs=["validation_passed", "dataset_fingerprint", "dataset_index", "fmt_images"],
                outputs="validated_dataset_index",
                name="require_valid_data",
            ),
            Node(
                train_model,
                inputs=[
                    "validated_dataset_index",
                    "fmt_images",
                    "params:training",
                    "dataset_fingerprint",
                    "params:task",
                ],
                outputs=["model_checkpoint", "training_history"],
                name="train_model",
            ),
            Node(
                export_serving_model,
                inputs=["model_checkpoint", "params:training"],
                outputs="float_serving_model",
                name="export_serving_model",
            ),
            Node(
                choose_serving_precision,
                inputs=[
                    "float_serving_model",
                    "training_history",
                    "validated_dataset_index",
                    "fmt_images",
                    "params:training",
                ],
                outputs=["precision_model", "serving_precision"],
                name="choose_serving_precision",
            ),
            Node(
                attach_ood_detector,
                inputs=[
                    "precision_model",
                    "training_history",
                    "validated_dataset_index",
                    "fmt_images",
                    "params:training",
                    "params:task",
                ],
                outputs=["serving_model", "ood_detector"],
                name="attach_ood_detector",
            ),
            Node(
                log_training_run,
                inputs=[
                    "model_checkpoint",
                    "serving_model",
                    "training_history",
                    "dataset_index",
                    "fmt_images",
                    "dataset_fingerprint",
                    "params:training",
                    "serving_precision",
                    "ood_detector",
                ],
                outputs=["serving_meta", "training_report", "training_summary"],
                name="log_training_run",
            ),
        ]
    )
