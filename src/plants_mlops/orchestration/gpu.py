"""What the ``gpu`` stack asks Kubernetes for, as ZenML settings, and the manifests ZenML's
Kubernetes orchestrator builds from them, rendered offline (no cluster, no image build).

ZenML 0.98's Kubernetes orchestrator ignores ``ResourceSettings`` on a step ("Specifying
step resources is not yet supported for the Kubernetes orchestrator"; only resource pools
translate them): a GPU has to be asked for in the step's ``KubernetesPodSettings``. The
training step therefore gets both: ``ResourceSettings(gpu_count=1)`` for orchestrators that
read it, and pod settings with ``nvidia.com/gpu: 1``, a node selector and a toleration for
this one.

Every step pod (not only training) reads the object store and MLflow: their credentials
come from the Kubernetes secrets ``plants-s3`` and ``plants-mlflow`` as environment
variables (``valueFrom.secretKeyRef``), never as values in a manifest or a ZenML config.
"""

from __future__ import annotations

import os
import uuid
from typing import Any

from plants_mlops.contracts import MLFLOW_SECRET, S3_SECRET

# Kubernetes secrets in the pipeline's namespace (docs/deploy.md creates them), keyed as
# the ZenML secrets of the same names (orchestration/stacks.py).
SECRET_ENV = (
    ("AWS_ACCESS_KEY_ID", S3_SECRET, "aws_access_key_id"),
    ("AWS_SECRET_ACCESS_KEY", S3_SECRET, "aws_secret_access_key"),
    ("MLFLOW_TRACKING_USERNAME", MLFLOW_SECRET, "username"),
    ("MLFLOW_TRACKING_PASSWORD", MLFLOW_SECRET, "password"),
)
# NVIDIA's GPU feature discovery labels GPU nodes so; GPU node pools are usually tainted
# with the resource name. Both can be changed per cluster (deploy/k8s/overlays/gpu).
DEFAULT_NODE_SELECTOR = "nvidia.com/gpu.present=true"
DEFAULT_TOLERATION = "nvidia.com/gpu"
TRAINING_RESOURCES = {
    "requests": {"cpu": "2", "memory": "6Gi", "nvidia.com/gpu": "1"},
    "limits": {"memory": "12Gi", "nvidia.com/gpu": "1"},
}
TRAINING_STEP = "training"
# The label every pod ZenML starts here carries: the gpu overlay's NetworkPolicies select
# it (deploy/k8s/overlays/gpu/network-policies-gpu.yaml).
POD_LABELS = {"app.kubernetes.io/name": "zenml-pipeline"}


def secret_env() -> list[dict[str, Any]]:
    """Container env entries that read the credentials from the Kubernetes secrets."""
    return [
        {"name": name, "valueFrom": {"secretKeyRef": {"name": secret, "key": key}}}
        for name, secret, key in SECRET_ENV
    ]


def node_selector() -> dict[str, str]:
    """``PLANTS_GPU_NODE_SELECTOR`` (``key=value[,key=value]``) as a dict."""
    raw = os.environ.get("PLANTS_GPU_NODE_SELECTOR") or DEFAULT_NODE_SELECTOR
    pairs = (item.partition("=") for item in raw.split(",") if item.strip())
    return {k.strip(): v.strip() for k, _, v in pairs}


def tolerations() -> list[dict[str, str]]:
    key = os.environ.get("PLANTS_GPU_TOLERATION") or DEFAULT_TOLERATION
    return [{"key": key, "operator": "Exists", "effect": "NoSchedule"}]


def service_account() -> str | None:
    """The service account the orchestrator pod runs as (it creates the step pods)."""
    return os.environ.get("PLANTS_KUBE_SERVICE_ACCOUNT") or None


def orchestrator_config() -> dict[str, Any]:
    """Component-level settings of the ``gpu`` stack's Kubernetes orchestrator: every pod
    it starts gets the secrets' env; the orchestrator pod runs as the service account."""
    config: dict[str, Any] = {"pod_settings": {"env": secret_env(), "labels": POD_LABELS}}
    if service_account():
        config["service_account_name"] = service_account()
    return config


def training_pod_settings():
    """The training step's pod: one GPU, on a GPU node, with the secrets' env."""
    from zenml.integrations.kubernetes.pod_settings import KubernetesPodSettings

    return KubernetesPodSettings(
        node_selectors=node_selector(),
        tolerations=tolerations(),
        resources=TRAINING_RESOURCES,
        env=secret_env(),
        labels=POD_LABELS,
    )


