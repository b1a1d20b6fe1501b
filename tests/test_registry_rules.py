"""The champion moves only through the gate or an explicit, recorded override.

Small real models (tests/support/champion.py) in a temporary SQLite store; the registry
CLI and the registry node are called in process.
"""

from __future__ import annotations

import json

import pytest
from support.champion import log_candidate, register_champion
from support.params import base_labels, stage_params, task_params

from plants_mlops import cli
from plants_mlops.contracts import ALIAS_CHALLENGER, ALIAS_CHAMPION
from plants_mlops.model import registry, tracking
from plants_mlops.pipelines.registry.nodes import register_and_gate

LABELS = base_labels()  # the shipped task's (conf/base/task.yml)

NAME = "plants-classifier"


@pytest.fixture
def store(tmp_path) -> str:
    return f"sqlite:///{tmp_path / 'mlflow.db'}"


def run_cli(capsys, uri: str, *argv: str) -> tuple[int, str, str]:
    capsys.readouterr()
    rc = cli.main(["registry", "--tracking-uri", uri, "--model", NAME, *argv])
    out = capsys.readouterr()
    return rc, out.out, out.err


def test_promoting_a_version_that_failed_the_gate_needs_force_and_a_reason(store, capsys):
    v1 = register_champion(store).version
    v2 = register_champion(store, seed=1, set_alias=False).version
    cl = tracking.client(store)
    cl.set_model_version_tag(NAME, v2, "verdict", "fail")

    rc, _, err = run_cli(capsys, store, "promote", v2)
    assert rc == 1 and f"version {v2} failed the gate" in err and "--force" in err
    rc, _, err = run_cli(capsys, store, "promote", v2, "--force")
    assert rc == 1 and "--reason" in err
    assert registry.alias_version(cl, ALIAS_CHAMPION) == v1

    rc, out, _ = run_cli(capsys, store, "promote", v2, "--force", "--reason", "camera hotfix")
    assert rc == 0 and f"-> {v2}" in out
    entry = registry.audit_trail(cl)[-1]
    assert entry["action"] == "force-promote" and entry["reason"] == "camera hotfix"
    assert entry["gate_verdict"] == "fail"
    assert registry.alias_version(cl, ALIAS_CHAMPION) == v2


def test_promoting_the_challenger_records_the_removal_of_its_alias(store, capsys, monkeypatch):
    """A gate-failed version holds ``challenger``; promoting it removes that alias, and the
    removal is in the audit trail (to_version null) with the promotion's actor and reason."""
    monkeypatch.setenv("PLANTS_MLOPS_ACTOR", "ci-tester")
    v1 = register_champion(store).version
    v2 = register_champion(store, seed=1, set_alias=False).version
    cl = tracking.client(store)
    cl.set_model_version_tag(NAME, v2, "verdict", "fail")
    registry.move_alias(cl, ALIAS_CHALLENGER, v2, action="gate-fail", reason="gate fail")

    rc, _, _ = run_cli(capsys, store, "promote", v2, "--force", "--reason", "hotfix test")
    assert rc == 0 and registry.alias_version(cl, ALIAS_CHALLENGER) is None
    moved, removed = registry.audit_trail(cl)[-2:]
    assert (moved["alias"], moved["from_version"], moved["to_version"]) == (
        ALIAS_CHAMPION,
        v1,
        v2,
    )
    assert (removed["alias"], removed["from_version"], removed["to_version"]) == (
        ALIAS_CHALLENGER,
        v2,
        None,
    )
    assert removed["action"] == "force-promote" and removed["reason"] == "hotfix test"
    assert removed["actor"] == moved["actor"] == "ci-tester"
    rc, out, _ = run_cli(capsys, store, "audit")
    assert rc == 0 and f"challenger: {v2} -> (none)  hotfix test" in out


def test_the_audit_names_who_a_decision_names(store, capsys, monkeypatch):
    """One variable says who acts: PLANTS_USER names the author of curation decisions and
    now of alias moves too (the audit said the login name: two variables for one person);
    PLANTS_MLOPS_ACTOR, the audit's former name for it, still wins there."""
    from plants_mlops.db.base import current_user

    monkeypatch.delenv("PLANTS_MLOPS_ACTOR", raising=False)
    monkeypatch.setenv("PLANTS_USER", "alice")
    register_champion(store)
    v2 = register_champion(store, seed=1, set_alias=False).version
    cl = tracking.client(store)
    cl.set_model_version_tag(NAME, v2, "verdict", "pass")
    assert run_cli(capsys, store, "promote", v2, "--reason", "better")[0] == 0
    assert registry.audit_trail(cl)[-1]["actor"] == "alice" == current_user()
    monkeypatch.setenv("PLANTS_MLOPS_ACTOR", "ci-bot")
    assert run_cli(capsys, store, "rollback", "--reason", "back")[0] == 0
    assert registry.audit_trail(cl)[-1]["actor"] == "ci-bot"


