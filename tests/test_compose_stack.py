"""Safe defaults of the compose stack: the preflight refuses placeholder secrets, only the
API and the dashboards are published, every service waits for the preflight, and the
MLflow start script (compose and Kubernetes) really puts MLflow behind basic-auth."""

from __future__ import annotations

import os
import secrets
import shutil
import subprocess
from pathlib import Path

import httpx
import pytest
import yaml
from support import servers
from support.prereqs import need

ROOT = Path(__file__).resolve().parents[1]
PREFLIGHT = ROOT / "deploy" / "compose-preflight.sh"
EXAMPLE = ROOT / "deploy" / "env.example"
PUBLISHED = {"api", "grafana", "mlflow", "zenml"}
INTERNAL = {"minio", "mysql", "prometheus", "pushgateway"}


def _example_env() -> dict[str, str]:
    pairs = (ln.split("=", 1) for ln in EXAMPLE.read_text().splitlines() if "=" in ln)
    return {k.strip(): v.strip() for k, v in pairs if not k.startswith("#")}


def _preflight(env: dict[str, str]) -> subprocess.CompletedProcess:
    return subprocess.run(
        ["sh", str(PREFLIGHT)],
        env={"PATH": os.environ["PATH"], **env},
        capture_output=True,
        text=True,
        timeout=30,
    )


def _checked_names() -> list[str]:
    proc = _preflight({})
    return [ln.split()[1] for ln in proc.stdout.splitlines() if " is empty" in ln]


def test_preflight_refuses_every_change_me_placeholder_of_env_example_by_name():
    example = _example_env()
    proc = _preflight(example)
    assert proc.returncode != 0
    placeholders = [k for k, v in example.items() if "change-me" in v]
    assert "PLANTS_API_KEYS" in placeholders and "MLFLOW_ADMIN_PASSWORD" in placeholders
    for name in placeholders:
        assert f"{name} is still the change-me placeholder" in proc.stdout, name
    assert set(placeholders) == set(_checked_names())  # the script checks what .env holds
    for value in set(example.values()):  # never echoes a value
        if "change-me" in value:
            assert value not in proc.stdout.replace(" change-me placeholder", "")


def test_preflight_passes_real_secrets_and_names_a_short_one():
    good = {name: secrets.token_hex(16) for name in _checked_names()}
    ok = _preflight(good)
    assert ok.returncode == 0, ok.stdout
    short = _preflight({**good, "GRAFANA_ADMIN_PASSWORD": "admin"})
    assert short.returncode != 0
    assert short.stdout.splitlines()[0] == (
        "preflight: GRAFANA_ADMIN_PASSWORD is shorter than 8 characters: use a long random value"
    )


@pytest.fixture(scope="module")
def compose_services(tmp_path_factory) -> dict:
    compose = need("docker-compose", "Debian package docker-compose (scripts/test-prereqs.sh)")
    work = tmp_path_factory.mktemp("compose")
    shutil.copy(ROOT / "docker-compose.yml", work)
    shutil.copytree(ROOT / "deploy", work / "deploy")
    shutil.copy(EXAMPLE, work / ".env")
    proc = subprocess.run(
        [compose, "config"], cwd=work, capture_output=True, text=True, timeout=120
    )
    assert proc.returncode == 0, proc.stderr
    return yaml.safe_load(proc.stdout)


def _host_ip(port: dict | str) -> str:
    """docker-compose v1 prints "127.0.0.1:8000:8000/tcp", v2 a mapping."""
    return port["host_ip"] if isinstance(port, dict) else port.split(":")[0]


def _target(volume: dict | str) -> str:
    return volume["target"] if isinstance(volume, dict) else volume.split(":")[1]


def test_only_the_api_and_the_dashboards_are_published_the_rest_is_internal(compose_services):
    services = compose_services["services"]
    published = {name for name, svc in services.items() if svc.get("ports")}
    assert published == PUBLISHED
    for name in PUBLISHED:
        (port,) = services[name]["ports"]
        assert _host_ip(port) == "127.0.0.1", (name, port)  # PLANTS_PUBLISH_ADDRESS
    assert compose_services["networks"]["backend"]["internal"] is True
    for name in INTERNAL:
        assert set(services[name]["networks"]) == {"backend"}, name
    assert services["preflight"]["network_mode"] == "none"


def test_every_service_waits_for_the_preflight(compose_services):
    services = compose_services["services"]

    def waits(name: str, seen: frozenset = frozenset()) -> bool:
        deps = services[name].get("depends_on") or {}
        if deps.get("preflight", {}).get("condition") == "service_completed_successfully":
            return True
        return any(waits(d, seen | {name}) for d in deps if d not in seen)

    assert {"prometheus", "pushgateway", "grafana", "storage-init"} <= set(services)
    assert all(waits(name) for name in services if name != "preflight")


