"""The orchestration layer's own logic, in process and without a ZenML server: the cache key
of a stage, the summaries its steps return, and the layering rules stage code follows."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from plants_mlops.contracts import STAGES
from plants_mlops.orchestration import kedro_stage
from plants_mlops.orchestration.summaries import step_summary
from plants_mlops.pipelines.evaluation.nodes import compile_report
from plants_mlops.summaries import StageSummary

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "src" / "plants_mlops"


@pytest.fixture
def package_copy(tmp_path) -> Path:
    dest = tmp_path / "plants_mlops"
    shutil.copytree(PACKAGE, dest, ignore=shutil.ignore_patterns("__pycache__", "static", "data"))
    return dest


@pytest.mark.parametrize(
    "module", ["model/train.py", "model/architectures.py", "model/data.py", "imaging.py"]
)
def test_training_cache_key_changes_with_every_module_that_shapes_the_model(package_copy, module):
    before = kedro_stage.config_hash(ROOT, "local", "training", root=package_copy)
    with open(package_copy / module, "a") as f:
        f.write("\n# a change that could change the model\n")
    after = kedro_stage.config_hash(ROOT, "local", "training", root=package_copy)
    assert before != after, f"a change to {module} must not reuse a cached model"


def test_training_cache_key_ignores_code_training_never_runs(package_copy):
    before = kedro_stage.config_hash(ROOT, "local", "training", root=package_copy)
    with open(package_copy / "serving" / "app.py", "a") as f:
        f.write("\n# the API changed, the model did not\n")
    assert kedro_stage.config_hash(ROOT, "local", "training", root=package_copy) == before


def test_stage_modules_follow_imports_inside_functions_and_relative_ones():
    names = {str(p.relative_to(PACKAGE)) for p in kedro_stage.stage_modules("training")}
    # pipeline.py imports .nodes (relative); nodes import model.* inside functions
    assert {
        "pipelines/training/pipeline.py",
        "pipelines/training/nodes.py",
        "model/train.py",
        "model/architectures.py",
        "model/artifact.py",
        "imaging.py",
        "params.py",
    } <= names


@pytest.mark.parametrize("stage", [*STAGES, "monitoring"])
def test_stage_code_never_imports_serving_or_the_cli(stage):
    reached = {str(p.relative_to(PACKAGE)) for p in kedro_stage.stage_modules(stage)}
    offenders = sorted(
        m for m in reached if m.startswith(("serving/", "commands/")) or m == "cli.py"
    )
    assert not offenders, f"{stage} reaches {offenders}"


def test_datasets_never_import_serving():
    for path in sorted((PACKAGE / "datasets").glob("*.py")):
        reached = kedro_stage._imports(path, PACKAGE)
        assert not [p for p in reached if "serving" in p.parts], path.name


def _evaluation_summary(champion: dict) -> dict:
    candidate = {
        "n": 59,
        "accuracy": 0.95,
        "precision_macro": 0.95,
        "recall_macro": 0.95,
        "f1_macro": 0.949,
        "roc_auc": 0.99,
        "confusion_matrix": [[28, 2], [1, 28]],
        "labels": ["dandelion", "grass"],
        # per image: true label and the two class probabilities, as the confusion matrix
        "predictions": {
            "labels": [0] * 30 + [1] * 29,
            "probabilities": [[0.9, 0.1]] * 28
            + [[0.4, 0.6]] * 2
            + [[0.55, 0.45]]
            + [[0.2, 0.8]] * 28,
        },
    }
    baselines = {"majority_class": {"f1_macro": 0.3}, "colour_histogram_logreg": {"f1_macro": 0.8}}
    training_report = {"mlflow_run_id": "run-new", "dataset_fingerprint": "f" * 64}
    from support.params import stage_params

    params = stage_params("evaluation", mlflow={"log_to_run": False})
    return compile_report(candidate, baselines, champion, training_report, params)[2]


def test_an_evaluation_step_never_reports_the_champion_version_as_its_own():
    champion = {"version": "3", "run_id": "run-old", "f1_macro": 0.93}
    summary = step_summary(_evaluation_summary(champion), "local", 1.0)
    assert summary.model_version is None  # evaluation registers nothing
    assert summary.champion_version == "3"
    assert summary.mlflow_run_id == "run-new"
    assert summary.metrics["test_f1_macro"] == pytest.approx(0.949)
    assert summary.metrics["champion_f1_macro"] == pytest.approx(0.93)


def test_a_step_summary_carries_the_fingerprint_forward_and_keys_the_cache_on_it():
    upstream = step_summary(
        StageSummary(stage="formatting", dataset_fingerprint="a" * 64), "local", 2.0
    )
    ingestion_like = StageSummary(stage="validation", counts={"checks": 12}, verdict="passed")
    summary = step_summary(ingestion_like, "local", 0.5, upstream)
    assert summary.dataset_fingerprint == "a" * 64
    assert summary.data_key == f"{'a' * 64}:"
    assert summary.metadata()["count_checks"] == 12


def test_a_stage_summary_refuses_fields_it_does_not_know():
    with pytest.raises(ValueError, match="extra"):
        StageSummary.model_validate({"stage": "registry", "version": "3"})


def test_dashboards_start_at_once_and_a_failed_one_leaves_the_others_stoppable(
    tmp_path, monkeypatch
):
    """`dashboards` starts its UIs side by side; when one fails, the ones that came up are
    recorded, so `dashboards --stop` still ends them, and the failure is raised."""
    import sys
    import threading

    import httpx

    from plants_mlops.errors import UserFacingError
    from plants_mlops.orchestration import dashboards

    both_waiting = threading.Barrier(2, timeout=30)  # each starter waits for the other

    def web(project: Path, state: Path) -> tuple[str, int]:
        port = dashboards._port("PLANTS_TEST_UNSET_PORT")
        argv = [sys.executable, "-m", "http.server", str(port), "--bind", dashboards.HOST]
        both_waiting.wait()
        return dashboards._serve("web", argv, port, "/", project, state, 60)

    def broken(project: Path, state: Path) -> tuple[str, int]:
        both_waiting.wait()
        raise UserFacingError("broken failed to start; see its log")

    monkeypatch.setattr(dashboards, "STARTERS", {"web": web, "broken": broken})
    with pytest.raises(UserFacingError, match="broken failed"):
        dashboards.start_all(tmp_path)
    state = json.loads((tmp_path / "data" / "dashboards" / "state.json").read_text())
    assert list(state) == ["web"]
    url = state["web"]["url"]
    assert httpx.get(url, timeout=10).status_code == 200

    assert dashboards.stop_all(tmp_path) == [f"stopped web ({url})"]
    with pytest.raises(httpx.HTTPError):
        httpx.get(url, timeout=5)


def test_dashboard_ports_stay_below_the_ephemeral_range_and_skip_a_port_in_use(monkeypatch):
    """A UI's port must be free to bind, not only free of listeners: a port held as the
    local end of a connection passed the old connect test, and a port in the kernel's
    ephemeral range can be taken by any outgoing connection before the UI binds it (the
    ZenML daemon of `plants-mlops dashboards` then died: "TCP port ... is not available")."""
    import socket
    from types import SimpleNamespace

    from plants_mlops.orchestration import dashboards

    low = int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    ports = [dashboards._port("PLANTS_TEST_UNSET_PORT") for _ in range(50)]
    assert all(20000 <= p < low for p in ports), ports

    with socket.socket() as held:  # bound, not listening: what a connection's local end is
        for candidate in range(20000, low):
            try:
                held.bind((dashboards.HOST, candidate))
                break
            except OSError:
                continue
        taken = held.getsockname()[1]
        draws = iter([taken, taken + 1 if taken + 1 < low else taken - 1])
        monkeypatch.setattr(dashboards, "random", SimpleNamespace(randint=lambda a, b: next(draws)))
        port = dashboards._port("PLANTS_TEST_UNSET_PORT")
    assert port != taken
    assert dashboards._ephemeral_low() == low


_CACHE_SETTINGS = """
import json
from plants_mlops.orchestration import steps
policy = steps.STEPS["training"].configuration.cache_policy
print("RESULT=" + json.dumps({
    "cache": {name: step.configuration.enable_cache for name, step in steps.STEPS.items()},
    "cached_stages": list(steps.CACHED_STAGES),
    "values": policy.include_artifact_values,
    "ids": policy.include_artifact_ids,
}))
"""


def test_only_training_may_come_from_the_zenml_cache(tmp_path):
    """Evaluation, behaviour and registry read the MLflow registry (the champion, the
    versions): a rollback or a wiped store must never be hidden by a cached step. Read from
    the real step objects, in a script of its own (ZenML resolves a step's sources from the
    main module's file, which a pytest-xdist worker has not)."""
    import os
    import subprocess
    import sys

    script = tmp_path / "cache_settings.py"
    script.write_text(_CACHE_SETTINGS)
    env = {**os.environ, "ZENML_CONFIG_PATH": str(tmp_path / "zenml")}
    proc = subprocess.run(
        [sys.executable, str(script)],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    lines = [x for x in proc.stdout.splitlines() if x.startswith("RESULT=")]
    assert lines, proc.stdout[-3000:] + proc.stderr[-6000:]
    got = json.loads(lines[0][len("RESULT=") :])
    # None: the pipeline's setting (on unless --no-cache); False: never cached.
    cache = got["cache"]
    assert cache == {name: (None if name == "training" else False) for name in cache}
    assert {"evaluation", "behaviour", "registry"} <= set(cache)
    assert got["cached_stages"] == ["training"]
    # Training's key is the fingerprint's value, not the ID of whichever artifact carried it.
    assert got["values"] and not got["ids"]