def training_step_settings() -> dict[str, Any]:
    """ZenML ``settings`` for the training step on the ``gpu`` stack."""
    from zenml.config import ResourceSettings
    from zenml.integrations.kubernetes.flavors.kubernetes_orchestrator_flavor import (
        KubernetesOrchestratorSettings,
    )

    return {
        "resources": ResourceSettings(gpu_count=1),
        "orchestrator": KubernetesOrchestratorSettings(
            pod_settings=training_pod_settings(), service_account_name=service_account()
        ),
    }


def _serialise(obj: Any) -> dict[str, Any]:
    from kubernetes.client import ApiClient

    return ApiClient().sanitize_for_serialization(obj)


def render_training_pod(image: str, env: dict[str, str] | None = None) -> dict[str, Any]:
    """The pod ZenML's Kubernetes orchestrator creates for the training step (the same
    calls as its entrypoint: default memory request, then ``build_pod_manifest``)."""
    from zenml.entrypoints.step_entrypoint_configuration import StepEntrypointConfiguration
    from zenml.integrations.kubernetes import kube_utils
    from zenml.integrations.kubernetes.manifest_utils import build_pod_manifest

    settings = training_step_settings()["orchestrator"]
    pod_settings = kube_utils.apply_default_resource_requests(
        memory="400Mi", pod_settings=settings.pod_settings
    )
    pod = build_pod_manifest(
        pod_name=f"plants-mlops-{TRAINING_STEP}",
        image_name=image,
        command=StepEntrypointConfiguration.get_entrypoint_command(),
        args=StepEntrypointConfiguration.get_entrypoint_arguments(
            step_name=TRAINING_STEP, snapshot_id=uuid.UUID(int=0)
        ),
        env=env or {},
        privileged=settings.privileged,
        pod_settings=pod_settings,
        service_account_name=settings.step_pod_service_account_name
        or settings.service_account_name,
        labels={"step_name": TRAINING_STEP},
        termination_grace_period_seconds=settings.pod_stop_grace_period,
    )
    return _serialise(pod)


def render_schedule_cronjob(image: str, cron: str, name: str = "plants-mlops") -> dict[str, Any]:
    """The CronJob ZenML's Kubernetes orchestrator creates for ``pipeline schedule --cron``
    on the ``gpu`` stack: its orchestrator pod, wrapped in a Job, wrapped in a CronJob."""
    from zenml.integrations.kubernetes import kube_utils
    from zenml.integrations.kubernetes.flavors.kubernetes_orchestrator_flavor import (
        KubernetesOrchestratorSettings,
    )
    from zenml.integrations.kubernetes.manifest_utils import (
        build_cron_job_manifest,
        build_job_manifest,
        build_pod_manifest,
        job_template_manifest_from_job,
        pod_template_manifest_from_pod,
    )
    from zenml.integrations.kubernetes.orchestrators import (
        kubernetes_orchestrator_entrypoint_configuration as entry,
    )
    from zenml.integrations.kubernetes.pod_settings import KubernetesPodSettings

    config = orchestrator_config()
    settings = KubernetesOrchestratorSettings(
        service_account_name=config.get("service_account_name"),
        pod_settings=KubernetesPodSettings(**config["pod_settings"]),
    )
    pod_settings = kube_utils.apply_default_resource_requests(
        memory="400Mi", cpu="100m", pod_settings=settings.pod_settings
    )
    conf = entry.KubernetesOrchestratorEntrypointConfiguration
    pod = build_pod_manifest(
        pod_name=None,
        image_name=image,
        command=conf.get_entrypoint_command(),
        args=conf.get_entrypoint_arguments(snapshot_id=uuid.UUID(int=0)),
        privileged=False,
        pod_settings=pod_settings,
        service_account_name=settings.service_account_name,
        labels={"pipeline": name},
    )
    job = build_job_manifest(
        job_name=name,
        pod_template=pod_template_manifest_from_pod(pod),
        backoff_limit=settings.orchestrator_job_backoff_limit,
        ttl_seconds_after_finished=settings.ttl_seconds_after_finished,
        labels={"pipeline": name},
    )
    cron_job = build_cron_job_manifest(
        job_template=job_template_manifest_from_job(job),
        cron_expression=cron,
        successful_jobs_history_limit=settings.successful_jobs_history_limit,
        failed_jobs_history_limit=settings.failed_jobs_history_limit,
        concurrency_policy=settings.concurrency_policy,
        starting_deadline_seconds=settings.starting_deadline_seconds,
    )
    return _serialise(cron_job)