def test_rollback_walks_back_through_the_champion_history(store, capsys):
    v1, v2, v3 = (register_champion(store, seed=s).version for s in range(3))
    cl = tracking.client(store)
    assert registry.alias_version(cl, ALIAS_CHAMPION) == v3

    assert run_cli(capsys, store, "rollback")[0] == 0
    assert registry.alias_version(cl, ALIAS_CHAMPION) == v2
    assert run_cli(capsys, store, "rollback")[0] == 0  # not back to v3
    assert registry.alias_version(cl, ALIAS_CHAMPION) == v1
    rc, _, err = run_cli(capsys, store, "rollback")
    assert rc == 1 and "no previous champion" in err
    assert registry.alias_version(cl, ALIAS_CHAMPION) == v1


def test_rollback_pops_back_to_the_latest_term_of_a_version_that_was_champion_twice(store, capsys):
    """1 -> 2 -> 3 -> 2 -> 4: rolling back twice goes 4 -> 2 -> 3 (the champion before
    v2's latest term), not 4 -> 2 -> 1."""
    v1, v2, v3, v4 = (register_champion(store, seed=s, set_alias=False).version for s in range(4))
    cl = tracking.client(store)
    for v in (v1, v2):
        registry.move_alias(cl, ALIAS_CHAMPION, v, action="test", reason="test setup")
    for v, why in ((v3, "a"), (v2, "b"), (v4, "c")):
        assert run_cli(capsys, store, "promote", v, "--reason", why)[0] == 0

    assert run_cli(capsys, store, "rollback", "--reason", "rb1")[0] == 0
    assert registry.alias_version(cl, ALIAS_CHAMPION) == v2
    assert run_cli(capsys, store, "rollback", "--reason", "rb2")[0] == 0
    assert registry.alias_version(cl, ALIAS_CHAMPION) == v3
    assert registry.champion_history(cl) == [v1, v2, v3]


def test_rollback_to_a_version_that_failed_the_gate_needs_force_and_a_reason(store, capsys):
    v1 = register_champion(store).version
    v2 = register_champion(store, seed=1, set_alias=False).version
    cl = tracking.client(store)
    cl.set_model_version_tag(NAME, v2, "verdict", "fail")

    rc, _, err = run_cli(capsys, store, "rollback", "--to", v2)
    assert rc == 1 and f"version {v2} failed the gate" in err and "--force" in err
    assert registry.alias_version(cl, ALIAS_CHAMPION) == v1

    rc, _, _ = run_cli(capsys, store, "rollback", "--to", v2, "--force", "--reason", "incident 7")
    assert rc == 0 and registry.alias_version(cl, ALIAS_CHAMPION) == v2
    entry = registry.audit_trail(cl)[-1]
    assert entry["action"] == "force-rollback" and entry["reason"] == "incident 7"
    assert entry["gate_verdict"] == "fail" and entry["forced"] is True


def test_a_version_without_a_verdict_is_refused_then_gated_by_the_next_registry_run(
    store, capsys, monkeypatch
):
    """A registry run killed after the version row exists leaves no verdict: no path makes
    that version champion, and rerunning the registry stage gates it."""
    monkeypatch.setenv("MLFLOW_TRACKING_URI", store)
    champion = register_champion(store).version
    logged, _ = log_candidate(store, seed=3)
    cl = tracking.client(store)
    orphan = registry.register_version(cl, logged, {"mlflow_run_id": logged.run_id}, NAME)

    for argv in (["promote", orphan], ["rollback", "--to", orphan]):
        rc, _, err = run_cli(capsys, store, *argv)
        assert rc == 1 and f"version {orphan} has no gate verdict" in err
    assert registry.alias_version(cl, ALIAS_CHAMPION) == champion

    training_report, evaluation_report = _reports(logged, {"version": champion, "f1_macro": 0.5})
    decision, _ = register_and_gate(training_report, evaluation_report, stage_params("registry"))
    assert decision["model_version"] == orphan and "already_registered" not in decision
    assert decision["verdict"] == "pass"
    assert cl.get_model_version(NAME, orphan).tags["verdict"] == "pass"
    assert registry.alias_version(cl, ALIAS_CHAMPION) == orphan
    assert [r["version"] for r in registry.list_versions(cl)] == [orphan, champion]


