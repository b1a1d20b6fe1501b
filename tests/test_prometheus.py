"""Prometheus for real: promtool checks the configs and the rules and runs the alert unit
tests; then a real Prometheus and Pushgateway (Debian's) scrape the real API under uvicorn
and the monitoring pipeline's pushed verdict, on free 127.0.0.1 ports, with the compose
config from deploy/prometheus rendered with those ports and 1 s intervals."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import subprocess
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from unittest import mock

import httpx
import numpy as np
import pandas as pd
import pytest
import yaml
from support import images, servers
from support.champion import register_champion, unique_model_name
from support.params import base_labels
from support.prereqs import need
from support.serving import running_api

ROOT = Path(__file__).resolve().parents[1]
PROM = ROOT / "deploy" / "prometheus"
DASHBOARD = ROOT / "deploy" / "grafana" / "dashboards" / "plants-mlops.json"
N_PREDICTIONS = 40
N_REJECTED = 4


def _promtool(*args: str, cwd: Path = PROM) -> subprocess.CompletedProcess:
    promtool = need("promtool", "Debian package prometheus (scripts/test-prereqs.sh)")
    return subprocess.run([promtool, *args], cwd=cwd, capture_output=True, text=True, timeout=120)


def _alert_names() -> list[str]:
    groups = yaml.safe_load((PROM / "rules" / "alerts.yml").read_text())["groups"]
    return [r["alert"] for g in groups for r in g["rules"] if "alert" in r]


# -- promtool --------------------------------------------------------------------------


@pytest.mark.parametrize("config", ["prometheus.yml", "prometheus-k8s.yml"])
def test_promtool_accepts_the_config_and_its_rule_files(config):
    proc = _promtool("check", "config", config)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "SUCCESS: 2 rule files found" in proc.stdout


def test_promtool_accepts_the_rules():
    proc = _promtool("check", "rules", "rules/recording.yml", "rules/alerts.yml")
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_promtool_unit_tests_pass_and_make_every_alert_fire():
    proc = _promtool("test", "rules", "tests/alerts.test.yml")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "SUCCESS" in proc.stdout
    suite = yaml.safe_load((PROM / "tests" / "alerts.test.yml").read_text())
    fired = {
        case["alertname"]
        for test in suite["tests"]
        for case in test.get("alert_rule_test", [])
        if case.get("exp_alerts")
    }
    expected = {
        "PlantsApiDown",
        "PlantsNoModelLoaded",
        "PlantsHigh5xxRatio",
        "PlantsPredictLatencyOverBudget",
        "PlantsDriftDetected",
        "PlantsNoTraffic",
    }
    assert expected <= set(_alert_names())
    assert set(_alert_names()) == fired  # no alert without a firing test


# -- a live Prometheus -------------------------------------------------------------------


@dataclass
class MonitoringStack:
    api_url: str
    prometheus_url: str
    pushgateway_url: str
    model_version: str
    config_path: Path
    predicted: Counter = field(default_factory=Counter)
    done: set = field(default_factory=set)

    def query(self, expr: str) -> list[dict]:
        r = httpx.get(f"{self.prometheus_url}/api/v1/query", params={"query": expr}, timeout=10)
        body = r.json()
        assert r.status_code == 200 and body["status"] == "success", (expr, body)
        return body["data"]["result"]

    def wait_for(self, expr: str, ok: Callable[[list[dict]], bool], timeout: float = 30):
        deadline = time.monotonic() + timeout
        while True:
            result = self.query(expr)
            if ok(result):
                return result
            if time.monotonic() > deadline:
                raise AssertionError(f"{expr} never satisfied the check: {result}")
            time.sleep(0.5)

    def send_traffic(self) -> None:
        """Real uploads: N predictions of both classes and inputs the API refuses, in two
        halves with a scrape between them (a series is born with its first request, and a
        rate needs two samples that differ)."""
        if "traffic" in self.done:
            return
        self.wait_for('up{job="plants-api"} == 1', bool)
        half_p, half_r = N_PREDICTIONS // 2, N_REJECTED // 2
        with httpx.Client(base_url=self.api_url, timeout=30) as c:
            self._send(c, range(half_p), half_r)
            self.wait_for('plants_rejected_inputs_total{job="plants-api"}', bool)
            self.wait_for(
                f'plants_predictions_total{{job="plants-api", model_version="{self.model_version}"}}',
                bool,
            )
            time.sleep(1.5)  # at least one more scrape of the first half
            self._send(c, range(half_p, N_PREDICTIONS), N_REJECTED - half_r)
        self.done.add("traffic")

    def _send(self, c: httpx.Client, indices: range, n_rejected: int) -> None:
        for i in indices:
            label = base_labels()[i % len(base_labels())]
            data = images.sample_jpeg(i, label)
            r = c.post("/predict", files={"file": ("x.jpg", data, "image/jpeg")})
            assert r.status_code == 200, r.text
            assert r.json()["model_version"] == self.model_version
            self.predicted[r.json()["label"]] += 1
        for _ in range(n_rejected):
            r = c.post("/predict", files={"file": ("x.jpg", b"not an image", "image/jpeg")})
            assert 400 <= r.status_code < 500, r.text

    def push_drift_verdict(self) -> dict:
        """Run the monitoring pipeline's report -> verdict -> metrics nodes in process on a
        drifted window, with the real catalog entry pushing to the Pushgateway."""
        if "drift" not in self.done:
            self.verdict = run_monitoring_tail(self.pushgateway_url, self.config_path.parent)
            self.done.add("drift")
        return self.verdict


def _frames(stat_columns: list[str]) -> tuple[pd.DataFrame, pd.DataFrame]:
    """A reference like the training split and a current window of darker images."""
    rng = np.random.default_rng(0)

    def frame(n: int, shift: float) -> pd.DataFrame:
        data = {c: rng.normal(100.0, 15.0, n) for c in stat_columns}
        for c in ("brightness", "mean_r", "mean_g", "mean_b"):
            data[c] = data[c] * shift
        data["label"] = rng.choice(list(base_labels()), n)
        data["confidence"] = rng.uniform(0.6, 1.0, n)
        for j in range(8):
            data[f"emb_{j:04d}"] = rng.normal(0.0 if shift == 1.0 else 1.5, 1.0, n)
        return pd.DataFrame(data)

    return frame(40, 0.45), frame(120, 1.0)  # min_current_rows is 30


def run_monitoring_tail(pushgateway_url: str, work: Path) -> dict:
    from kedro.config import OmegaConfigLoader
    from kedro.io import DataCatalog
    from kedro.runner import SequentialRunner
    from kedro_datasets.json import JSONDataset

    from plants_mlops.pipelines.monitoring.pipeline import create_pipeline
    from plants_mlops.settings import CONFIG_LOADER_ARGS

    with mock.patch.dict(os.environ, {"PLANTS_PUSHGATEWAY_URL": pushgateway_url}):
        loader = OmegaConfigLoader(conf_source=str(ROOT / "conf"), **CONFIG_LOADER_ARGS)
        params = loader["parameters"]["monitoring"]
        entry = loader["catalog"]["monitoring_metrics"]
    assert entry["gateway"] == pushgateway_url
    catalog = DataCatalog.from_config({"monitoring_metrics": entry})
    current, reference = _frames(list(params["stat_columns"]))
    catalog["monitoring_current"] = current
    catalog["monitoring_reference"] = reference
    catalog["params:monitoring"] = params
    catalog["kedro_env"] = ""  # the run's --env (the project's hook sets it): none
    # on disk: the runner releases memory datasets once their consumers ran
    catalog["monitoring_verdict"] = JSONDataset(filepath=str(work / "verdict.json"))
    pipeline = create_pipeline().from_inputs("monitoring_current", "monitoring_reference")
    assert "verdict_metrics" in {n.name for n in pipeline.nodes}
    SequentialRunner().run(pipeline, catalog)
    return catalog.load("monitoring_verdict")


def _start_on(port: int, log: Path, binary: str, *args: str) -> servers.ManagedProcess:
    """Prometheus or the Pushgateway on 127.0.0.1:port (both answer /-/ready)."""
    argv = [binary, *args, f"--web.listen-address=127.0.0.1:{port}"]
    ready = f"http://127.0.0.1:{port}/-/ready"
    return servers.ManagedProcess(Path(binary).name, argv, ready, log_path=log).start(60)


@pytest.fixture(scope="module")
def stack(tmp_path_factory, mlflow_tracking_uri) -> Iterator[MonitoringStack]:
    prometheus = need("prometheus", "Debian package prometheus (scripts/test-prereqs.sh)")
    pushgateway = need(
        "prometheus-pushgateway", "Debian package prometheus-pushgateway (scripts/test-prereqs.sh)"
    )
    work = tmp_path_factory.mktemp("prometheus")
    name = unique_model_name()
    version = register_champion(mlflow_tracking_uri, name=name).version
    with contextlib.ExitStack() as stop:
        pgw_port = servers.free_port()
        stop.callback(_start_on(pgw_port, work / "pushgateway.log", pushgateway).stop)
        api = stop.enter_context(
            running_api(
                work / "api",
                tracking_uri=mlflow_tracking_uri,
                model_name=name,
                env={"PLANTS_SERVE_WORKERS": "2"},  # serve's default on two cores: per pid
            )
        )
        prom_port = servers.free_port()
        config = render_config(work, api.url.removeprefix("http://"), pgw_port, prom_port)
        args = (f"--config.file={config}", f"--storage.tsdb.path={work / 'tsdb'}")
        stop.callback(_start_on(prom_port, work / "prometheus.log", prometheus, *args).stop)
        yield MonitoringStack(
            api_url=api.url,
            prometheus_url=f"http://127.0.0.1:{prom_port}",
            pushgateway_url=f"http://127.0.0.1:{pgw_port}",
            model_version=version,
            config_path=config,
        )


def render_config(work: Path, api_address: str, pgw_port: int, prom_port: int) -> Path:
    """deploy/prometheus/prometheus.yml with this run's ports and 1 s intervals."""
    text = (PROM / "prometheus.yml").read_text()
    replacements = {
        '"api:8000"': f'"{api_address}"',
        '"pushgateway:9091"': f'"127.0.0.1:{pgw_port}"',
        '"localhost:9090"': f'"127.0.0.1:{prom_port}"',
        "scrape_interval: 15s": "scrape_interval: 1s",
        "evaluation_interval: 15s": "evaluation_interval: 1s",
    }
    for old, new in replacements.items():
        assert old in text, old
        text = text.replace(old, new)
    shutil.copytree(PROM / "rules", work / "rules")
    path = work / "prometheus.yml"
    path.write_text(text)
    proc = _promtool("check", "config", str(path), cwd=work)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return path


