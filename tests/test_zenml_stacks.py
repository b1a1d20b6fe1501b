"""The `plants-mlops stack` and `pipeline` commands on stacks that need no pipeline run:
the `minio` stack refused without its endpoint, the `gpu` stack (Kubernetes orchestrator,
training planned on one GPU) and a cron schedule on the local orchestrator.

Real ZenML: the CLI in subprocesses, ZenML's local SQLite store in a per-module
ZENML_CONFIG_PATH. (Apart from tests/test_zenml.py so that pytest-xdist can run them
beside its pipeline runs.)
"""

from __future__ import annotations

import pytest
from zenml_testlib import cli, run_json, zenml_env


@pytest.fixture(scope="module")
def zen_home(tmp_path_factory):
    return tmp_path_factory.mktemp("zenml-home")


def test_minio_stack_without_an_endpoint_is_refused_with_the_variable_to_set(
    zen_home, kedro_project
):
    env = zenml_env(zen_home)
    env.pop("PLANTS_S3_ENDPOINT_URL", None)
    proc = cli(["stack", "register", "minio"], env, kedro_project.path, check=False)
    assert proc.returncode == 1
    assert "set PLANTS_S3_ENDPOINT_URL" in proc.stderr


def test_gpu_stack_registers_kubernetes_and_plans_training_on_one_gpu(
    zen_home, kedro_project, tmp_path, s3_endpoint
):
    kubeconfig = tmp_path / "kubeconfig"
    kubeconfig.write_text(
        "apiVersion: v1\nkind: Config\ncurrent-context: gpu-cluster\n"
        "clusters: [{name: c, cluster: {server: 'https://127.0.0.1:6443'}}]\n"
        "contexts: [{name: gpu-cluster, context: {cluster: c, user: u}}]\n"
        "users: [{name: u, user: {token: not-a-secret}}]\n"
    )
    env = zenml_env(
        zen_home,
        KUBECONFIG=str(kubeconfig),
        PLANTS_KUBE_CONTEXT="gpu-cluster",
        PLANTS_CONTAINER_REGISTRY="registry.example.com/plants",
        # a real S3 API: the dry run asks the catalog which model outputs exist (a closed
        # port there costs a minute of client retries)
        PLANTS_S3_ENDPOINT_URL=s3_endpoint,
        MLFLOW_TRACKING_URI="http://127.0.0.1:5",
    )
    reg = cli(["stack", "register", "gpu", "--no-activate"], env, kedro_project.path)
    assert "plants-kubernetes [kubernetes]" in reg.stdout
    assert "validation: ok" in reg.stdout  # ZenML's local checks: context, registry, store

    plan_file = tmp_path / "plan.json"
    cli(
        ["pipeline", "run", "--stack", "gpu", "--dry-run", "--json-out", str(plan_file)],
        env,
        kedro_project.path,
    )
    plan = run_json(plan_file)
    assert plan["stack"] == "gpu" and plan["env"] == "minio"
    assert plan["steps"]["training"]["gpu_count"] == 1
    assert plan["steps"]["training"]["experiment_tracker"] == "plants-mlflow-server"
    assert all(plan["steps"][s]["gpu_count"] is None for s in plan["steps"] if s != "training")


def test_schedule_on_the_local_orchestrator_prints_a_cron_line_running_the_pipeline(
    zen_home, kedro_project
):
    env = zenml_env(zen_home)
    proc = cli(
        [
            "pipeline",
            "schedule",
            "--stack",
            "local",
            "--cron",
            "0 3 * * 1",
            "--pipelines",
            "ingestion",
            "formatting",
        ],
        env,
        kedro_project.path,
    )
    line = proc.stdout.strip().splitlines()[-1]
    assert line.startswith("0 3 * * 1 cd ")
    assert "plants-mlops pipeline run --pipelines ingestion formatting" in line
    assert f"ZENML_CONFIG_PATH={zen_home}" in line