def _reports(logged, champion: dict) -> tuple[dict, dict]:
    training_report = {
        "mlflow_run_id": logged.run_id,
        "model_id": logged.model_id,
        "model_uri": logged.model_uri,
        "artifact_location": logged.artifact_location,
    }
    evaluation_report = {
        "mlflow_run_id": logged.run_id,
        "dataset_fingerprint": "f" * 64,
        "best_baseline_f1_macro": 0.5,
        "champion": champion,
        "metrics": {"f1_macro": 0.95, "accuracy": 0.95},
    }
    return training_report, evaluation_report


def test_one_training_run_registers_once_and_a_rerun_says_so(store, monkeypatch):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", store)
    logged, _ = log_candidate(store)
    training_report, evaluation_report = _reports(logged, {"version": None})
    params = stage_params("registry")
    first, _ = register_and_gate(training_report, evaluation_report, params)
    assert first["verdict"] == "pass" and first["champion"] == first["model_version"]

    again, summary = register_and_gate(training_report, evaluation_report, params)
    assert again["model_version"] == first["model_version"]
    assert again["already_registered"] is True and "nothing changed" in again["detail"]
    assert summary["model_version"] == first["model_version"]
    assert [r["version"] for r in registry.list_versions(tracking.client(store))] == ["1"]
    assert len(registry.audit_trail(tracking.client(store))) == 1


def test_the_gate_refuses_when_the_champion_moved_since_evaluation(store, monkeypatch):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", store)
    logged, _ = log_candidate(store)
    training_report, evaluation_report = _reports(logged, {"version": None})
    other = register_champion(store, seed=5).version  # a champion appears after evaluation
    with pytest.raises(registry.RegistryError, match="champion moved from none to 1"):
        register_and_gate(training_report, evaluation_report, stage_params("registry"))
    cl = tracking.client(store)
    assert registry.alias_version(cl, ALIAS_CHAMPION) == other
    assert [r["version"] for r in registry.list_versions(cl)] == [other]


def test_a_locked_store_is_a_one_line_error(tmp_path, capsys):
    import sqlite3

    store = f"sqlite:///{tmp_path / 'mlflow.db'}"
    tracking.client(store).search_experiments()  # the store exists, with MLflow's tables
    lock = sqlite3.connect(tmp_path / "mlflow.db", isolation_level=None)
    lock.execute("BEGIN EXCLUSIVE")
    try:
        rc, _, err = run_cli(capsys, store, "list")
    finally:
        lock.execute("ROLLBACK")
        lock.close()
    assert rc == 1
    assert err.strip().splitlines() == [err.strip()]  # one line, no traceback
    assert "store is locked by another process" in err


def _oversized_resnet18_onnx(image_size: int = 64) -> bytes:
    """A real serving graph over PROBLEM.md's 20 MB: ResNet18 (random weights), ~45 MB."""
    from plants_mlops.model.architectures import build_model
    from plants_mlops.model.export import onnx_bytes

    return onnx_bytes(
        build_model("resnet18", n_classes=len(LABELS), image_size=image_size), image_size
    )


def test_the_gate_refuses_a_model_over_the_size_limit_and_records_why(store, monkeypatch):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", store)
    onnx = _oversized_resnet18_onnx()
    assert len(onnx) > 20e6
    champion = register_champion(store).version
    logged, _ = log_candidate(store, onnx=onnx, architecture="resnet18")
    training_report, evaluation_report = _reports(logged, {"version": champion, "f1_macro": 0.5})
    # The shipped 20 MB limit; a latency budget no machine load can break, so the size
    # alone decides (the latency check has its own test).
    params = stage_params("registry", gate={"latency_budget_ms": 1e6})
    decision, summary = register_and_gate(training_report, evaluation_report, params)

    # F1 0.95 clears every quality check; the size alone refuses it.
    assert decision["verdict"] == "fail" and summary["verdict"] == "fail"
    failed = [c["name"] for c in decision["checks"] if not c["passed"]]
    assert failed == ["model_size"]
    assert decision["serving_model"]["model_bytes"] == len(onnx)
    assert decision["refused_because"] == [
        f"model_size: serving ONNX {len(onnx) / 1e6:.2f} MB > limit 20.00 MB (needs <= 20.00 MB)"
    ]
    cl = tracking.client(store)
    assert registry.alias_version(cl, ALIAS_CHAMPION) == champion  # the champion stays
    tags = cl.get_model_version(NAME, decision["model_version"]).tags
    assert tags["verdict"] == "fail"
    assert tags["gate.refused"].startswith("model_size: serving ONNX")
    assert float(tags["gate.model_mb"]) == pytest.approx(len(onnx) / 1e6, abs=1e-3)
    assert tags["gate.max_model_mb"] == "20.0"
    assert float(tags["gate.latency_p50_ms"]) == pytest.approx(
        decision["serving_model"]["latency_p50_ms"], abs=1e-3
    )
    assert "model_size=FAIL" in tags["gate.checks"] and "latency=pass" in tags["gate.checks"]


