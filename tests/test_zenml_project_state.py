"""ZenML state belongs to one project: two checkouts of one user never share stacks, runs or
MLflow stores (plants_mlops.project)."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from conftest import new_project
from zenml_testlib import cli

from plants_mlops.project import PROJECT_LABEL, ZENML_HOME, foreign_store


def _same_user_env(home: Path) -> dict[str, str]:
    """One user's shell: a shared HOME, no ZENML_CONFIG_PATH or MLFLOW_TRACKING_URI set."""
    drop = {"ZENML_CONFIG_PATH", "XDG_CONFIG_HOME", "MLFLOW_TRACKING_URI", "PLANTS_DB_URL"}
    env = {k: v for k, v in os.environ.items() if k not in drop}
    env.update(HOME=str(home), ZENML_ANALYTICS_OPT_IN="false", KEDRO_DISABLE_TELEMETRY="true")
    return env


def _stacks(project: Path, env: dict[str, str]) -> dict[str, dict]:
    proc = cli(["stack", "list", "--json"], env, project)
    # ZenML prints its first-use lines ("Initializing the ZenML global configuration") first
    document = proc.stdout[proc.stdout.index("[\n") :]
    return {row["name"]: row for row in json.loads(document)}


@pytest.mark.slow
def test_two_checkouts_of_one_user_never_see_each_others_stacks_or_mlflow_stores(tmp_path):
    home = tmp_path / "home"
    home.mkdir()
    env = _same_user_env(home)
    a = new_project(tmp_path / "a").path
    b = new_project(tmp_path / "b").path

    cli(["stack", "register", "local"], env, a)
    assert "local" not in _stacks(b, env), "checkout b sees the stack registered in a"
    cli(["stack", "register", "local"], env, b)

    for project in (a, b):
        local = _stacks(project, env)["local"]
        assert local["active"]
        assert local["project"] == str(project.resolve())
        assert local["stores"]["experiment_tracker"] == (
            f"sqlite:///{project.resolve() / 'data/mlflow.db'}"
        )
        # the ZenML store (stacks, runs) and its local artifact store live in the project
        assert (project / ZENML_HOME / "config.yaml").is_file()
        store = Path(local["stores"]["artifact_store"] or "")
        assert not local["stores"]["artifact_store"] or store.is_relative_to(project)
    assert not (home / ".config" / "zenml").exists(), "ZenML wrote per-user state"


def test_a_run_refuses_a_stack_whose_mlflow_store_belongs_to_another_project(tmp_path):
    here, there = tmp_path / "here", tmp_path / "there"
    theirs = f"sqlite:///{there / 'data/mlflow.db'}"
    refusal = foreign_store(here, "local", theirs, {PROJECT_LABEL: str(there)})
    assert refusal and str(there / "data/mlflow.db") in refusal
    assert "plants-mlops stack register local" in refusal
    # a store inside the project, a tracking server, or one registered here on purpose: fine
    assert foreign_store(here, "local", f"sqlite:///{here / 'data/mlflow.db'}", {}) is None
    assert foreign_store(here, "minio", "http://mlflow.internal:5000", {}) is None
    assert foreign_store(here, "local", theirs, {PROJECT_LABEL: str(here)}) is None
