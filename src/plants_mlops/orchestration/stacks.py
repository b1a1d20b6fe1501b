"""The project's ZenML stacks as code: ``local``, ``minio`` and ``gpu``.

Registering is idempotent: components and stacks that exist are updated to the
configuration below, then the stack is activated. Endpoints and keys come from the
environment (see docs/zenml.md); keys go into ZenML secrets, never into a component's
plain configuration or into git.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from plants_mlops.contracts import MLFLOW_SECRET, S3_SECRET, STACK_NAMES
from plants_mlops.errors import UserFacingError
from plants_mlops.orchestration.gpu import orchestrator_config
from plants_mlops.orchestration.pipeline import GPU_LABEL, KEDRO_ENV_LABEL
from plants_mlops.project import PROJECT_LABEL

log = logging.getLogger(__name__)


@dataclass
class Component:
    type: str  # a zenml StackComponentType value
    name: str
    flavor: str
    config: dict[str, Any] = field(default_factory=dict)


@dataclass
class StackSpec:
    name: str
    kedro_env: str
    components: list[Component]
    secrets: dict[str, dict[str, str]] = field(default_factory=dict)
    gpu: bool = False
    notes: list[str] = field(default_factory=list)


# What each stack cannot be registered without (its keys go into ZenML secrets).
REQUIRED_ENV = {
    "local": (),
    "minio": (
        "PLANTS_S3_ENDPOINT_URL",
        "AWS_ACCESS_KEY_ID",
        "AWS_SECRET_ACCESS_KEY",
        "MLFLOW_TRACKING_URI",
    ),
}
REQUIRED_ENV["gpu"] = (*REQUIRED_ENV["minio"], "PLANTS_KUBE_CONTEXT", "PLANTS_CONTAINER_REGISTRY")


def _require(stack: str) -> None:
    """Every variable the stack needs and lacks, named at once."""
    missing = [name for name in REQUIRED_ENV.get(stack, ()) if not os.environ.get(name)]
    if missing:
        raise UserFacingError(
            f"set {', '.join(missing)} to register the `{stack}` stack (see docs/zenml.md)"
        )


def _env(name: str, default: str | None = None) -> str:
    return os.environ.get(name, default) or ""


def _mlflow_components(stack: str, uri: str) -> list[Component]:
    config: dict[str, Any] = {"tracking_uri": uri}
    if uri.startswith(("http://", "https://")):
        # ZenML demands credentials for a tracking server even when it has none; the
        # values live in a secret (dummy ones unless MLFLOW_TRACKING_USERNAME is set).
        config["tracking_username"] = f"{{{{{MLFLOW_SECRET}.username}}}}"
        config["tracking_password"] = f"{{{{{MLFLOW_SECRET}.password}}}}"
    return [
        Component("experiment_tracker", f"plants-mlflow-{stack}", "mlflow", config),
        Component("model_registry", f"plants-mlflow-registry-{stack}", "mlflow", {}),
    ]


def _s3_artifact_store() -> tuple[Component, dict[str, str]]:
    endpoint = _env("PLANTS_S3_ENDPOINT_URL")
    bucket = os.environ.get("PLANTS_ZENML_BUCKET") or os.environ.get(
        "PLANTS_S3_BUCKET", "plants-mlops"
    )
    secret = {
        "aws_access_key_id": _env("AWS_ACCESS_KEY_ID"),
        "aws_secret_access_key": _env("AWS_SECRET_ACCESS_KEY"),
    }
    store = Component(
        "artifact_store",
        "plants-s3-store",
        "s3",
        {
            "path": f"s3://{bucket}/zenml",
            "key": f"{{{{{S3_SECRET}.aws_access_key_id}}}}",
            "secret": f"{{{{{S3_SECRET}.aws_secret_access_key}}}}",
            "client_kwargs": {"endpoint_url": endpoint},
        },
    )
    return store, secret


def _remote_tracking_uri(stack: str) -> str:
    uri = _env("MLFLOW_TRACKING_URI")
    if not uri.startswith(("http://", "https://")):
        raise UserFacingError(
            f"the `{stack}` stack needs an MLflow tracking server: "
            f"MLFLOW_TRACKING_URI={uri!r} is not http(s)"
        )
    return uri


def _mlflow_secret() -> dict[str, str]:
    return {
        "username": os.environ.get("MLFLOW_TRACKING_USERNAME", "plants"),
        "password": os.environ.get("MLFLOW_TRACKING_PASSWORD", "plants"),
    }


def stack_spec(name: str, project: Path) -> StackSpec:
    """The components, secrets and labels of stack ``name`` from the current environment."""
    _require(name)
    if name == "local":
        uri = os.environ.get("MLFLOW_TRACKING_URI") or f"sqlite:///{project / 'data/mlflow.db'}"
        return StackSpec(
            "local",
            "local",
            [
                Component("orchestrator", "plants-local", "local"),
                Component("artifact_store", "plants-local-store", "local"),
                *_mlflow_components("local", uri),
            ],
        )
    if name == "minio":
        store, s3_secret = _s3_artifact_store()
        return StackSpec(
            "minio",
            "minio",
            [
                Component("orchestrator", "plants-local", "local"),
                store,
                *_mlflow_components("server", _remote_tracking_uri("minio")),
            ],
            secrets={S3_SECRET: s3_secret, MLFLOW_SECRET: _mlflow_secret()},
        )
    if name == "gpu":
        store, s3_secret = _s3_artifact_store()
        context = _env("PLANTS_KUBE_CONTEXT")
        registry = _env("PLANTS_CONTAINER_REGISTRY")
        return StackSpec(
            "gpu",
            "minio",
            [
                Component(
                    "orchestrator",
                    "plants-kubernetes",
                    "kubernetes",
                    {
                        "kubernetes_context": context,
                        "kubernetes_namespace": os.environ.get(
                            "PLANTS_KUBE_NAMESPACE", "plants-mlops"
                        ),
                        **orchestrator_config(),
                    },
                ),
                Component("container_registry", "plants-registry", "default", {"uri": registry}),
                Component("image_builder", "plants-image-builder", "local"),
                store,
                *_mlflow_components("server", _remote_tracking_uri("gpu")),
            ],
            secrets={S3_SECRET: s3_secret, MLFLOW_SECRET: _mlflow_secret()},
            gpu=True,
            notes=[
                "training runs in a Kubernetes pod with ResourceSettings(gpu_count=1); "
                "the cluster needs the NVIDIA device plugin and access to the registry"
            ],
        )
    raise UserFacingError(f"unknown stack {name!r}; choose from {list(STACK_NAMES)}")


def init_bucket_for(store: Component) -> None:
    from plants_mlops.storage import StorageSettings, init_bucket

    bucket = store.config["path"].removeprefix("s3://").split("/", 1)[0]
    for line in init_bucket(StorageSettings.from_env(bucket=bucket)).lines():
        log.info(line)


def register_stack(name: str, project: Path, activate: bool = True) -> StackSpec:
    """Create or update the stack's secrets, components and the stack; activate it."""
    from zenml.client import Client
    from zenml.enums import StackComponentType
    from zenml.exceptions import EntityExistsError

    spec = stack_spec(name, project)
    if name == "minio":  # its bucket exists, versioned, before a run writes to it
        init_bucket_for(next(c for c in spec.components if c.type == "artifact_store"))
    client = Client()
    for secret_name, values in spec.secrets.items():
        try:
            client.get_secret(secret_name)
            client.update_secret(secret_name, add_or_update_values=values)
        except KeyError:
            client.create_secret(secret_name, values=values)
    components: dict[StackComponentType, str] = {}
    for comp in spec.components:
        ctype = StackComponentType(comp.type)
        try:
            existing = client.get_stack_component(ctype, comp.name, allow_name_prefix_match=False)
        except KeyError:
            existing = None
        if existing is None:
            client.create_stack_component(comp.name, comp.flavor, ctype, comp.config)
        elif existing.flavor_name != comp.flavor:
            raise UserFacingError(
                f"component {comp.name} exists with flavor "
                f"{existing.flavor_name}, not {comp.flavor}: delete it first"
            )
        else:
            client.update_stack_component(comp.name, ctype, configuration=comp.config)
        components[ctype] = comp.name
    labels = {
        KEDRO_ENV_LABEL: spec.kedro_env,
        GPU_LABEL: str(spec.gpu).lower(),
        PROJECT_LABEL: str(project.resolve()),
    }
    try:
        existing_stack = client.get_stack(spec.name, allow_name_prefix_match=False)
    except KeyError:
        existing_stack = None
    if existing_stack is None:
        try:
            client.create_stack(spec.name, components=components, labels=labels)
        except EntityExistsError:  # a concurrent registration won the race
            client.update_stack(spec.name, component_updates=components, labels=labels)
    else:
        client.update_stack(spec.name, component_updates=components, labels=labels)
    if activate:
        client.activate_stack(spec.name)
    return spec