def test_prometheus_finds_predictions_by_label_and_model_version_and_the_latency_histogram(
    stack,
):
    stack.send_traffic()
    api = 'job="plants-api"'
    version = f'model_version="{stack.model_version}"'
    stack.wait_for(
        f"sum(plants_predictions_total{{{api}, {version}}})",
        lambda r: r and float(r[0]["value"][1]) == N_PREDICTIONS,
    )
    by_label = stack.query(f"sum by (label, model_version) (plants_predictions_total{{{api}}})")
    scraped = {
        s["metric"]["label"]: int(float(s["value"][1]))
        for s in by_label
        if s["metric"]["model_version"] == stack.model_version
    }
    # what Prometheus counted is what the API answered, class by class
    assert scraped == {k: v for k, v in stack.predicted.items() if v}
    assert set(scraped) <= set(base_labels())
    served = stack.query(f"plants_model_version_info{{{api}}}")
    assert [s["metric"]["version"] for s in served] == [stack.model_version]

    count = stack.wait_for(
        f'plants_http_request_duration_seconds_count{{{api}, route="/predict"}}',
        lambda r: r and float(r[0]["value"][1]) == N_PREDICTIONS + N_REJECTED,
    )
    assert count
    buckets = stack.query(f'plants_http_request_duration_seconds_bucket{{{api}, route="/predict"}}')
    by_le = {s["metric"]["le"]: float(s["value"][1]) for s in buckets}
    assert by_le["+Inf"] == N_PREDICTIONS + N_REJECTED
    cumulative = [by_le[le] for le in sorted(by_le, key=float)]
    assert cumulative == sorted(cumulative) and len(cumulative) > 5  # a real histogram
    p99 = stack.wait_for(
        "job_route:plants_http_request_duration_seconds:p99_5m"
        f'{{{api}, route="/predict"}}',  # the recording rule, evaluated every second
        lambda r: r and float(r[0]["value"][1]) > 0,
    )
    assert 0 < float(p99[0]["value"][1]) < 2.5
    rejected = stack.query(f"sum(plants_rejected_inputs_total{{{api}}})")
    assert float(rejected[0]["value"][1]) == N_REJECTED


