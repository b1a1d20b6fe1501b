"""Log an ONNX serving model in the layout the API loads (docs/contracts.md).

The training stage logs its models the same way; tests and benchmarks use this to register
models without training: ``mlflow.onnx.log_model`` under ``model`` with the serving meta as
the MLflow model's ``metadata`` and as ``serving_meta.json`` at the root of the model folder.
"""

from __future__ import annotations

import json
import tempfile
from pathlib import Path
from typing import Any


def log_serving_model(onnx_model, meta: dict[str, Any]):
    """Inside an active MLflow run; returns mlflow's ModelInfo (``.model_uri``)."""
    import mlflow

    info = mlflow.onnx.log_model(
        onnx_model, name="model", metadata=meta, save_as_external_data=False
    )
    with tempfile.TemporaryDirectory() as tmp:
        meta_path = Path(tmp) / "serving_meta.json"
        meta_path.write_text(json.dumps(meta, indent=2, sort_keys=True))
        mlflow.MlflowClient().log_model_artifact(info.model_id, str(meta_path))
    return info


def register_as_champion(tracking_uri: str, model_uri: str, name: str, alias: str) -> str:
    """Register ``model_uri`` as a new version of ``name`` and point ``alias`` at it."""
    import mlflow

    # mlflow.register_model talks to the process-wide registry URI, which an earlier caller
    # may have pointed elsewhere: point this process at `tracking_uri` for both.
    mlflow.set_tracking_uri(tracking_uri)
    mlflow.set_registry_uri(tracking_uri)
    version = str(mlflow.register_model(model_uri, name).version)
    client = mlflow.MlflowClient(tracking_uri, registry_uri=tracking_uri)
    client.set_registered_model_alias(name, alias, version)
    return version
