"""The API's side of hardening: a hot reload follows the champion alias only to a gated
version, a hung or dead MLflow never hangs a reload or a shutdown, and settings the server
cannot start with stop it in one line with a non-zero exit."""

from __future__ import annotations

import logging
import os
import socket
import subprocess
import tempfile
import threading
import time
from pathlib import Path

import httpx
import pytest
from support import images, servers
from support.champion import register_champion, set_champion, unique_model_name
from support.serving import ADMIN_KEY, api_in_process, running_api

from plants_mlops import cli
from plants_mlops.model import registry, tracking

ADMIN = {"X-API-Key": ADMIN_KEY}


def test_a_hot_reload_follows_the_alias_only_to_a_gated_version(
    tmp_path, mlflow_tracking_uri, capsys
):
    name = unique_model_name()
    good = register_champion(mlflow_tracking_uri, name=name).version
    with api_in_process(tmp_path, tracking_uri=mlflow_tracking_uri, model_name=name) as c:
        ungated = register_champion(mlflow_tracking_uri, name=name, seed=2, set_alias=False)
        cl = tracking.client(mlflow_tracking_uri)
        cl.set_model_version_tag(name, ungated.version, "verdict", "fail")
        set_champion(mlflow_tracking_uri, ungated.version, name=name)  # MLflow's UI, say
        r = c.post("/admin/reload", headers=ADMIN).json()
        assert r["changed"] is False and r["model_version"] == good
        assert "without a passing gate verdict" in r["error"]
        assert c.get("/model").json()["version"] == good

        set_champion(mlflow_tracking_uri, good, name=name)
        rc = cli.main(
            [
                "registry",
                "--tracking-uri",
                mlflow_tracking_uri,
                "--model",
                name,
                "promote",
                ungated.version,
                "--force",
                "--reason",
                "known risk, recorded",
            ]
        )
        assert rc == 0
        assert c.post("/admin/reload", headers=ADMIN).json()["model_version"] == ungated.version
    assert registry.audit_trail(cl, name)[-1]["forced"] is True


def _negated_logits(onnx_bytes: bytes) -> bytes:
    """The graph with a Neg node on its logits: every label inverted, the contract kept."""
    import onnx
    from onnx import helper

    model = onnx.load_from_string(onnx_bytes)
    for node in model.graph.node:
        node.output[:] = ["logits_raw" if o == "logits" else o for o in node.output]
    model.graph.node.append(helper.make_node("Neg", ["logits_raw"], ["logits"]))
    return model.SerializeToString()


def _replace_in_artifact_store(uri: str, name: str, version: str, filename: str, data: bytes):
    """Overwrite one file of a registered version's model folder in the artifact store."""
    from mlflow.store.artifact.artifact_repository_registry import get_artifact_repository

    cl = tracking.client(uri)
    source = cl.get_model_version(name, version).source
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / filename
        path.write_bytes(data)
        get_artifact_repository(source, tracking_uri=uri).log_artifact(str(path))
    return cl


def test_a_model_onnx_replaced_in_the_artifact_store_is_refused_and_the_old_one_serves(
    tmp_path, mlflow_tracking_uri
):
    """A gated version whose model.onnx was swapped after training (every label inverted)
    neither becomes champion through the registry nor serves when the alias is moved
    around it: its bytes do not hash to the serving meta's model_sha256."""
    from support.champion import tiny_cnn_onnx

    name = unique_model_name()
    good = register_champion(mlflow_tracking_uri, name=name).version
    with api_in_process(tmp_path, tracking_uri=mlflow_tracking_uri, model_name=name) as c:
        tampered = register_champion(mlflow_tracking_uri, name=name, seed=2, set_alias=False)
        evil = _negated_logits(tiny_cnn_onnx(seed=2))
        cl = _replace_in_artifact_store(
            mlflow_tracking_uri, name, tampered.version, "model.onnx", evil
        )
        mismatch = (
            f"model.onnx of version {tampered.version} does not match the sha256 its serving "
            "meta records"
        )
        with pytest.raises(registry.RegistryError, match=mismatch):
            registry.promote(cl, tampered.version, name=name)
        set_champion(mlflow_tracking_uri, tampered.version, name=name)  # MLflow's UI, say
        r = c.post("/admin/reload", headers=ADMIN).json()
        assert r["changed"] is False and r["model_version"] == good
        assert mismatch in r["error"]
        model = c.get("/model").json()
        assert model["version"] == good
        assert mismatch in model["last_reload_error"]["error"]


