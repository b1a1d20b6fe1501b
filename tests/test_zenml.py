"""The ZenML pipeline over the Kedro pipelines on the `local` stack, and
`plants-mlops dashboards` (the ZenML dashboard, kedro-viz and the MLflow UI, checked in
headless Chromium: the pipeline and run names must be in the rendered page).

Real everything: the `plants-mlops` CLI in subprocesses, ZenML's local SQLite store in a
per-session ZENML_CONFIG_PATH, MLflow's embedded SQLite store, the project's own Kedro
pipelines on a 40-image subset. (The stack commands that need no run:
tests/test_zenml_stacks.py.)
"""

from __future__ import annotations

import re
import shutil
import sqlite3
import subprocess
from pathlib import Path

import httpx
import mlflow
import pytest
from support.servers import VENV_BIN, mlflow_job_runners, mlflow_ui_workers, untraced
from zenml_testlib import (
    ALL_STAGES,
    TINY_TRAINING,
    cli,
    rendered_text,
    run_json,
    zenml_query,
)

from plants_mlops.orchestration.dashboards import zenml_token


@pytest.mark.slow
def test_pipeline_run_prints_a_line_per_stage_and_keeps_the_full_log_in_a_file(zenml_local):
    console = zenml_local.consoles[0]
    lines = console.strip().splitlines()
    for i, stage in enumerate(ALL_STAGES, 1):
        assert any(line.startswith(f"[{i}/{len(ALL_STAGES)}] {stage} ... ") for line in lines), (
            console
        )
    assert len(lines) < 30, console  # not the ZenML, Kedro and MLflow records
    full = Path(re.findall(r"full log: (\S+)", console)[-1])
    assert full.parent == zenml_local.project / "data/08_reporting"
    text = full.read_text()
    assert "plants-mlops run: pipeline=['ingestion']" in text  # a Kedro record
    assert "zenml" in text.lower() and f"[1/{len(ALL_STAGES)}] ingestion" in text