def test_a_drift_verdict_of_the_monitoring_pipeline_fires_the_drift_alert(stack):
    verdict = stack.push_drift_verdict()
    assert verdict["status"] == "drift", verdict["reasons"]
    stack.wait_for(
        'plants_monitoring_verdict{job="plants-monitoring", status="drift"}',
        lambda r: r and float(r[0]["value"][1]) == 1,
    )
    deadline = time.monotonic() + 30
    while True:
        alerts = httpx.get(f"{stack.prometheus_url}/api/v1/alerts", timeout=10).json()
        firing = {
            a["labels"]["alertname"]: a for a in alerts["data"]["alerts"] if a["state"] == "firing"
        }
        if "PlantsDriftDetected" in firing or time.monotonic() > deadline:
            break
        time.sleep(0.5)
    assert "PlantsDriftDetected" in firing, alerts
    assert firing["PlantsDriftDetected"]["labels"]["severity"] == "warning"
    # the API is up and serves a model: its alerts stay quiet
    assert not {"PlantsApiDown", "PlantsNoModelLoaded"} & set(firing)
    rules = httpx.get(f"{stack.prometheus_url}/api/v1/rules", timeout=10).json()
    assert all(r["health"] == "ok" for g in rules["data"]["groups"] for r in g["rules"])