def test_a_model_uri_other_than_the_champion_serves_an_ungated_version_and_says_so(
    tmp_path, mlflow_tracking_uri, caplog
):
    name = unique_model_name()
    champion = register_champion(mlflow_tracking_uri, name=name).version
    assert champion
    failed = register_champion(mlflow_tracking_uri, name=name, seed=2, set_alias=False).version
    cl = tracking.client(mlflow_tracking_uri)
    cl.set_model_version_tag(name, failed, "verdict", "fail")
    refused = "min_f1: f1 0.9486 < threshold 0.9900 (needs >= 0.9900)"
    cl.set_model_version_tag(name, failed, "gate.refused", refused)
    caplog.set_level(logging.WARNING, logger="plants_mlops.serving")
    env = {"PLANTS_MODEL_URI": f"models:/{name}/{failed}"}
    with api_in_process(tmp_path, tracking_uri=mlflow_tracking_uri, model_name=name, env=env) as c:
        model = c.get("/model").json()
        assert model["version"] == failed and model["gate_verdict"] == "fail"
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert any(
        f"version {failed}, not the gated champion: verdict fail ({refused})" in w for w in warnings
    ), warnings

    ungated = register_champion(mlflow_tracking_uri, name=name, seed=3, set_alias=False).version
    cl.delete_model_version_tag(name, ungated, "verdict")
    cl.set_registered_model_alias(name, "challenger", ungated)
    caplog.clear()
    env = {"PLANTS_MODEL_URI": f"models:/{name}@challenger"}
    with api_in_process(tmp_path, tracking_uri=mlflow_tracking_uri, model_name=name, env=env) as c:
        model = c.get("/model").json()
        assert model["version"] == ungated and model["gate_verdict"] is None
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert any(f"version {ungated}, not the gated champion: no gate verdict" in w for w in warnings)

    caplog.clear()  # the champion: gated, no warning
    with api_in_process(tmp_path, tracking_uri=mlflow_tracking_uri, model_name=name) as c:
        assert c.get("/model").json()["gate_verdict"] == "pass"
    assert not [r for r in caplog.records if "not the gated champion" in r.getMessage()]


def test_a_champion_alias_moved_by_hand_onto_a_failed_version_can_be_forced_on_record(
    mlflow_tracking_uri,
):
    """The alias moved in MLflow's UI onto a version the gate failed: the API refuses it,
    and `registry promote N --force --reason` answered "already the champion", so the
    override could not be recorded (a rollback first was the only way)."""
    name = unique_model_name()
    register_champion(mlflow_tracking_uri, name=name)
    failed = register_champion(mlflow_tracking_uri, name=name, seed=2, set_alias=False).version
    cl = tracking.client(mlflow_tracking_uri)
    cl.set_model_version_tag(name, failed, "verdict", "fail")
    set_champion(mlflow_tracking_uri, failed, name=name)  # by hand
    assert registry.serving_refusal(cl, failed, name)
    base = ["registry", "--tracking-uri", mlflow_tracking_uri, "--model", name, "promote", failed]
    assert cli.main(base) == 1  # the gate's verdict still needs --force
    assert cli.main([*base, "--force", "--reason", "known risk, recorded"]) == 0
    assert registry.serving_refusal(cl, failed, name) is None
    last = registry.audit_trail(cl, name)[-1]
    assert (str(last["to_version"]), last["forced"]) == (failed, True)
    # a champion the API serves is still refused as already the champion
    with pytest.raises(registry.RegistryError, match="already the champion"):
        registry.promote(cl, failed, reason="again", name=name, force=True)


class _Gate:
    """A TCP proxy in front of the MLflow server that can stop answering (``hang``: it
    accepts and stays silent, like a server stopped or a network black hole)."""

    def __init__(self, target: str) -> None:
        host, port = target.removeprefix("http://").rsplit(":", 1)
        self.target = (host, int(port))
        self.hung = threading.Event()
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.url = f"http://127.0.0.1:{self.sock.getsockname()[1]}"
        self.held: list[socket.socket] = []
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            if self.hung.is_set():
                self.held.append(conn)
                continue
            upstream = socket.create_connection(self.target)
            for a, b in ((conn, upstream), (upstream, conn)):
                threading.Thread(target=self._pipe, args=(a, b), daemon=True).start()

    def _pipe(self, src: socket.socket, dst: socket.socket) -> None:
        try:
            while data := src.recv(65536):
                if self.hung.is_set():
                    return  # silent from now on
                dst.sendall(data)
        except OSError:
            pass

    def close(self) -> None:
        self.sock.close()
        for conn in self.held:
            conn.close()