def test_training_and_monitoring_run_as_jobs_inside_the_stack_as_the_cronjobs_do(
    compose_services,
):
    """The stack's MinIO, MariaDB and Pushgateway are on the internal network: a
    monitoring run "from a workstation" (as the docs said) could reach none of them, so
    the drift panels and alert never got data. The jobs run inside, as on Kubernetes."""
    services = compose_services["services"]
    cronjobs = {
        name: yaml.safe_load((ROOT / f"deploy/k8s/base/{name}-cronjob.yaml").read_text())
        for name in ("train", "monitoring")
    }
    for name, cronjob in cronjobs.items():
        job = services[name]
        (container,) = cronjob["spec"]["jobTemplate"]["spec"]["template"]["spec"]["containers"]
        assert job["command"] == container["command"], name
        assert job["profiles"] == ["jobs"], name  # `docker compose up` starts neither
        assert "backend" in job["networks"], name
        env = job["environment"]
        assert env["PLANTS_DB_URL"] == services["api"]["environment"]["PLANTS_DB_URL"]
        assert env["MLFLOW_TRACKING_URI"] == "http://mlflow:5000"
        assert env["PLANTS_S3_ENDPOINT_URL"] == "http://minio:9000"
    assert services["monitoring"]["environment"]["PLANTS_PUSHGATEWAY_URL"] == (
        "http://pushgateway:9091"
    )
    assert "frontend" in services["train"]["networks"]  # the image URLs are outside


def test_mlflow_zenml_and_grafana_get_their_passwords_from_env(compose_services):
    services = compose_services["services"]
    mlflow = services["mlflow"]
    assert mlflow["command"] == ["/bin/sh", "/opt/mlflow/start-mlflow.sh"]
    assert mlflow["environment"]["MLFLOW_AUTH_ADMIN_PASSWORD"] == "change-me"  # from .env
    assert services["api"]["environment"]["MLFLOW_TRACKING_USERNAME"] == "admin"
    assert services["zenml"]["environment"]["ZENML_DEFAULT_USER_PASSWORD"] == "change-me"
    assert services["grafana"]["environment"]["GF_SECURITY_ADMIN_PASSWORD"] == "change-me"
    provider = yaml.safe_load(
        (ROOT / "deploy/grafana/provisioning/dashboards/plants-mlops.yml").read_text()
    )
    mounts = {_target(v) for v in services["grafana"]["volumes"]}
    assert provider["providers"][0]["options"]["path"] in mounts
    assert "plants-mlops storage init" in str(services["storage-init"]["command"])


def test_the_mlflow_start_script_serves_mlflow_behind_basic_auth(tmp_path):
    """The script compose and Kubernetes run, against SQLite instead of a server database:
    anonymous requests are refused, the admin gets in with the password from the file
    MLFLOW_AUTH_ADMIN_PASSWORD_FILE names (as Kubernetes mounts it; compose passes the
    others in the environment), and a secret set both ways is refused."""
    port = servers.free_port()
    password = secrets.token_hex(12)
    (tmp_path / "admin_password").write_text(password + "\n")
    script = ["sh", str(ROOT / "deploy" / "mlflow" / "start-mlflow.sh")]
    both = subprocess.run(
        script,
        env={
            "PATH": os.environ["PATH"],
            "MLFLOW_AUTH_ADMIN_PASSWORD": "x",
            "MLFLOW_AUTH_ADMIN_PASSWORD_FILE": str(tmp_path / "admin_password"),
        },
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert both.returncode == 1
    assert both.stderr.strip() == (
        "start-mlflow.sh: both MLFLOW_AUTH_ADMIN_PASSWORD and "
        "MLFLOW_AUTH_ADMIN_PASSWORD_FILE are set: set one"
    )
    env = {
        "MLFLOW_BACKEND_STORE_URI": f"sqlite:///{tmp_path / 'mlflow.db'}",
        "MLFLOW_AUTH_DATABASE_URI": f"sqlite:///{tmp_path / 'auth.db'}",
        "MLFLOW_AUTH_ADMIN_PASSWORD_FILE": str(tmp_path / "admin_password"),
        "MLFLOW_FLASK_SERVER_SECRET_KEY": secrets.token_hex(16),
        "MLFLOW_ARTIFACTS_DESTINATION": str(tmp_path / "artifacts"),
        "MLFLOW_HOST": "127.0.0.1",
        "MLFLOW_PORT": str(port),
        "MLFLOW_WORKERS": "1",
        "TMPDIR": str(tmp_path),
        "PATH": f"{servers.VENV_BIN}:{os.environ['PATH']}",
    }
    server = servers.ManagedProcess(
        "mlflow basic-auth",
        script,
        health_url=f"http://127.0.0.1:{port}/health",
        env=env,
        log_path=tmp_path / "mlflow.log",
        cwd=tmp_path,
        traced=False,
    ).start(timeout=120)
    try:
        # no MLflow job runner (it and its Huey consumers) beside the server
        assert servers.mlflow_job_runners(tmp_path) == []
        url = f"http://127.0.0.1:{port}/api/2.0/mlflow/registered-models"
        body = {"name": "plants-classifier"}
        # password hashing (PBKDF2) is slow on purpose: a loaded CI machine needs time
        client = httpx.Client(timeout=60)
        assert client.post(f"{url}/create", json=body).status_code == 401
        assert client.get(f"{url}/search").status_code == 401
        wrong = client.post(f"{url}/create", json=body, auth=("admin", "not-the-password"))
        assert wrong.status_code == 401
        created = client.post(f"{url}/create", json=body, auth=("admin", password))
        assert created.status_code == 200, created.text
        found = client.get(f"{url}/search", auth=("admin", password)).json()
        assert [m["name"] for m in found["registered_models"]] == ["plants-classifier"]
        # the ini with the auth database URI stays in the scratch dir, readable by us only
        ini = tmp_path / "mlflow-basic-auth.ini"
        assert ini.stat().st_mode & 0o077 == 0
        assert password not in ini.read_text()
    finally:
        server.stop()