def test_every_grafana_panel_query_returns_data(stack):
    stack.send_traffic()
    stack.push_drift_verdict()
    dashboard = json.loads(DASHBOARD.read_text())
    report = []
    for panel in dashboard["panels"]:
        assert panel["datasource"]["uid"] == "prometheus"
        assert panel["targets"], panel["title"]
        for target in panel["targets"]:
            result = stack.wait_for(target["expr"], bool, timeout=30)
            values = sorted(
                (json.dumps(s["metric"], sort_keys=True), s["value"][1]) for s in result
            )
            report.append((panel["title"], target["legendFormat"], values))
    # printed for docs and reviews (pytest -s shows them)
    for title, legend, values in report:
        print(f"{title} [{legend}]: {values}")
    assert len({r[0] for r in report}) == len(dashboard["panels"])
    # One API instance of two workers is one pod with a model (the sum counted 2), and the
    # version panel shows the version served, not a zero for each one served before.
    served = {legend: values for title, legend, values in report if title.startswith("Model")}
    assert [v for _, v in served["pods with a model"]] == ["1"], served
    assert all(v == "1" for _, v in served["{{instance}} v{{version}}"]), served


def test_without_a_pushgateway_url_the_metrics_dataset_is_configured_to_push_nothing():
    from kedro.config import OmegaConfigLoader
    from kedro.io import DataCatalog

    from plants_mlops.pipelines.monitoring.metrics import verdict_metrics
    from plants_mlops.settings import CONFIG_LOADER_ARGS

    env = {k: v for k, v in os.environ.items() if k != "PLANTS_PUSHGATEWAY_URL"}
    with mock.patch.dict(os.environ, env, clear=True):
        loader = OmegaConfigLoader(conf_source=str(ROOT / "conf"), **CONFIG_LOADER_ARGS)
        entry = loader["catalog"]["monitoring_metrics"]
    assert entry["gateway"] is None
    catalog = DataCatalog.from_config({"monitoring_metrics": entry})
    verdict = {
        "status": "insufficient_data",
        "n_current": 3,
        "n_reference": 200,
        "at": "2026-11-23T12:00:00+00:00",
    }
    metrics = verdict_metrics(verdict)
    assert metrics["plants_monitoring_verdict"]["samples"] == [
        {"labels": {"status": s}, "value": float(s == "insufficient_data")}
        for s in ("drift", "no_drift", "insufficient_data")
    ]
    catalog.save("monitoring_metrics", metrics)  # no gateway: a no-op, not an error