def test_the_gate_refuses_a_model_over_the_latency_budget(store, monkeypatch):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", store)
    logged, _ = log_candidate(store)
    training_report, evaluation_report = _reports(logged, {"version": None})
    # A budget no real model meets (1 ns): the measured p50 is what refuses it.
    params = stage_params("registry", gate={"latency_budget_ms": 1e-6, "latency_runs": 5})
    decision, _ = register_and_gate(training_report, evaluation_report, params)
    assert decision["verdict"] == "fail"
    assert [c["name"] for c in decision["checks"] if not c["passed"]] == ["latency"]
    latency = decision["serving_model"]["latency_p50_ms"]
    assert latency > 1e-6 and decision["serving_model"]["latency_runs"] == 5
    cl = tracking.client(store)
    assert registry.alias_version(cl, ALIAS_CHAMPION) is None
    tags = cl.get_model_version(NAME, decision["model_version"]).tags
    assert tags["gate.refused"].startswith("latency: batch-1 ONNX Runtime p50")
    assert "> limit 0.00 ms (needs <= 0.00 ms)" in tags["gate.refused"]
    assert float(tags["gate.latency_p50_ms"]) == pytest.approx(latency, abs=1e-3)


def test_a_failed_gate_check_says_what_failed_not_the_condition_it_missed():
    """Every kind of check (at least and at most, f1, baseline, champion, size, latency,
    behaviour): a failed one reads ``value < bound (needs >= limit)``, a passed one
    ``value >= bound``."""
    from plants_mlops.params import Gate, parse

    gate = parse(
        Gate,
        {
            **stage_params("registry")["gate"],
            "min_f1": 0.99,
            "require_beat_baseline": True,
            "baseline_margin": 0.01,
            "champion_tolerance": 0.01,
            "max_model_mb": 20.0,
            "latency_budget_ms": 15.0,
        },
        "registry.gate",
    )
    behaviour = {
        "invariance_min": 0.5,
        "invariance_mirror": 0.5,
        "functionality": 0.5,
        "ood_flagged": 0.1,
        "false_flags": 0.9,
    }
    failed = registry.evaluate_gate(
        0.9486, 0.95, 0.97, gate, model_mb=44.74, latency_ms=55.29, behaviour=behaviour
    )
    b = gate.behaviour
    assert failed["verdict"] == "fail"
    assert failed["refused_because"] == [
        "model_size: serving ONNX 44.74 MB > limit 20.00 MB (needs <= 20.00 MB)",
        "latency: batch-1 ONNX Runtime p50 55.29 ms > limit 15.00 ms (needs <= 15.00 ms)",
        "min_f1: f1 0.9486 < threshold 0.9900 (needs >= 0.9900)",
        "baseline: f1 0.9486 < best baseline 0.9500 + 0.0100 (needs >= 0.9600)",
        "champion: f1 0.9486 < champion 0.9700 - 0.0100 (needs >= 0.9600)",
        f"invariance: labels kept, worst edit 0.5000 < {b.min_invariance:.4f} "
        f"(needs >= {b.min_invariance:.4f})",
        f"mirror_invariance: labels kept under the mirror 0.5000 < "
        f"{b.min_mirror_invariance:.4f} (needs >= {b.min_mirror_invariance:.4f})",
        f"functionality: clear cases right 0.5000 < {b.min_functionality:.4f} "
        f"(needs >= {b.min_functionality:.4f})",
        f"ood_flagged: held-out out-of-distribution photos flagged 0.1000 < "
        f"{b.min_ood_flagged:.4f} (needs >= {b.min_ood_flagged:.4f})",
        f"false_flags: test images flagged OOD 0.9000 > {b.max_false_flags:.4f} "
        f"(needs <= {b.max_false_flags:.4f})",
    ]
    passed = registry.evaluate_gate(
        0.995, 0.95, 0.97, gate, model_mb=4.0, latency_ms=5.0, behaviour=None
    )
    assert passed["verdict"] == "pass"
    assert [c["detail"] for c in passed["checks"]][:5] == [
        "serving ONNX 4.00 MB <= limit 20.00 MB",
        "batch-1 ONNX Runtime p50 5.00 ms <= limit 15.00 ms",
        "f1 0.9950 >= threshold 0.9900",
        "f1 0.9950 >= best baseline 0.9500 + 0.0100",
        "f1 0.9950 >= champion 0.9700 - 0.0100",
    ]


