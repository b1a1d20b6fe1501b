"""The mistakes a newcomer makes first get one line that says what to do, no traceback:
the real `kedro` and `plants-mlops` commands, run in a project copy."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

from support.servers import VENV_BIN, free_port

S3_VARIABLES = ("PLANTS_S3_ENDPOINT_URL", "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY")


def _run(argv: list[str], cwd: Path, drop: tuple[str, ...] = (), **extra: str):
    env = {k: v for k, v in os.environ.items() if k not in drop}
    env.update(extra, KEDRO_DISABLE_TELEMETRY="true", COLUMNS="200")
    return subprocess.run(
        [str(VENV_BIN / argv[0]), *argv[1:]],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )


def _error_line(proc: subprocess.CompletedProcess) -> str:
    """The one error line; fails when the command succeeded or printed a traceback."""
    assert proc.returncode != 0, proc.stdout[-2000:]
    assert "Traceback" not in proc.stderr + proc.stdout, proc.stderr[-4000:]
    errors = [line for line in proc.stderr.splitlines() if line.lower().startswith("error")]
    assert len(errors) == 1, proc.stderr[-4000:]
    return errors[0]


def test_kedro_run_with_a_misspelt_pipeline_lists_the_valid_names(kedro_project):
    line = _error_line(_run(["kedro", "run", "--pipelines", "ingstion"], kedro_project.path))
    assert "unknown pipeline ingstion" in line
    for name in ("ingestion", "formatting", "training", "registry", "data"):
        assert name in line


def test_kedro_run_on_minio_without_its_variables_names_all_of_them_at_once(kedro_project):
    proc = _run(
        ["kedro", "run", "--env", "minio", "--pipelines", "ingestion"],
        kedro_project.path,
        drop=S3_VARIABLES,
    )
    line = _error_line(proc)
    assert all(name in line for name in S3_VARIABLES), line


def test_kedro_run_on_minio_with_no_s3_server_says_so(kedro_project):
    endpoint = f"http://127.0.0.1:{free_port()}"
    proc = _run(
        ["kedro", "run", "--env", "minio", "--pipelines", "ingestion"],
        kedro_project.path,
        PLANTS_S3_ENDPOINT_URL=endpoint,
        AWS_ACCESS_KEY_ID="x",
        AWS_SECRET_ACCESS_KEY="y",
    )
    line = _error_line(proc)
    assert f"no server answers at {endpoint}" in line and "docker compose" in line


def test_a_bad_cron_expression_is_refused_before_any_line_is_printed(kedro_project):
    proc = _run(["plants-mlops", "pipeline", "schedule", "--cron", "bad cron"], kedro_project.path)
    assert proc.stdout == ""
    assert "is not a cron expression" in _error_line(proc)
    assert '"0 3 * * 1"' in _error_line(proc)


def test_registering_the_gpu_stack_names_the_gpu_stack_and_every_missing_variable(
    kedro_project,
):
    needed = (*S3_VARIABLES, "MLFLOW_TRACKING_URI", "PLANTS_KUBE_CONTEXT")
    proc = _run(
        ["plants-mlops", "stack", "register", "gpu"],
        kedro_project.path,
        drop=(*needed, "PLANTS_CONTAINER_REGISTRY"),
        ZENML_CONFIG_PATH=str(kedro_project.path / "zen"),
    )
    line = _error_line(proc)
    assert "register the `gpu` stack" in line
    assert all(name in line for name in (*needed, "PLANTS_CONTAINER_REGISTRY")), line


def test_training_refuses_an_mlflow_run_id_left_in_the_shell(kedro_project):
    """An inherited MLFLOW_RUN_ID would send the run into some old run: refused before
    anything trains, in one line naming the variable and the way to allow it."""
    line = _error_line(
        _run(
            ["kedro", "run", "--pipelines", "training"],
            kedro_project.path,
            drop=("PLANTS_ALLOW_MLFLOW_RUN_ID",),
            MLFLOW_RUN_ID="0123456789abcdef",
        )
    )
    assert "MLFLOW_RUN_ID=0123456789abcdef" in line
    assert "unset MLFLOW_RUN_ID" in line and "PLANTS_ALLOW_MLFLOW_RUN_ID=1" in line
