"""MLflow through explicit clients: the embedded store and the one artifact format."""

from __future__ import annotations

import shutil

import mlflow
import pytest
from support.champion import register_champion

from plants_mlops.contracts import ALIAS_CHAMPION, REGISTERED_MODEL_NAME
from plants_mlops.model import artifact, registry, tracking

EMBEDDED = "sqlite:///data/mlflow.db"


def test_the_embedded_store_records_artifacts_relative_to_the_project_so_a_copy_works(
    tmp_path, monkeypatch
):
    first = tmp_path / "first"
    (first / "data").mkdir(parents=True)
    monkeypatch.chdir(first)
    champion = register_champion(EMBEDDED)
    cl = tracking.client(EMBEDDED, must_exist=True)
    location = cl.get_experiment_by_name("serving-tests").artifact_location
    assert (
        location == f"data/mlartifacts/{cl.get_experiment_by_name('serving-tests').experiment_id}"
    )

    # The project (data/ with it) is copied elsewhere and the original removed.
    second = tmp_path / "second"
    shutil.copytree(first, second)
    shutil.rmtree(first)
    monkeypatch.chdir(second)
    cl = tracking.client(EMBEDDED, must_exist=True)
    loaded = artifact.load_registered(cl, f"models:/{REGISTERED_MODEL_NAME}@{ALIAS_CHAMPION}")
    assert loaded.version == champion.version and loaded.meta.mlflow_run_id == champion.run_id
    assert registry.alias_version(cl, ALIAS_CHAMPION) == champion.version


def test_clients_never_touch_mlflow_process_state(tmp_path, monkeypatch):
    """Logging, registering and loading through two stores in one process leaves MLflow's
    process-wide tracking URI and active run alone (no reset fixture is needed)."""
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    before = mlflow.get_tracking_uri()
    a = register_champion(f"sqlite:///{tmp_path / 'a' / 'mlflow.db'}")
    b = register_champion(f"sqlite:///{tmp_path / 'b' / 'mlflow.db'}", seed=1)
    assert mlflow.get_tracking_uri() == before and mlflow.active_run() is None
    for store, champion in (("a", a), ("b", b)):
        cl = tracking.client(f"sqlite:///{tmp_path / store / 'mlflow.db'}", must_exist=True)
        assert registry.alias_version(cl, ALIAS_CHAMPION) == champion.version == "1"


def test_a_graph_that_breaks_the_contract_is_refused_before_it_is_logged(tmp_path):
    from support.champion import _contract_breaking_model, serving_meta

    cl = tracking.client(f"sqlite:///{tmp_path / 'mlflow.db'}")
    run = cl.create_run(tracking.experiment_id(cl, "contract"))
    broken = _contract_breaking_model().SerializeToString()
    with pytest.raises(artifact.ModelLoadError, match="breaks the serving contract"):
        artifact.log_serving_model(cl, run.info.run_id, broken, serving_meta(64, None, 160))
    assert cl.search_logged_models([run.info.experiment_id]) == []


def test_the_stored_model_onnx_is_the_graph_given_and_its_sha256_is_in_the_meta(tmp_path):
    """model_sha256 hashes what is served: model.onnx as stored, byte for byte the graph
    training passed (OOD detector and precision included), whatever onnx would re-write."""
    import hashlib
    import json

    from support.champion import serving_meta, tiny_cnn_onnx

    store = f"sqlite:///{tmp_path / 'mlflow.db'}"
    cl = tracking.client(store)
    run = cl.create_run(tracking.experiment_id(cl, "integrity"))
    import onnx as onnx_lib

    graph = tiny_cnn_onnx()
    # ir_version (field 1) repeated at the end: the same model to a reader, but onnx
    # writes it once, first: its re-serialisation differs from these bytes.
    onnx = graph + bytes([0x08, onnx_lib.load_from_string(graph).ir_version])
    assert onnx_lib.load_from_string(onnx).SerializeToString() != onnx
    logged = artifact.log_serving_model(cl, run.info.run_id, onnx, serving_meta(64, None, 160))
    version = registry.register_version(cl, logged, {"verdict": "pass"})
    (tmp_path / "dl").mkdir()
    folder = artifact.download_version(cl, REGISTERED_MODEL_NAME, version, tmp_path / "dl")
    stored = (folder / artifact.ONNX_FILE).read_bytes()
    meta = json.loads((folder / artifact.META_FILE).read_text())
    assert stored == onnx
    assert meta["model_sha256"] == hashlib.sha256(onnx).hexdigest()
    loaded = artifact.load_version(cl, REGISTERED_MODEL_NAME, version)
    assert loaded.meta.model_sha256 == meta["model_sha256"]

    other = {**serving_meta(64, None, 160), "model_sha256": "0" * 64}
    with pytest.raises(artifact.ModelLoadError, match="does not match the sha256"):
        artifact.log_serving_model(cl, run.info.run_id, onnx, other)


def test_a_model_whose_meta_records_no_sha256_still_loads_and_says_so(tmp_path, caplog):
    import json
    import logging

    from support.champion import serving_meta, tiny_cnn_onnx

    (tmp_path / artifact.ONNX_FILE).write_bytes(tiny_cnn_onnx())
    (tmp_path / artifact.META_FILE).write_text(json.dumps(serving_meta(64, None, 160)))
    caplog.set_level(logging.INFO, logger="plants_mlops.model.artifact")
    loaded = artifact.ServingArtifact.from_folder(tmp_path, threads=1)
    assert loaded.meta.model_sha256 is None
    assert "model.onnx: its serving_meta.json records no model_sha256" in caplog.text


def test_an_experiment_with_runs_opens_on_them_in_the_mlflow_ui(tmp_path):
    """MLflow 3's UI shows an experiment's GenAI views (traces) first unless the experiment
    is tagged as model development: every run the stages open tags it."""
    cl = tracking.client(f"sqlite:///{tmp_path / 'mlflow.db'}")
    with tracking.open_run(cl, "plants-ui") as run:
        run.log_metrics({"val/f1_macro": 0.9})
    tags = cl.get_experiment(run.experiment_id).tags
    assert tags[tracking.EXPERIMENT_KIND_TAG] == "custom_model_development"


def test_a_run_id_inherited_from_the_shell_is_used_only_when_allowed(tmp_path, monkeypatch):
    from plants_mlops.errors import UserFacingError

    cl = tracking.client(f"sqlite:///{tmp_path / 'mlflow.db'}")
    with tracking.open_run(cl, "plants-old") as old:
        pass
    monkeypatch.delenv("PLANTS_ALLOW_MLFLOW_RUN_ID", raising=False)
    monkeypatch.setenv("MLFLOW_RUN_ID", old.run_id)
    with (
        pytest.raises(UserFacingError, match=f"MLFLOW_RUN_ID={old.run_id} is set"),
        tracking.open_run(cl, "plants-new"),
    ):
        pass
    assert cl.get_experiment_by_name("plants-new") is None  # refused before creating anything

    monkeypatch.setenv("PLANTS_ALLOW_MLFLOW_RUN_ID", "1")
    with tracking.open_run(cl, "plants-new") as run:
        run.log_metrics({"val/f1_macro": 0.5})
    assert run.run_id == old.run_id
    assert cl.get_run(old.run_id).data.metrics == {"val/f1_macro": 0.5}

    # A ZenML step allows exactly the run it hands over, not another one.
    monkeypatch.setenv("PLANTS_ALLOW_MLFLOW_RUN_ID", "another-run")
    with pytest.raises(UserFacingError):
        tracking.inherited_run_id()