def test_the_gate_refuses_a_version_whose_behaviour_misses_a_threshold_and_lists_why(
    store, monkeypatch, small_data, capsys
):
    """The behaviour step measures the registered graph itself: the tiny CNN keeps its
    labels only by chance and carries no OOD detector, so its held-out non-plant photos
    are 'not measured' and the gate refuses it, saying so in `registry list`."""
    from support.champion import tiny_cnn_onnx

    from plants_mlops.pipelines.behaviour.nodes import measure_behaviour, report_behaviour

    monkeypatch.setenv("MLFLOW_TRACKING_URI", store)
    logged, meta = log_candidate(store, resize_size=160)
    training_report, evaluation_report = _reports(logged, {"version": None})
    params = stage_params("behaviour", mlflow={"log_to_run": False})
    figures = measure_behaviour(
        tiny_cnn_onnx(),
        meta,
        small_data.dataset_index,
        small_data.fmt_images,
        params,
        task_params(),
    )
    behaviour_report, _ = report_behaviour(figures, training_report, params)
    assert behaviour_report["metrics"]["ood_flagged"] is None  # no detector in this graph
    assert behaviour_report["metrics"]["false_flags"] is None
    assert set(behaviour_report["invariance"]) >= {"mirror", "rotate90", "blur", "jpeg_q10"}
    assert behaviour_report["ood"]["held_out_for_reporting"]  # named for the model card
    assert behaviour_report["ood"]["edited_false_flags"] is None

    gate = {
        "latency_budget_ms": 1e6,
        "min_f1": 0.0,
        "behaviour": {
            "min_invariance": 0.0,
            "min_mirror_invariance": 0.0,
            "min_functionality": 0.0,
            "max_false_flags": 1.0,
        },
    }
    decision, _ = register_and_gate(
        training_report, evaluation_report, stage_params("registry", gate=gate), behaviour_report
    )
    assert decision["verdict"] == "fail"
    assert decision["refused_because"] == [
        "ood_flagged: held-out out-of-distribution photos flagged: not measured",
        "false_flags: test images flagged OOD: not measured",
    ]
    assert registry.alias_version(tracking.client(store), ALIAS_CHAMPION) is None

    rc, out, _ = run_cli(capsys, store, "list")
    assert rc == 0
    assert "refused: ood_flagged: held-out out-of-distribution photos flagged: not measured" in out
    rc, out, _ = run_cli(capsys, store, "list", "--json")
    assert "ood_flagged" in __import__("json").loads(out)[0]["refused_because"]

    # a behaviour report of another run is refused before anything is registered
    with pytest.raises(registry.RegistryError, match="run the behaviour pipeline first"):
        register_and_gate(
            training_report,
            evaluation_report,
            stage_params("registry", gate=gate),
            {**behaviour_report, "mlflow_run_id": "another-run"},
        )