def validate_stack(name: str) -> str | None:
    """Run ZenML's own stack validation locally (no cluster contacted); the problem or None."""
    from zenml.client import Client
    from zenml.stack import Stack

    try:
        Stack.from_model(Client().get_stack(name, allow_name_prefix_match=False)).validate()
    except Exception as exc:  # ZenML raises several types; the message is what matters
        return f"{type(exc).__name__}: {exc}"
    return None


def list_stacks() -> list[dict[str, Any]]:
    from zenml.client import Client
    from zenml.enums import StackComponentType

    client = Client()
    active = client.active_stack_model.id
    rows = []
    for stack in client.list_stacks(size=100).items:
        stores = {}
        for ctype, key in (("experiment_tracker", "tracking_uri"), ("artifact_store", "path")):
            for comp in stack.components.get(StackComponentType(ctype), []):
                stores[ctype] = comp.configuration.get(key, "")
        rows.append(
            {
                "name": stack.name,
                "active": stack.id == active,
                "kedro_env": (stack.labels or {}).get(KEDRO_ENV_LABEL, ""),
                "project": (stack.labels or {}).get(PROJECT_LABEL, ""),
                "components": {t.value: [c.name for c in cs] for t, cs in stack.components.items()},
                "stores": stores,
            }
        )
    return rows
