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


def _secret_files(obj: dict, container: dict) -> dict[str, tuple[str, str]]:
    """``{X: (secret, key)}`` for each ``X_FILE`` (or Grafana's ``X__FILE``) env entry of
    ``container`` whose path is an item of a secret volume mounted in it."""
    volumes = {v["name"]: v for v in (_pod_spec(obj) or {}).get("volumes", [])}
    out = {}
    for env in container.get("env", []):
        name, path = env["name"], env.get("value", "")
        if not name.endswith("_FILE") or not path:
            continue
        for mount in container.get("volumeMounts", []):
            prefix = mount["mountPath"].rstrip("/") + "/"
            if not path.startswith(prefix):
                continue
            volume = volumes[mount["name"]]
            sources = [{"secret": volume["secret"]}] if "secret" in volume else []
            sources += (volume.get("projected") or {}).get("sources", [])
            for source in sources:
                secret = source.get("secret")
                if not secret:
                    continue
                secret_name = secret.get("secretName") or secret.get("name")
                for item in secret.get("items", []):
                    if prefix + item["path"] == path:
                        out[name.removesuffix("_FILE").removesuffix("_")] = (
                            secret_name,
                            item["key"],
                        )
    return out


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
    # the admin password reaches MLflow as a file (MLFLOW_AUTH_ADMIN_PASSWORD_FILE), not
    # in its environment (issue 33: secrets as files for the project's own processes)
    assert _secret_files(mlflow, container)["MLFLOW_AUTH_ADMIN_PASSWORD"] == (
        "plants-mlflow",
        "password",
    )
    assert "MLFLOW_AUTH_ADMIN_PASSWORD" not in {e["name"] for e in container["env"]}
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
    refs |= {
        ref
        for obj in _with_pods(docs)
        for c in _containers(obj)
        for ref in _secret_files(obj, c).values()
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
    minio = _by_kind(docs, "StatefulSet")["minio"]
    (minio_container,) = minio["spec"]["template"]["spec"]["containers"]
    assert _secret_files(minio, minio_container)["MINIO_ROOT_USER"] == refs["AWS_ACCESS_KEY_ID"]


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


# -- images by digest (deploy/k8s/release) ---------------------------------------------

PINNED = re.compile(r"^[^@\s]+:[^@/\s]+@sha256:[0-9a-f]{64}$")


def _unpinned(docs: list[dict]) -> set[str]:
    """Images of the rendered pods that are not ``name:tag@sha256:<digest>``."""
    return {c["image"] for d in _with_pods(docs) for c in _containers(d)} - {
        c["image"] for d in _with_pods(docs) for c in _containers(d) if PINNED.match(c["image"])
    }


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_every_rendered_image_carries_a_tag_and_a_digest(rendered, overlay):
    _, docs = rendered[overlay]
    assert not _unpinned(docs)
    for obj in _with_pods(docs):
        for c in _containers(obj):
            # with a digest the image cannot change; Always makes the kubelet check that
            # this pod may pull it instead of reusing another pod's cached copy
            assert c["imagePullPolicy"] == "Always", (obj["metadata"]["name"], c["name"])


def _copy_deploy(tmp_path: Path) -> Path:
    import shutil

    shutil.copytree(ROOT / "deploy", tmp_path / "deploy")
    return tmp_path / "deploy"


def _render_dir(folder: Path) -> list[dict]:
    kubectl = need("kubectl", "kubectl 1.32 (built-in Kustomize) is part of the machine image")
    proc = subprocess.run(
        [kubectl, "kustomize", str(folder)], capture_output=True, text=True, timeout=120
    )
    assert proc.returncode == 0, proc.stderr
    return [d for d in yaml.safe_load_all(proc.stdout) if d]


def test_the_digest_policy_refuses_a_release_entry_with_a_tag_and_no_digest(tmp_path):
    deploy = _copy_deploy(tmp_path)
    release = deploy / "k8s" / "release" / "kustomization.yaml"
    text = release.read_text()
    broken = re.sub(r"(- name: prom/pushgateway\n\s+newTag: \S+\n)\s+digest: \S+\n", r"\1", text)
    assert broken != text
    release.write_text(broken)
    assert _unpinned(_render_dir(deploy / "k8s" / "overlays" / "cpu")) == {
        "prom/pushgateway:v1.5.1"
    }


def test_the_release_step_fills_digests_and_its_check_refuses_unresolved_ones(tmp_path):
    deploy = _copy_deploy(tmp_path)
    release = deploy / "k8s" / "release" / "kustomization.yaml"
    script = [sys.executable, str(ROOT / "scripts" / "pin-images.py"), "--file", str(release)]

    def run(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run([*script, *args], capture_output=True, text=True, timeout=60)

    check = run("--check")
    unresolved = [ln.removeprefix("unresolved digest: ") for ln in check.stderr.splitlines()]
    # what this repository cannot resolve offline (no registry here): the project's image,
    # built at release, and the upstream images whose digests were not yet pinned
    assert check.returncode == 1 and "registry.example.com/plants-mlops:0.1.0" in unresolved
    given = {ref.rpartition(":")[0]: f"sha256:{i:064x}" for i, ref in enumerate(unresolved, 1)}
    names = {"registry.example.com/plants-mlops": "plants-mlops"}
    args = [f"--digest={names.get(n, n)}={d}" for n, d in given.items()]
    filled = run(*args, "--no-resolve")
    assert filled.returncode == 0, filled.stderr
    assert run("--check").returncode == 0
    assert "# Every image the cluster runs" in release.read_text()  # comments kept
    api = _by_kind(_render_dir(deploy / "k8s" / "overlays" / "cpu"), "Deployment")["plants-api"]
    image = api["spec"]["template"]["spec"]["containers"][0]["image"]
    assert (
        image
        == f"registry.example.com/plants-mlops:0.1.0@{given['registry.example.com/plants-mlops']}"
    )
    assert run("--digest=nginx=sha256:" + "1" * 64, "--no-resolve").returncode == 1


# -- service-account tokens and secrets as files ---------------------------------------


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_no_pod_mounts_a_service_account_token(rendered, overlay):
    _, docs = rendered[overlay]
    for obj in _with_pods(docs):
        assert _pod_spec(obj)["automountServiceAccountToken"] is False, obj["metadata"]["name"]


# workloads whose image takes secrets only as environment variables (docs/deploy.md)
SECRETS_IN_ENV = {("StatefulSet", "zenml")}


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_secrets_reach_the_pods_as_files_except_where_an_upstream_image_cannot(rendered, overlay):
    _, docs = rendered[overlay]
    deploy_doc = (ROOT / "docs" / "deploy.md").read_text()
    files_seen = 0
    for obj in _with_pods(docs):
        for c in _containers(obj):
            in_env = [
                e["name"] for e in c.get("env", []) if "secretKeyRef" in e.get("valueFrom", {})
            ]
            if (obj["kind"], obj["metadata"]["name"]) in SECRETS_IN_ENV:
                assert in_env and all(f"`{name}`" in deploy_doc for name in in_env), in_env
            else:
                assert not in_env, (obj["metadata"]["name"], in_env)
            # every *_FILE names an item of a secret volume mounted in that container
            file_vars = [e["name"] for e in c.get("env", []) if e["name"].endswith("_FILE")]
            found = _secret_files(obj, c)
            assert len(found) == len(file_vars), (obj["metadata"]["name"], file_vars, found)
            files_seen += len(found)
    assert files_seen >= 20


def test_the_api_reads_every_secret_it_needs_from_files(rendered):
    _, docs = rendered["cpu"]
    api = _by_kind(docs, "Deployment")["plants-api"]
    (container,) = api["spec"]["template"]["spec"]["containers"]
    assert _secret_files(api, container) == {
        "PLANTS_DB_PASSWORD": ("plants-db", "postgres_password"),
        "AWS_ACCESS_KEY_ID": ("plants-s3", "aws_access_key_id"),
        "AWS_SECRET_ACCESS_KEY": ("plants-s3", "aws_secret_access_key"),
        "MLFLOW_TRACKING_USERNAME": ("plants-mlflow", "username"),
        "MLFLOW_TRACKING_PASSWORD": ("plants-mlflow", "password"),
        "PLANTS_API_KEYS": ("plants-api", "api_keys"),
    }
    settings = _by_kind(docs, "ConfigMap")["plants-settings"]["data"]
    # the URL in the ConfigMap has no password: plants_mlops.secret_files adds it
    assert settings["PLANTS_DB_URL"] == "postgresql+psycopg2://plants@postgres:5432/plants"
    from plants_mlops.secret_files import SECRET_VARIABLES

    assert set(_secret_files(api, container)) - {"PLANTS_API_KEYS"} <= set(SECRET_VARIABLES)


# -- network policies: the allowed flows, computed from the rendered YAML ---------------

NAMESPACE = "plants-mlops"
# peers outside the namespace's workloads, as docs/deploy.md names them
INGRESS = {
    "name": "ingress controller",
    "namespace": "ingress-nginx",
    "labels": {"app.kubernetes.io/name": "ingress-nginx"},
}
DNS = {
    "name": "cluster DNS",
    "namespace": "kube-system",
    "labels": {"k8s-app": "kube-dns"},
    "ports": {("UDP", 53), ("TCP", 53)},
}
ANYWHERE = {
    "name": "any address",
    "ip": "203.0.113.7",
    "ports": {("TCP", p) for p in (80, 443, 6443)},
}


def _selects(selector: dict | None, labels: dict) -> bool:
    if selector is None:
        return False
    if not labels.items() >= (selector.get("matchLabels") or {}).items():
        return False
    for expr in selector.get("matchExpressions") or []:
        key, op, values = expr["key"], expr["operator"], expr.get("values") or []
        ok = {
            "In": key in labels and labels[key] in values,
            "NotIn": key not in labels or labels[key] not in values,
            "Exists": key in labels,
            "DoesNotExist": key not in labels,
        }[op]
        if not ok:
            return False
    return True


def _peer_matches(rule_peer: dict, peer: dict) -> bool:
    import ipaddress

    if "ipBlock" in rule_peer:
        block = rule_peer["ipBlock"]
        if "ip" not in peer:
            return False  # pods are matched by selectors here, not by their (unknown) IPs
        ip = ipaddress.ip_address(peer["ip"])
        return ip in ipaddress.ip_network(block["cidr"]) and not any(
            ip in ipaddress.ip_network(e) for e in block.get("except", [])
        )
    if "ip" in peer:
        return False
    ns_labels = {"kubernetes.io/metadata.name": peer["namespace"]}
    if "namespaceSelector" in rule_peer:
        ns_ok = _selects(rule_peer["namespaceSelector"], ns_labels)
    else:
        ns_ok = peer["namespace"] == NAMESPACE
    pod_ok = "podSelector" not in rule_peer or _selects(rule_peer["podSelector"], peer["labels"])
    return ns_ok and pod_ok


def _port_matches(rule_ports: list[dict] | None, proto: str, port: int) -> bool:
    if not rule_ports:
        return True
    return any(
        p.get("protocol", "TCP") == proto
        and ("port" not in p or p["port"] <= port <= p.get("endPort", p["port"]))
        for p in rule_ports
    )


def _admits(policies: list[dict], direction: str, subject: dict, peer: dict, proto: str, port: int):
    """Whether ``subject``'s policies of ``direction`` let ``peer`` through on the port: a
    pod no policy of that direction selects is not isolated."""
    if subject.get("namespace") != NAMESPACE:
        return True  # outside the namespace: not ours to restrict
    applicable = [
        p
        for p in policies
        if _selects(p["spec"]["podSelector"], subject["labels"])
        and direction in p["spec"].get("policyTypes", ["Ingress"])
    ]
    if not applicable:
        return True
    key, peers_key = ("ingress", "from") if direction == "Ingress" else ("egress", "to")
    return any(
        (not rule.get(peers_key) or any(_peer_matches(rp, peer) for rp in rule[peers_key]))
        and _port_matches(rule.get("ports"), proto, port)
        for p in applicable
        for rule in p["spec"].get(key) or []
    )


def _workloads(docs: list[dict]) -> list[dict]:
    out = []
    for obj in _with_pods(docs):
        labels = _pod_labels(obj)
        ports = {
            (p.get("protocol", "TCP"), p["containerPort"])
            for c in _containers(obj)
            for p in c.get("ports", [])
        }
        out.append({"name": labels[NAME], "namespace": NAMESPACE, "labels": labels, "ports": ports})
    return out


def _allowed_flows(docs: list[dict], extra_pods: list[dict]) -> set[tuple[str, str, int]]:
    policies = [d for d in docs if d["kind"] == "NetworkPolicy"]
    pods = _workloads(docs) + extra_pods
    flows = set()
    for src in [*pods, INGRESS, ANYWHERE]:
        for dst in [*pods, DNS, ANYWHERE]:
            if src is dst or NAMESPACE not in (src.get("namespace"), dst.get("namespace")):
                continue  # between two peers outside the namespace: not ours
            for proto, port in sorted(dst.get("ports", ())):
                if _admits(policies, "Egress", src, dst, proto, port) and _admits(
                    policies, "Ingress", dst, src, proto, port
                ):
                    flows.add((src["name"], dst["name"], port))
    return flows


def _documented_flows(overlay: str, names: set[str]) -> set[tuple[str, str, int]]:
    """The table under "### Network policies" in docs/deploy.md."""
    text = (ROOT / "docs" / "deploy.md").read_text()
    section = text.split("### Network policies", 1)[1].split("\n#", 1)[0]
    flows = set()
    for line in section.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) != 3 or not line.startswith("|") or cells[0] in ("from", "---"):
            continue
        src, dst, ports = cells
        if "(overlay `gpu`)" in src:
            if overlay != "gpu":
                continue
            src = src.replace("(overlay `gpu`)", "").strip()
        sources = sorted(names) if src == "every pod" else [src.strip("`")]
        for s in sources:
            for port in ports.split(","):
                flows.add((s, dst.strip("`"), int(port)))
    return flows


def _zenml_pods(monkeypatch) -> list[dict]:
    """The pods ZenML's orchestrator starts on the gpu stack, with their real labels."""
    from plants_mlops.orchestration import gpu

    monkeypatch.setenv("PLANTS_KUBE_SERVICE_ACCOUNT", "zenml-orchestrator")
    step = gpu.render_training_pod("registry.example.com/plants-mlops:0.1.0-gpu")
    cron = gpu.render_schedule_cronjob("registry.example.com/plants-mlops:0.1.0-gpu", "0 3 * * 1")
    orchestrator = cron["spec"]["jobTemplate"]["spec"]["template"]["metadata"]["labels"]
    labels = [step["metadata"]["labels"], orchestrator]
    assert {lab[NAME] for lab in labels} == {"zenml-pipeline"}
    return [
        {"name": "zenml-pipeline", "namespace": NAMESPACE, "labels": lab, "ports": set()}
        for lab in labels
    ]


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_the_network_policies_allow_exactly_the_flows_docs_deploy_lists(
    rendered, overlay, monkeypatch
):
    _, docs = rendered[overlay]
    extra = _zenml_pods(monkeypatch) if overlay == "gpu" else []
    allowed = _allowed_flows(docs, extra)
    names = {w["name"] for w in _workloads(docs) + extra}
    documented = _documented_flows(overlay, names)
    assert allowed == documented, {
        "allowed, not documented": sorted(allowed - documented),
        "documented, not allowed": sorted(documented - allowed),
    }
    # every namespace pod is isolated both ways by the default-deny policy
    deny = _by_kind(docs, "NetworkPolicy")["default-deny"]["spec"]
    assert deny == {"podSelector": {}, "policyTypes": ["Ingress", "Egress"]}


def test_without_the_default_deny_every_pod_would_reach_the_database(rendered):
    """The flow computation is not vacuous: remove the default-deny and the egress policies
    and the clients nobody allowed reach PostgreSQL again (the issue's finding)."""
    _, docs = rendered["cpu"]
    open_docs = [
        d
        for d in docs
        if d["kind"] != "NetworkPolicy" or d["metadata"]["name"] in ("minio", "mlflow")
    ]
    allowed = _allowed_flows(open_docs, [])
    assert ("grafana", "postgres", 5432) in allowed and ("zenml", "minio", 9000) not in allowed


def test_the_api_spills_prediction_log_rows_to_a_volume_that_outlives_its_pods(rendered):
    """Rows a store outage left in spill files are written back when it recovers: the
    folder is a claim every replica shares, not an emptyDir that dies with the pod."""
    _, docs = rendered["cpu"]
    pod = _by_kind(docs, "Deployment")["plants-api"]["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    mount = next(m for m in container["volumeMounts"] if m["name"] == "spill")
    assert (
        mount["mountPath"] == "/app/data/prediction_log_spill"
    )  # PLANTS_PREDICTION_LOG_SPILL_DIR's default
    volume = next(v for v in pod["volumes"] if v["name"] == "spill")
    claim = _by_kind(docs, "PersistentVolumeClaim")[volume["persistentVolumeClaim"]["claimName"]]
    assert claim["spec"]["accessModes"] == ["ReadWriteMany"]
