"""A real, small ONNX model registered as ``plants-classifier@champion`` on a real MLflow server.

Serving and monitoring tests need a champion before the training/registry stages exist in
this tree (and without spending minutes training). This builds a tiny CNN with a
penultimate embedding, exports it to ONNX exactly as docs/contracts.md says (input
``image``, outputs ``logits`` and ``embedding``), logs it with ``mlflow.onnx.log_model``
under the artifact path ``model`` with ``serving_meta.json`` beside ``model.onnx``,
registers it and points the ``champion`` alias at it.
"""

from __future__ import annotations

import tempfile
from dataclasses import dataclass
from pathlib import Path

from plants_mlops import contracts
from support.params import base_labels

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


@dataclass(frozen=True)
class RegisteredChampion:
    version: str
    run_id: str
    meta: dict


def build_tiny_cnn(seed: int = 0, embedding_dim: int = 32):
    import torch
    from torch import nn

    torch.manual_seed(seed)

    class TinyNet(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.features = nn.Sequential(
                nn.Conv2d(3, 16, 3, stride=2, padding=1),
                nn.ReLU(),
                nn.Conv2d(16, 32, 3, stride=2, padding=1),
                nn.ReLU(),
                nn.Conv2d(32, embedding_dim, 3, stride=2, padding=1),
                nn.ReLU(),
                nn.AdaptiveAvgPool2d(1),
                nn.Flatten(),
            )
            self.head = nn.Linear(embedding_dim, len(base_labels()))

        def forward(self, x):
            emb = self.features(x)
            return self.head(emb), emb

    return TinyNet().eval()


def tiny_cnn_onnx(seed: int = 0, image_size: int = 64) -> bytes:
    """The tiny CNN's serving graph as bytes."""
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "model.onnx"
        export_onnx(build_tiny_cnn(seed), path, image_size)
        return path.read_bytes()


def export_onnx(model, path: Path, image_size: int) -> None:
    import torch

    dummy = torch.zeros(1, 3, image_size, image_size)
    torch.onnx.export(
        model,
        (dummy,),
        str(path),
        input_names=[contracts.ONNX_INPUT],
        output_names=[contracts.ONNX_OUTPUT_LOGITS, contracts.ONNX_OUTPUT_EMBEDDING],
        dynamic_axes={
            contracts.ONNX_INPUT: {0: "batch"},
            contracts.ONNX_OUTPUT_LOGITS: {0: "batch"},
            contracts.ONNX_OUTPUT_EMBEDDING: {0: "batch"},
        },
        opset_version=17,
        dynamo=False,
    )


def serving_meta(
    image_size: int,
    run_id: str | None,
    resize_size: int,
    architecture: str = "tiny-cnn",
    precision: str = "fp32",
) -> dict:
    """Serving meta in the shape training writes (``model/artifact.ServingMeta``)."""
    return {
        "precision": precision,
        "labels": list(base_labels()),
        "image_size": image_size,
        "resize_size": resize_size,
        "mean": list(IMAGENET_MEAN),
        "std": list(IMAGENET_STD),
        "architecture": architecture,
        "dataset_fingerprint": "test-fingerprint-" + architecture,
        "test_metrics": {"accuracy": 0.5, "f1_macro": 0.5},
        "mlflow_run_id": run_id,
    }


def register_champion(
    tracking_uri: str,
    *,
    seed: int = 0,
    image_size: int = 64,
    resize_size: int = 160,
    broken: bool = False,
    set_alias: bool = True,
    experiment: str = "serving-tests",
    name: str = contracts.REGISTERED_MODEL_NAME,
    onnx: bytes | None = None,
    precision: str = "fp32",
) -> RegisteredChampion:
    """Log + register a new version exactly as the training and registry stages do
    (``model/artifact.log_serving_model``, ``model/registry.register_version``) and, by
    default, make it the champion (an audited alias move).

    ``onnx``/``precision``: register this graph (e.g. a static int8 one) instead of the
    tiny CNN. ``broken=True`` registers a valid ONNX graph that breaks the serving contract (for
    the failed-to-load tests); the version is still a real registry entry, logged as a
    plain MLflow artifact because the artifact module refuses to log such a graph.
    """
    from plants_mlops.model import registry, tracking

    cl = tracking.client(tracking_uri)
    logged, meta = log_candidate(
        tracking_uri,
        seed=seed,
        image_size=image_size,
        resize_size=resize_size,
        broken=broken,
        experiment=experiment,
        onnx=onnx,
        precision=precision,
    )
    run_id = logged.run_id
    version = registry.register_version(cl, logged, {"verdict": "pass"}, name)
    if set_alias:
        registry.move_alias(
            cl, contracts.ALIAS_CHAMPION, version, action="test", reason="test setup", name=name
        )
    return RegisteredChampion(version=version, run_id=run_id, meta=meta)


def log_candidate(
    tracking_uri: str,
    *,
    seed: int = 0,
    image_size: int = 64,
    resize_size: int = 160,
    broken: bool = False,
    experiment: str = "serving-tests",
    onnx: bytes | None = None,
    architecture: str = "tiny-cnn",
    precision: str = "fp32",
):
    """A finished MLflow run with a logged (not registered) serving model, as the training
    stage leaves it; returns (LoggedArtifact, serving meta). ``onnx``: log this serving
    graph (of ``architecture``, in ``precision``) instead of the tiny CNN."""
    from plants_mlops.model import artifact, tracking

    cl = tracking.client(tracking_uri)
    run = cl.create_run(tracking.experiment_id(cl, experiment))
    run_id = run.info.run_id
    meta = serving_meta(image_size, run_id, resize_size, architecture, precision)
    tracking.Run(cl, run_id, run.info.experiment_id).log_metrics(
        {f"test_{k}": v for k, v in meta["test_metrics"].items()}
    )
    with tempfile.TemporaryDirectory() as tmp:
        onnx_path = Path(tmp) / "model.onnx"
        if onnx is None:
            export_onnx(build_tiny_cnn(seed), onnx_path, image_size)
        else:
            onnx_path.write_bytes(onnx)
        if broken:
            logged = _log_broken(cl, run_id, meta)
        else:
            logged = artifact.log_serving_model(cl, run_id, onnx_path.read_bytes(), meta)
    cl.set_terminated(run_id, "FINISHED")
    return logged, meta


def _log_broken(cl, run_id: str, meta: dict):
    """A logged model folder whose graph breaks the serving contract."""
    import json

    import onnx

    from plants_mlops.model import artifact

    logged = cl.create_logged_model(
        experiment_id=cl.get_run(run_id).info.experiment_id,
        name=artifact.ARTIFACT_NAME,
        source_run_id=run_id,
    )
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        onnx.save(_contract_breaking_model(), str(folder / artifact.ONNX_FILE))
        (folder / artifact.META_FILE).write_text(json.dumps(meta))
        cl.log_model_artifacts(logged.model_id, str(folder))
    return artifact.LoggedArtifact(
        logged.model_id, f"models:/{logged.model_id}", run_id, logged.artifact_location
    )


def _contract_breaking_model():
    """A syntactically valid ONNX graph whose outputs do not follow the serving contract."""
    from onnx import TensorProto, helper

    inp = helper.make_tensor_value_info("wrong_input", TensorProto.FLOAT, [None, 3])
    out = helper.make_tensor_value_info("wrong_output", TensorProto.FLOAT, [None, 3])
    graph = helper.make_graph(
        [helper.make_node("Identity", ["wrong_input"], ["wrong_output"])], "broken", [inp], [out]
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def set_champion(
    tracking_uri: str, version: str, name: str = contracts.REGISTERED_MODEL_NAME
) -> None:
    from mlflow import MlflowClient

    MlflowClient(tracking_uri).set_registered_model_alias(name, contracts.ALIAS_CHAMPION, version)


def unique_model_name(prefix: str = "plants-classifier-test") -> str:
    """Tests register under their own name so no other test's champion moves under them."""
    import uuid

    return f"{prefix}-{uuid.uuid4().hex[:8]}"