@pytest.mark.slow
def test_zenml_run_of_every_stage_links_mlflow_and_reuses_training_only_for_unchanged_data(
    zenml_local, tmp_path
):
    env, project = zenml_local.env, zenml_local.project
    registered = zenml_local.registered
    assert "stack local registered and active" in registered.stdout
    assert "validation: ok" in registered.stdout
    run = zenml_local.first
    assert run["status"] == "completed" and run["stack"] == "local"
    assert run["stages"] == ALL_STAGES
    assert run["cached"] == []
    s = run["summaries"]
    fingerprint = (project / "data/03_primary/dataset_fingerprint.json").read_text()
    assert s["formatting"]["dataset_fingerprint"] in fingerprint
    assert s["formatting"]["counts"]["n_images"] == 40
    assert s["validation"]["verdict"] == "passed"
    run_id = s["training"]["mlflow_run_id"]
    assert run_id and s["registry"]["mlflow_run_id"] == run_id
    assert s["registry"]["model_version"] and s["registry"]["verdict"]

    # The Kedro nodes logged into the experiment tracker's run (ZenML tags it).
    client = mlflow.MlflowClient(env["MLFLOW_TRACKING_URI"])
    mlrun = client.get_run(run_id)
    assert mlrun.data.tags.get("zenml") and mlrun.info.run_name == run["run_name"]
    assert "test/f1_macro" in mlrun.data.metrics and "eval/f1_macro" in mlrun.data.metrics
    mv = client.get_model_version("plants-classifier", s["registry"]["model_version"])
    assert mv.run_id == run_id
    # Artifacts in the project's data/mlartifacts, recorded relative to it (the tracker
    # made the experiment: ./mlruns, an absolute path a moved project could not load).
    experiment = client.get_experiment(mlrun.info.experiment_id)
    assert experiment.artifact_location == f"data/mlartifacts/{experiment.experiment_id}"
    assert not (project / "mlruns").exists()

    # ZenML: the run with its six steps and their metadata, and the model version linked
    # to the MLflow registry version.
    seen = zenml_query(
        f"""
        r = client.get_pipeline_run("{run["run_id"]}")
        mv = client.get_model_version("plants-classifier", r.model_version.name)
        result = {{"steps": sorted(r.steps),
                   "training_meta": dict(r.steps["training"].run_metadata),
                   "mv_meta": dict(mv.run_metadata),
                   "mv_tags": [t.name for t in mv.tags],
                   "validation_outputs": {{n: [v.uri for v in vs] for n, vs in
                                           r.steps["validation"].outputs.items()}},
                   "report_visualizations": [v.type.value for v in r.steps["validation"]
                       .outputs["validation_report_html"][0].visualizations or []],
                   "local_stacks": len([x for x in client.list_stacks(size=100).items
                                        if x.name == "local"]),
                   "components": {{t.value: [c.name for c in cs] for t, cs in
                                   client.active_stack_model.components.items()}}}}
    """,
        env,
        project,
    )
    assert seen["steps"] == sorted(run["stages"])
    # Each step shows the Kedro datasets it wrote, by their own URI (nothing copied), and
    # its HTML report as a visualization.
    reporting = project.resolve() / "data" / "08_reporting"
    outputs = seen["validation_outputs"]
    assert outputs["kedro.validation_report"] == [str(reporting / "validation_report.json")]
    assert outputs["kedro.validation_report_html"] == [str(reporting / "validation_report.html")]
    assert seen["report_visualizations"] == ["html"]
    # `--stack local` registered the stack a second time: still one stack, same components.
    assert seen["local_stacks"] == 1
    assert seen["components"] == {
        "orchestrator": ["plants-local"],
        "artifact_store": ["plants-local-store"],
        "experiment_tracker": ["plants-mlflow-local"],
        "model_registry": ["plants-mlflow-registry-local"],
    }
    assert seen["training_meta"]["mlflow_run_id"] == run_id
    assert seen["mv_meta"]["mlflow_model_version"] == s["registry"]["model_version"]
    assert f"mlflow-version:{s['registry']['model_version']}" in seen["mv_tags"]
    runs = subprocess.run(
        [str(VENV_BIN / "zenml"), "pipeline", "runs", "list"],
        cwd=project,
        env=untraced(env),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert run["run_name"] in runs.stdout

    # Same data: training comes from the cache; the steps that read the registry run again.
    run2 = zenml_local.run(["--params", *TINY_TRAINING])
    assert run2["cached"] == ["training"]
    assert run2["summaries"]["training"]["mlflow_run_id"] == run_id

    # Model outputs gone from the catalog: the cache is not trusted for the model steps.
    plan_file = tmp_path / "plan.json"
    moved = tmp_path / "06_models"
    (project / "data/06_models").rename(moved)
    (project / "data/06_models").mkdir()
    cli(["pipeline", "run", "--dry-run", "--json-out", str(plan_file)], env, project)
    assert run_json(plan_file)["steps"]["training"]["enable_cache"] is False
    (project / "data/06_models").rmdir()
    moved.rename(project / "data/06_models")

    # Changed data (one image of each label leaves the table): a new fingerprint, so
    # training runs again.
    db_path = env["PLANTS_DB_URL"].removeprefix("sqlite:///")
    with sqlite3.connect(db_path) as conn:
        conn.execute(
            "DELETE FROM plants_data WHERE id IN (SELECT max(id) FROM plants_data GROUP BY label)"
        )
    run3 = zenml_local.run(["--params", *TINY_TRAINING])
    assert (
        run3["summaries"]["formatting"]["dataset_fingerprint"]
        != s["formatting"]["dataset_fingerprint"]
    )
    assert "training" not in run3["cached"]
    assert run3["summaries"]["training"]["mlflow_run_id"] != run_id


def _urls(stdout: str) -> dict[str, str]:
    return dict(re.findall(r"^(zenml|kedro-viz|mlflow)\s+(http://\S+)$", stdout, re.M))


@pytest.mark.slow
def test_each_task_environment_runs_under_its_own_zenml_model(zenml_local, tmp_path):
    """A run's ZenML Model is its environment's registered model: the shipped task's
    `plants-classifier`, another task's own (before: `plants-classifier` for every task)."""
    env, project = zenml_local.env, zenml_local.project
    cli(["task", "init", "weeds", "--labels", "clover,moss,thistle"], env, project)
    models = {}
    try:
        for kedro_env in ("local", "weeds"):
            plan_file = tmp_path / f"{kedro_env}.json"
            args = ["--env", kedro_env, "--pipelines", "ingestion", "--dry-run"]
            cli(["pipeline", "run", *args, "--json-out", str(plan_file)], env, project)
            models[kedro_env] = run_json(plan_file)["model"]
    finally:
        shutil.rmtree(project / "conf" / "weeds")
    assert models == {"local": "plants-classifier", "weeds": "weeds-classifier"}


@pytest.mark.slow
def test_dashboards_render_the_zenml_run_and_the_kedro_lineage_then_stop(zenml_local, tmp_path):
    # The session's ZenML home and project, where the full pipeline ran (and where the
    # ZenML pipeline test may have made later runs: the link is to the latest).
    project, env = zenml_local.project, zenml_local.env
    run = zenml_local.latest

    try:
        started = cli(["dashboards"], env, project)
        urls = _urls(started.stdout)
        assert set(urls) == {"zenml", "kedro-viz", "mlflow"}
        assert httpx.get(f"{urls['zenml']}/health", timeout=10).status_code == 200

        # ZenML dashboard: the run list (not the onboarding survey) with our run.
        runs_page = rendered_text(f"{urls['zenml']}/projects/default/runs")
        assert "Survey" not in runs_page
        assert run["run_name"] in runs_page and "plants_mlops" in runs_page
        # ... and a direct link to the run just made.
        latest = re.search(r"^latest run\s+(http://\S+)$", started.stdout, re.M)
        assert (
            latest and latest.group(1) == f"{urls['zenml']}/projects/default/runs/{run['run_id']}"
        )

        # The Kedro datasets the steps wrote and the validation report's HTML are outputs of
        # the run's steps, and the report is served as the HTML visualization the dashboard
        # shows, which renders in Chromium.
        outputs = zenml_query(
            f"""
        r = client.get_pipeline_run("{run["run_id"]}")
        result = {{n: str(vs[0].id) for n, vs in r.steps["validation"].outputs.items()}}
    """,
            env,
            project,
        )
        assert {"validation", "kedro.validation_report", "validation_report_html"} <= set(outputs)
        version_id = outputs["validation_report_html"]
        token = zenml_token(urls["zenml"])
        shown = httpx.get(
            f"{urls['zenml']}/api/v1/artifact_versions/{version_id}/visualize",
            headers={"Authorization": f"Bearer {token}"},
            timeout=30,
        ).json()
        assert shown["type"] == "html"
        page = tmp_path / "visualization.html"
        page.write_text(shown["value"])
        visible = rendered_text(page.as_uri(), budget_ms=2000)
        assert "Validation report" in visible and "checks passed" in visible

        # kedro-viz: every pipeline and the nodes of the default one, on five layers.
        viz = rendered_text(urls["kedro-viz"])
        for name in (
            *ALL_STAGES,
            "ingest_images",
            "build_dataset_index",
            "train_model",
        ):
            assert name in viz, name
        layers = httpx.get(f"{urls['kedro-viz']}/api/main", timeout=30).json()["layers"]
        assert layers == ["raw", "intermediate", "primary", "models", "reporting"]

        # MLflow UI on the embedded store, without MLflow's job runner (it and its Huey
        # consumers: nine more processes importing mlflow, for jobs nothing submits), and
        # from one process: a local UI for one user, not `mlflow ui`'s four uvicorn workers
        # (each imports mlflow: four times the start-up CPU and memory).
        assert httpx.get(f"{urls['mlflow']}/health", timeout=10).status_code == 200
        assert "MLflow" in httpx.get(urls["mlflow"], timeout=10).text
        assert mlflow_job_runners(project) == []
        assert mlflow_ui_workers(project) == []

        # Asking again reuses what runs.
        again = cli(["dashboards"], env, project)
        assert _urls(again.stdout) == urls
    finally:
        stopped = cli(["dashboards", "--stop"], env, project)
    assert "stopped zenml" in stopped.stdout
    for url in urls.values():
        with pytest.raises(httpx.HTTPError):
            httpx.get(url, timeout=5)