def test_a_task_naming_some_edits_is_measured_and_gated_on_those_only(
    store, monkeypatch, small_data
):
    """The edits that keep a label are the task's (``task.label_preserving_edits``): a
    digit turned or mirrored is another digit, so a digits task names neither, and the
    behaviour step measures and the gate checks only the edits named. A report that
    measured other edits than the task names is refused before anything is registered."""
    from support.champion import tiny_cnn_onnx

    from plants_mlops.pipelines.behaviour.nodes import measure_behaviour, report_behaviour

    monkeypatch.setenv("MLFLOW_TRACKING_URI", store)
    logged, meta = log_candidate(store, resize_size=160)
    training_report, evaluation_report = _reports(logged, {"version": None})
    params = stage_params("behaviour", mlflow={"log_to_run": False})
    task = task_params(label_preserving_edits=["blur", "brighten"])
    figures = measure_behaviour(
        tiny_cnn_onnx(), meta, small_data.dataset_index, small_data.fmt_images, params, task
    )
    assert list(figures["invariance"]) == ["blur", "brighten"]
    metrics = figures["metrics"]
    assert metrics["invariance_mirror"] is None
    assert not {k for k in metrics if k.startswith("invariance_rotate")}
    assert metrics["invariance_min"] == min(figures["invariance"].values())
    behaviour_report, _ = report_behaviour(figures, training_report, params)

    worst = metrics["invariance_min"]
    gate = {
        "latency_budget_ms": 1e6,
        "behaviour": {"min_invariance": worst, "min_functionality": 0.0},
    }
    registry_params = stage_params("registry", gate=gate)
    # the shipped task's ten edits were not all measured: run the behaviour step again
    with pytest.raises(registry.RegistryError, match="run the behaviour pipeline again"):
        register_and_gate(
            training_report, evaluation_report, registry_params, behaviour_report, task_params()
        )
    assert registry.version_of_run(tracking.client(store), logged.run_id, NAME) is None

    decision, _ = register_and_gate(
        training_report, evaluation_report, registry_params, behaviour_report, task
    )
    checks = {c["name"]: c for c in decision["checks"]}
    assert checks["invariance"]["passed"]
    assert checks["invariance"]["detail"] == f"labels kept, worst edit {worst:.4f} >= {worst:.4f}"
    assert checks["mirror_invariance"] == {
        "name": "mirror_invariance",
        "passed": True,
        "detail": "labels kept under the mirror: not measured for this task: not checked",
    }
    # only the detector this tiny graph lacks refuses it
    assert [r.split(":")[0] for r in decision["refused_because"]] == [
        "ood_flagged",
        "false_flags",
    ]


def test_the_registry_commands_take_a_tasks_env(store, kedro_project, monkeypatch, capsys):
    """`registry list --env patterns` was refused (unrecognized arguments): only `--model
    patterns-classifier` reached a task's versions. `--env` names the task's registered
    model (and its store, when the task configures one), before or after the action;
    `--model` and `--tracking-uri` still win."""
    from plants_mlops import task

    monkeypatch.chdir(kedro_project.path)
    monkeypatch.delenv("MLFLOW_TRACKING_URI")
    task.init("conf", "patterns", ("stripes", "dots", "rings"))
    (kedro_project.path / "conf" / "patterns" / "parameters_registry.yml").write_text(
        f"registry:\n  mlflow:\n    tracking_uri: {store}\n"
    )
    v1, v2 = (register_champion(store, seed=s, name="patterns-classifier").version for s in (0, 1))
    register_champion(store, seed=2, name=NAME)

    def listed(*argv: str) -> dict[str, list[str]]:
        capsys.readouterr()
        assert cli.main(["registry", *argv]) == 0, capsys.readouterr().err
        return {r["version"]: r["aliases"] for r in json.loads(capsys.readouterr().out)}

    assert listed("list", "--env", "patterns", "--json") == {v1: [], v2: [ALIAS_CHAMPION]}
    assert listed("--env", "patterns", "list", "--json") == {v1: [], v2: [ALIAS_CHAMPION]}
    assert cli.main(["registry", "rollback", "--env", "patterns", "--reason", "r"]) == 0
    cl = tracking.client(store)
    assert registry.alias_version(cl, ALIAS_CHAMPION, "patterns-classifier") == v1
    assert cli.main(["registry", "promote", v2, "--env", "patterns"]) == 0
    assert registry.alias_version(cl, ALIAS_CHAMPION, "patterns-classifier") == v2
    capsys.readouterr()
    assert cli.main(["registry", "audit", "--env", "patterns", "--json"]) == 0
    moves = json.loads(capsys.readouterr().out)
    assert [m["action"] for m in moves][-2:] == ["rollback", "promote"]
    # --model wins over the task's name; the base task's model is untouched
    assert listed("--model", NAME, "list", "--env", "patterns", "--json") == {"1": [ALIAS_CHAMPION]}
    # --tracking-uri wins over the task's store
    empty = f"sqlite:///{kedro_project.path / 'data' / 'none.db'}"
    assert cli.main(["registry", "--tracking-uri", empty, "list", "--env", "patterns"]) == 1
    assert "no MLflow store at" in capsys.readouterr().err