def test_reload_answers_503_within_10_s_and_shutdown_is_prompt_with_mlflow_hung(
    tmp_path, mlflow_tracking_uri
):
    name = unique_model_name()
    register_champion(mlflow_tracking_uri, name=name)
    gate = _Gate(mlflow_tracking_uri)
    try:
        with running_api(tmp_path, tracking_uri=gate.url, model_name=name) as api:
            gate.hung.set()
            t0 = time.monotonic()
            r = httpx.post(f"{api.url}/admin/reload", headers=ADMIN, timeout=60)
            took = time.monotonic() - t0
            assert r.status_code == 503 and took < 10, (r.status_code, took, r.text)
            body = r.json()
            assert body["error"] == "registry_unavailable" and gate.url in body["detail"]
            # the current model keeps serving meanwhile
            data = images.sample_jpeg(0)
            ok = httpx.post(
                f"{api.url}/predict", files={"file": ("x.jpg", data, "image/jpeg")}, timeout=30
            )
            assert ok.status_code == 200
            t0 = time.monotonic()
            api.process.proc.send_signal(15)
            api.process.proc.wait(timeout=60)
            assert time.monotonic() - t0 < 20  # within the 30 s grace period, not 40+ s
    finally:
        gate.close()


def _serve(env: dict[str, str], tmp_path: Path, *argv: str) -> subprocess.CompletedProcess:
    full = {
        **os.environ,
        "MLFLOW_TRACKING_URI": f"sqlite:///{tmp_path / 'mlflow.db'}",
        "PLANTS_SERVE_WORKERS": "1",
        "PLANTS_DB_URL": f"sqlite:///{tmp_path / 'plants.db'}",
        **env,
    }
    return subprocess.run(
        [str(servers.VENV_BIN / "plants-mlops"), "serve", "--port", "0", *argv],
        env=full,
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
    )


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({"PLANTS_MAX_UPLOAD_BYTES": "inf"}, "PLANTS_MAX_UPLOAD_BYTES=inf"),
        ({"PLANTS_MODEL_POLL_SECONDS": "nan"}, "PLANTS_MODEL_POLL_SECONDS=nan"),
        ({"PLANTS_DB_URL": "nosuchdb://x"}, "PLANTS_DB_URL"),
        ({"PLANTS_MODEL_URI": "notauri"}, "PLANTS_MODEL_URI"),
    ],
)
def test_a_server_that_cannot_start_exits_non_zero_in_one_line(tmp_path, env, message):
    done = _serve(env, tmp_path)
    assert done.returncode != 0, done.stdout[-2000:] + done.stderr[-2000:]
    assert "Traceback" not in done.stderr + done.stdout, done.stderr[-3000:]
    errors = [line for line in done.stderr.splitlines() if line.startswith("error:")]
    assert errors and message in done.stderr, done.stderr[-2000:]


def test_feedback_is_rate_limited_per_client(tmp_path, mlflow_tracking_uri):
    """229 posts in 6 s for one prediction used to be 229 rows: past the per-client limit
    the API answers 429 with Retry-After, before looking anything up."""
    name = unique_model_name()
    register_champion(mlflow_tracking_uri, name=name)
    env = {"PLANTS_FEEDBACK_PER_MINUTE": "5"}
    with api_in_process(tmp_path, tracking_uri=mlflow_tracking_uri, model_name=name, env=env) as c:
        # names the prediction both ways (request_id before the serving rewrite, prediction_id
        # after): the unknown key is ignored, the known one is unknown (404)
        body = {"prediction_id": "0" * 32, "request_id": "0" * 32, "label": "grass"}
        codes = [c.post("/feedback", json=body, headers=ADMIN).status_code for _ in range(5)]
        assert codes == [404] * 5
        limited = c.post("/feedback", json=body, headers=ADMIN)
        assert limited.status_code == 429 and limited.json()["error"] == "rate_limited"
        assert 1 <= int(limited.headers["retry-after"]) <= 60
