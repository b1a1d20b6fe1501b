"""The Kubernetes deployment, checked as far as a machine without a cluster allows:
every overlay renders with kubectl's built-in Kustomize, every object is valid against the
Kubernetes OpenAPI schemas (kubernetes-validate, strict), our own policies hold, and the
pods ZenML's Kubernetes orchestrator would create for the `gpu` stack (rendered offline
by ZenML's own manifest builders) ask for a GPU and read the credentials from secrets."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import kubernetes_validate
import pytest
import yaml
from support.prereqs import need

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
OVERLAYS = ("cpu", "gpu")
K8S_VERSION = "1.32.0"  # the machine's kubectl; the schemas ship with kubernetes-validate
WORKLOADS = ("Deployment", "StatefulSet", "DaemonSet")
PART_OF = "app.kubernetes.io/part-of"
NAME = "app.kubernetes.io/name"
SECRETISH = re.compile(r"(PASSWORD|SECRET|_KEY|_KEYS|_KEY_ID|TOKEN|ROOT_USER)$", re.IGNORECASE)
URL_WITH_PASSWORD = re.compile(r"://[^\s/:@\"']+:([^\s@\"']+)@")


def _render(overlay: str) -> tuple[str, list[dict]]:
    kubectl = need("kubectl", "kubectl 1.32 (built-in Kustomize) is part of the machine image")
    proc = subprocess.run(
        [kubectl, "kustomize", str(ROOT / "deploy" / "k8s" / "overlays" / overlay)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    return proc.stdout, [d for d in yaml.safe_load_all(proc.stdout) if d]


@pytest.fixture(scope="module")
def rendered(tmp_path_factory) -> dict[str, tuple[Path, list[dict]]]:
    out = {}
    folder = tmp_path_factory.mktemp("k8s")
    for overlay in OVERLAYS:
        text, docs = _render(overlay)
        path = folder / f"{overlay}.yaml"
        path.write_text(text)
        out[overlay] = (path, docs)
    return out


def _pod_spec(obj: dict) -> dict | None:
    spec = obj.get("spec") or {}
    if obj["kind"] == "CronJob":
        return spec["jobTemplate"]["spec"]["template"]["spec"]
    if obj["kind"] == "Pod":
        return spec
    if "template" in spec:
        return spec["template"]["spec"]
    return None


def _pod_labels(obj: dict) -> dict:
    spec = obj["spec"]
    template = (
        spec["jobTemplate"]["spec"]["template"] if obj["kind"] == "CronJob" else spec["template"]
    )
    return template["metadata"]["labels"]


def _containers(obj: dict) -> list[dict]:
    pod = _pod_spec(obj) or {}
    return [*pod.get("initContainers", []), *pod.get("containers", [])]


def _with_pods(docs: list[dict]) -> list[dict]:
    return [d for d in docs if _pod_spec(d) is not None]


def _by_kind(docs: list[dict], kind: str) -> dict[str, dict]:
    return {d["metadata"]["name"]: d for d in docs if d["kind"] == kind}


def _validate(obj: dict) -> None:
    kubernetes_validate.validate(obj, K8S_VERSION, strict=True)


# -- render + schema -------------------------------------------------------------------


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_overlay_renders_the_whole_production_path(rendered, overlay):
    _, docs = rendered[overlay]
    kinds = {(d["kind"], d["metadata"]["name"]) for d in docs}
    expected = {
        ("Deployment", "plants-api"),
        ("Service", "plants-api"),
        ("HorizontalPodAutoscaler", "plants-api"),
        ("PodDisruptionBudget", "plants-api"),
        ("ConfigMap", "plants-settings"),
        ("Deployment", "mlflow"),
        ("StatefulSet", "zenml"),
        ("StatefulSet", "minio"),
        ("StatefulSet", "postgres"),
        ("Job", "storage-init"),
        ("CronJob", "monitoring"),
        ("CronJob", "train"),
        ("StatefulSet", "prometheus"),
        ("Deployment", "pushgateway"),
        ("Deployment", "grafana"),
    }
    assert expected <= kinds, expected - kinds
    assert all(
        d["metadata"].get("namespace") == "plants-mlops"
        for d in docs
        if d["kind"] not in ("Namespace",)
    )


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_every_rendered_object_is_valid_against_the_kubernetes_schemas(rendered, overlay):
    path, docs = rendered[overlay]
    for obj in docs:
        _validate(obj)  # raises ValidationError naming the object and the field
    # and the CLI, strict, on the whole rendered file (what CI users would run)
    proc = subprocess.run(
        [str(BIN / "kubernetes-validate"), "--strict", "--quiet", "-k", K8S_VERSION, str(path)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_the_schema_check_refuses_an_unknown_field(rendered):
    _, docs = rendered["cpu"]
    api = _by_kind(docs, "Deployment")["plants-api"]
    broken = yaml.safe_load(yaml.safe_dump(api))
    broken["spec"]["template"]["spec"]["containers"][0]["readinessProbes"] = {}
    with pytest.raises(kubernetes_validate.ValidationError):
        _validate(broken)


# -- our policies ----------------------------------------------------------------------


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_every_image_is_pinned_to_a_tag_that_is_not_latest(rendered, overlay):
    _, docs = rendered[overlay]
    images = {c["image"] for d in _with_pods(docs) for c in _containers(d)}
    assert images
    for image in images:
        name, _, tag = image.rpartition(":")
        assert name and "/" not in tag and tag not in ("", "latest"), image


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_every_container_has_resources_and_long_running_ones_have_all_three_probes(
    rendered, overlay
):
    _, docs = rendered[overlay]
    for obj in _with_pods(docs):
        for c in _containers(obj):
            where = f"{obj['kind']}/{obj['metadata']['name']}/{c['name']}"
            res = c.get("resources") or {}
            assert {"cpu", "memory"} <= set(res.get("requests", {})), where
            assert "memory" in res.get("limits", {}), where
            # A Job/CronJob pod runs one command and exits: nothing to probe.
            if obj["kind"] in WORKLOADS:
                for probe in ("readinessProbe", "livenessProbe", "startupProbe"):
                    assert probe in c, f"{where}: no {probe}"


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_pods_run_as_non_root_without_privilege_on_read_only_root_filesystems(rendered, overlay):
    _, docs = rendered[overlay]
    for obj in _with_pods(docs):
        pod = _pod_spec(obj)
        assert pod["securityContext"]["runAsNonRoot"] is True, obj["metadata"]["name"]
        for c in _containers(obj):
            sc = c["securityContext"]
            where = f"{obj['metadata']['name']}/{c['name']}"
            assert sc["allowPrivilegeEscalation"] is False, where
            assert sc["capabilities"]["drop"] == ["ALL"], where
            assert sc["readOnlyRootFilesystem"] is True, where


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_no_secret_value_is_rendered_only_references(rendered, overlay):
    path, docs = rendered[overlay]
    assert not [d for d in docs if d["kind"] == "Secret"]
    for obj in _with_pods(docs):
        for c in _containers(obj):
            for env in c.get("env", []):
                if SECRETISH.search(env["name"]):
                    assert "valueFrom" in env and "value" not in env, env
    # credentials inside URLs are only $(VAR) references to secret-backed variables
    for password in URL_WITH_PASSWORD.findall(path.read_text()):
        assert re.fullmatch(r"\$\([A-Z_]+\)", password), password
    for cm in _by_kind(docs, "ConfigMap").values():
        assert not [k for k in cm.get("data", {}) if SECRETISH.search(k)], cm["metadata"]["name"]


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_labels_selectors_and_references_are_consistent(rendered, overlay):
    _, docs = rendered[overlay]
    for obj in docs:
        labels = obj["metadata"].get("labels") or {}
        assert labels.get(PART_OF) == "plants-mlops", (obj["kind"], obj["metadata"]["name"])
        assert labels.get(NAME), (obj["kind"], obj["metadata"]["name"])
        assert labels.get("plants-mlops/overlay") == overlay
    pods = _with_pods(docs)
    for obj in pods:
        tpl = _pod_labels(obj)
        assert tpl.get(NAME) == obj["metadata"]["labels"][NAME], obj["metadata"]["name"]
        selector = (obj["spec"].get("selector") or {}).get("matchLabels")
        if selector:
            assert selector.items() <= tpl.items(), obj["metadata"]["name"]
    for svc in _by_kind(docs, "Service").values():
        sel = svc["spec"]["selector"].items()
        assert any(sel <= _pod_labels(p).items() for p in pods), svc["metadata"]["name"]
    workloads = {(d["kind"], d["metadata"]["name"]) for d in docs}
    for hpa in _by_kind(docs, "HorizontalPodAutoscaler").values():
        ref = hpa["spec"]["scaleTargetRef"]
        assert (ref["kind"], ref["name"]) in workloads
    for pdb in _by_kind(docs, "PodDisruptionBudget").values():
        sel = pdb["spec"]["selector"]["matchLabels"].items()
        assert any(sel <= _pod_labels(p).items() for p in pods)
    config_maps = set(_by_kind(docs, "ConfigMap"))
    for obj in pods:
        pod = _pod_spec(obj)
        refs = [v["configMap"]["name"] for v in pod.get("volumes", []) if "configMap" in v]
        refs += [
            e["configMapRef"]["name"]
            for c in _containers(obj)
            for e in c.get("envFrom", [])
            if "configMapRef" in e
        ]
        assert set(refs) <= config_maps, (obj["metadata"]["name"], set(refs) - config_maps)
        account = pod.get("serviceAccountName")
        assert account is None or account in _by_kind(docs, "ServiceAccount")


def test_the_api_is_highly_available_and_probed_on_ready_and_health(rendered):
    _, docs = rendered["cpu"]
    api = _by_kind(docs, "Deployment")["plants-api"]
    assert api["spec"]["replicas"] >= 2
    assert _by_kind(docs, "HorizontalPodAutoscaler")["plants-api"]["spec"]["minReplicas"] >= 2
    assert _by_kind(docs, "PodDisruptionBudget")["plants-api"]["spec"]["minAvailable"] >= 1
    (container,) = api["spec"]["template"]["spec"]["containers"]
    assert container["readinessProbe"]["httpGet"]["path"] == "/ready"
    assert container["livenessProbe"]["httpGet"]["path"] == "/health"
    assert container["startupProbe"]["httpGet"]["path"] == "/health"
    assert {"configMapRef": {"name": "plants-settings"}} in container["envFrom"]


def test_mlflow_runs_with_basic_auth_and_every_referenced_secret_is_documented(rendered):
    _, docs = rendered["gpu"]
    mlflow = _by_kind(docs, "Deployment")["mlflow"]
    (container,) = mlflow["spec"]["template"]["spec"]["containers"]
    start = _by_kind(docs, "ConfigMap")
    script = next(
        cm["data"]["start-mlflow.sh"] for cm in start.values() if "start-mlflow.sh" in cm["data"]
    )
    assert container["command"][-1].endswith("start-mlflow.sh")
    assert "--app-name basic-auth" in script
    env = {e["name"]: e for e in container["env"]}
    assert env["MLFLOW_AUTH_ADMIN_PASSWORD"]["valueFrom"]["secretKeyRef"]["name"] == "plants-mlflow"
    zenml = _by_kind(docs, "StatefulSet")["zenml"]["spec"]["template"]["spec"]["containers"][0]
    zenv = {e["name"]: e for e in zenml["env"]}
    assert "secretKeyRef" in zenv["ZENML_DEFAULT_USER_PASSWORD"]["valueFrom"]
    # docs/deploy.md creates every secret, with every key, that a manifest refers to
    deploy_doc = (ROOT / "docs" / "deploy.md").read_text()
    refs = {
        (e["valueFrom"]["secretKeyRef"]["name"], e["valueFrom"]["secretKeyRef"]["key"])
        for obj in _with_pods(docs)
        for c in _containers(obj)
        for e in c.get("env", [])
        if "secretKeyRef" in e.get("valueFrom", {})
    }
    assert refs
    for name, key in refs:
        assert f"kubectl -n plants-mlops create secret generic {name}" in deploy_doc, name
        assert f"--from-literal={key}=" in deploy_doc, (name, key)


def test_the_gpu_overlay_lets_zenml_start_step_pods_and_names_the_gpu_settings(rendered):
    _, docs = rendered["gpu"]
    settings = _by_kind(docs, "ConfigMap")["plants-settings"]["data"]
    account = settings["PLANTS_KUBE_SERVICE_ACCOUNT"]
    assert account in _by_kind(docs, "ServiceAccount")
    binding = _by_kind(docs, "RoleBinding")[account]
    assert binding["subjects"] == [
        {"kind": "ServiceAccount", "name": account, "namespace": "plants-mlops"}
    ]
    role = _by_kind(docs, "Role")[binding["roleRef"]["name"]]
    granted = {
        (g, r) for rule in role["rules"] for g in rule["apiGroups"] for r in rule["resources"]
    }
    assert {("", "pods"), ("batch", "jobs"), ("batch", "cronjobs")} <= granted
    assert "PLANTS_GPU_NODE_SELECTOR" in settings
    # the cpu overlay has none of it
    _, cpu_docs = rendered["cpu"]
    assert not _by_kind(cpu_docs, "RoleBinding")


# -- the pods ZenML's Kubernetes orchestrator creates for the gpu stack ----------------


def _secret_refs(container: dict) -> dict[str, tuple[str, str]]:
    return {
        e["name"]: (e["valueFrom"]["secretKeyRef"]["name"], e["valueFrom"]["secretKeyRef"]["key"])
        for e in container.get("env", [])
        if "secretKeyRef" in e.get("valueFrom", {})
    }


def test_zenml_training_pod_on_the_gpu_stack_asks_for_a_gpu_and_reads_the_s3_secret(
    rendered, monkeypatch
):
    from plants_mlops.orchestration import gpu

    _, docs = rendered["gpu"]
    settings = _by_kind(docs, "ConfigMap")["plants-settings"]["data"]
    for key in ("PLANTS_GPU_NODE_SELECTOR", "PLANTS_GPU_TOLERATION", "PLANTS_KUBE_SERVICE_ACCOUNT"):
        monkeypatch.setenv(key, settings[key])
    pod = gpu.render_training_pod("registry.example.com/plants-mlops:0.1.0-gpu")
    _validate(pod)
    spec = pod["spec"]
    (main,) = spec["containers"]
    assert main["resources"]["limits"]["nvidia.com/gpu"] == "1"
    assert main["resources"]["requests"]["nvidia.com/gpu"] == "1"
    selector_key, _, selector_value = settings["PLANTS_GPU_NODE_SELECTOR"].partition("=")
    assert spec["nodeSelector"] == {selector_key: selector_value}
    assert {
        "key": settings["PLANTS_GPU_TOLERATION"],
        "operator": "Exists",
        "effect": "NoSchedule",
    } in spec["tolerations"]
    refs = _secret_refs(main)
    assert refs["AWS_ACCESS_KEY_ID"] == ("plants-s3", "aws_access_key_id")
    assert refs["AWS_SECRET_ACCESS_KEY"] == ("plants-s3", "aws_secret_access_key")
    assert refs["MLFLOW_TRACKING_PASSWORD"] == ("plants-mlflow", "password")
    assert not [e for e in main["env"] if SECRETISH.search(e["name"]) and "value" in e]
    assert spec["serviceAccountName"] == settings["PLANTS_KUBE_SERVICE_ACCOUNT"]
    assert main["command"][:2] == ["python", "-m"] and "--step_name" in main["args"]
    # the secret it reads is the one MinIO and the API read in the rendered manifests
    minio = _by_kind(docs, "StatefulSet")["minio"]["spec"]["template"]["spec"]["containers"][0]
    assert _secret_refs(minio)["MINIO_ROOT_USER"] == refs["AWS_ACCESS_KEY_ID"]


def test_the_gpu_stack_settings_are_what_zenml_accepts_and_only_training_gets_a_gpu(
    monkeypatch,
):
    from zenml.config import ResourceSettings
    from zenml.integrations.kubernetes.flavors.kubernetes_orchestrator_flavor import (
        KubernetesOrchestratorConfig,
    )

    from plants_mlops.orchestration import gpu

    monkeypatch.setenv("PLANTS_KUBE_SERVICE_ACCOUNT", "zenml-orchestrator")
    config = KubernetesOrchestratorConfig(kubernetes_context="gpu", **gpu.orchestrator_config())
    refs = {e["name"]: e["valueFrom"]["secretKeyRef"]["name"] for e in config.pod_settings.env}
    assert refs["AWS_ACCESS_KEY_ID"] == "plants-s3"
    assert not config.pod_settings.resources  # steps other than training: no GPU
    assert config.service_account_name == "zenml-orchestrator"
    step = gpu.training_step_settings()
    assert step["resources"] == ResourceSettings(gpu_count=1)
    assert step["orchestrator"].pod_settings.resources["limits"]["nvidia.com/gpu"] == "1"


def test_the_cronjob_zenml_creates_for_a_schedule_is_valid_and_carries_the_secrets(monkeypatch):
    from plants_mlops.orchestration import gpu

    monkeypatch.setenv("PLANTS_KUBE_SERVICE_ACCOUNT", "zenml-orchestrator")
    cron = gpu.render_schedule_cronjob("registry.example.com/plants-mlops:0.1.0", "0 3 * * 1")
    _validate(cron)
    assert cron["kind"] == "CronJob" and cron["spec"]["schedule"] == "0 3 * * 1"
    pod = cron["spec"]["jobTemplate"]["spec"]["template"]["spec"]
    assert pod["serviceAccountName"] == "zenml-orchestrator"
    (main,) = pod["containers"]
    assert main["command"][-1].endswith("kubernetes_orchestrator_entrypoint")
    assert _secret_refs(main)["AWS_SECRET_ACCESS_KEY"] == ("plants-s3", "aws_secret_access_key")
