"""`plants-mlops dashboards`: the ZenML dashboard, kedro-viz and the MLflow UI, checked in
headless Chromium (the pipeline and run names must be in the rendered page)."""

from __future__ import annotations

import re

import httpx
import pytest
from zenml_testlib import (
    ALL_STAGES,
    cli,
    pipeline_run,
    rendered_text,
    small_project,
    zenml_env,
    zenml_query,
)

from plants_mlops.orchestration.dashboards import zenml_token


def _urls(stdout: str) -> dict[str, str]:
    return dict(re.findall(r"^(zenml|kedro-viz|mlflow)\s+(http://\S+)$", stdout, re.M))


@pytest.mark.slow
def test_dashboards_render_the_zenml_run_and_the_kedro_lineage_then_stop(kedro_project, tmp_path):
    project = kedro_project.path
    small_project(project, "local", tmp_path)
    env = zenml_env(tmp_path / "zenml-home")
    stages = ["--pipelines", "ingestion", "formatting", "curation", "validation"]
    run = pipeline_run(["--stack", "local", *stages], env, project, tmp_path / "run.json")

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

        # MLflow UI on the embedded store.
        assert httpx.get(f"{urls['mlflow']}/health", timeout=10).status_code == 200
        assert "MLflow" in httpx.get(urls["mlflow"], timeout=10).text

        # Asking again reuses what runs.
        again = cli(["dashboards"], env, project)
        assert _urls(again.stdout) == urls
    finally:
        stopped = cli(["dashboards", "--stop"], env, project)
    assert "stopped zenml" in stopped.stdout
    for url in urls.values():
        with pytest.raises(httpx.HTTPError):
            httpx.get(url, timeout=5)
