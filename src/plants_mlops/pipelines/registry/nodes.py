"""Registry node: a new version of ``plants-classifier`` for the trained model, the gate,
and the alias it earns (``champion`` on pass, ``challenger`` on fail)."""

from __future__ import annotations

import logging
from typing import Any

from plants_mlops.contracts import ALIAS_CHALLENGER, ALIAS_CHAMPION
from plants_mlops.model import tracking
from plants_mlops.params import RegistryParams, TaskParams, parse
from plants_mlops.summaries import StageSummary

log = logging.getLogger(__name__)


def register_and_gate(
    training_report: dict,
    evaluation_report: dict,
    params: dict[str, Any],
    behaviour_report: dict | None = None,
    task: dict[str, Any] | None = None,
) -> tuple[dict, dict]:
    """Register, check the model loads, gate, move an alias, record why.

    ``behaviour_report`` (the behaviour step; the pipeline always passes it) adds its
    figures to the gate (``gate.behaviour``). With ``task`` (``params:task``; the pipeline
    passes it) the report must have measured exactly the task's label-preserving edits, so
    the gate holds the model to those and no others.

    Raises (champion untouched) when MLflow is unreachable, the training run logged no
    model, or the new version fails to load.
    """
    from plants_mlops.model import registry
    from plants_mlops.model.artifact import LoggedArtifact

    p = parse(RegistryParams, params, "registry")
    run_id = training_report.get("mlflow_run_id")
    if not training_report.get("model_id") or not training_report.get("artifact_location"):
        raise registry.RegistryError(
            "training_report names no logged model: the training run logged no MLflow model "
            "(training.mlflow.enabled false?); nothing to register"
        )
    logged = LoggedArtifact(
        model_id=training_report["model_id"],
        model_uri=training_report["model_uri"],
        run_id=run_id,
        artifact_location=training_report["artifact_location"],
    )
    if evaluation_report.get("mlflow_run_id") != run_id:
        raise registry.RegistryError(
            f"evaluation_report is for run {evaluation_report.get('mlflow_run_id')}, "
            f"training_report for {run_id}: run the evaluation pipeline first"
        )
    if behaviour_report is not None and behaviour_report.get("mlflow_run_id") != run_id:
        raise registry.RegistryError(
            f"behaviour_report is for run {behaviour_report.get('mlflow_run_id')}, "
            f"training_report for {run_id}: run the behaviour pipeline first"
        )
    if behaviour_report is not None and task is not None:
        wanted = parse(TaskParams, task, "task").label_preserving_edits
        measured = list(behaviour_report.get("invariance") or {})
        if sorted(measured) != sorted(wanted):
            raise registry.RegistryError(
                f"behaviour_report measured invariance under {measured}, the task's "
                f"label_preserving_edits are {list(wanted)}: run the behaviour pipeline "
                "again; nothing was registered"
            )
    name = p.model_name
    cl = tracking.client(tracking.tracking_uri(p.mlflow.tracking_uri))
    existing = registry.version_of_run(cl, run_id, name)
    # One training run, one version: a rerun changes nothing, unless the earlier run died
    # between registering and recording the verdict; then this run gates that version.
    if existing is not None and (existing.tags or {}).get("verdict"):
        return _already_registered(cl, existing, evaluation_report)
    champion = evaluation_report.get("champion") or {}
    evaluated = champion.get("version")
    current = registry.alias_version(cl, ALIAS_CHAMPION, name)
    if (evaluated or None) != current:
        raise registry.RegistryError(
            f"the champion moved from {evaluated or 'none'} to {current or 'none'} since "
            "evaluation: run the evaluation pipeline again so the gate compares against "
            "the champion as it is now; nothing was registered"
        )
    candidate_f1 = float(evaluation_report["metrics"]["f1_macro"])
    baseline_f1 = evaluation_report.get("best_baseline_f1_macro")
    champion_f1 = champion.get("f1_macro")
    if champion.get("note"):  # the champion is this very model: nothing to compare
        champion_f1 = None
    gate = p.gate
    metrics = evaluation_report["metrics"]
    identity = {
        "dataset_fingerprint": evaluation_report.get("dataset_fingerprint") or "unknown",
        "mlflow_run_id": run_id,
        "test_f1_macro": f"{candidate_f1:.6f}",
        "test_accuracy": f"{metrics['accuracy']:.6f}",
        "serving_precision": (training_report.get("serving_precision") or {}).get(
            "precision", "fp32"
        ),
    }
    previous = registry.alias_version(cl, ALIAS_CHAMPION, name)
    if existing is None:
        version = registry.register_version(cl, logged, identity, name)
    else:
        version = str(existing.version)
        log.info("%s version %s has no gate verdict yet: gating it now", name, version)
    # Size and latency are measured on the registered version itself (what the API would
    # download). A model that fails to load gets no alias: the champion stays where it was.
    try:
        measured = registry.measure_version(
            cl, version, name, runs=gate.latency_runs, threads=gate.latency_threads
        )
    except registry.RegistryError as exc:
        cl.set_model_version_tag(name, version, "verdict", "fail")
        cl.set_model_version_tag(name, version, "gate.refused", str(exc)[:4000])
        raise
    decision = registry.evaluate_gate(
        candidate_f1,
        baseline_f1,
        champion_f1,
        gate,
        model_mb=measured["model_mb"],
        latency_ms=measured["latency_p50_ms"],
        behaviour=None if behaviour_report is None else behaviour_report.get("metrics") or {},
    )
    tags = {
        "verdict": decision["verdict"],
        "gate.candidate_f1": f"{candidate_f1:.6f}",
        "gate.baseline_f1": "none" if baseline_f1 is None else f"{baseline_f1:.6f}",
        "gate.champion_f1": "none" if champion_f1 is None else f"{champion_f1:.6f}",
        "gate.champion_version": champion.get("version") or "none",
        "gate.min_f1": str(gate.min_f1),
        "gate.baseline_margin": str(gate.baseline_margin),
        "gate.champion_tolerance": str(gate.champion_tolerance),
        "gate.model_bytes": str(measured["model_bytes"]),
        "gate.model_mb": f"{measured['model_mb']:.3f}",
        "gate.max_model_mb": str(gate.max_model_mb),
        "gate.latency_p50_ms": f"{measured['latency_p50_ms']:.3f}",
        "gate.latency_budget_ms": str(gate.latency_budget_ms),
        "gate.latency_runs": str(gate.latency_runs),
        "gate.latency_threads": str(gate.latency_threads),
        **{
            f"gate.behaviour.{k}": f"{v:.4f}"
            for k, v in ((behaviour_report or {}).get("metrics") or {}).items()
            if v is not None
        },
        "gate.checks": "; ".join(
            f"{c['name']}={'pass' if c['passed'] else 'FAIL'} ({c['detail']})"
            for c in decision["checks"]
        ),
    }
    if decision["refused_because"]:
        tags["gate.refused"] = "; ".join(decision["refused_because"])
    # The verdict last: a run killed among these writes leaves no verdict, so the version
    # is gated again by the next run and no path can make it champion meanwhile.
    for key, value in sorted(tags.items(), key=lambda kv: kv[0] == "verdict"):
        cl.set_model_version_tag(name, version, key, value)
    reason = f"registry pipeline gate {decision['verdict']}: {tags['gate.checks']}"
    if decision["verdict"] == "pass":
        entry = registry.move_champion(cl, version, action="gate-pass", reason=reason, name=name)
    else:
        entry = registry.move_alias(
            cl, ALIAS_CHALLENGER, version, action="gate-fail", reason=reason, name=name
        )
    aliases = sorted(cl.get_model_version(name, version).aliases or [])
    log.info(
        "registered %s version %s: gate %s -> %s (champion: %s)",
        name,
        version,
        decision["verdict"],
        aliases,
        registry.alias_version(cl, ALIAS_CHAMPION, name),
    )
    champion_now = registry.alias_version(cl, ALIAS_CHAMPION, name)
    decision_doc = {
        "model_name": name,
        "model_version": version,
        "mlflow_run_id": run_id,
        "verdict": decision["verdict"],
        "checks": decision["checks"],
        "refused_because": decision["refused_because"],
        "serving_model": {
            "model_bytes": measured["model_bytes"],
            "model_mb": measured["model_mb"],
            "latency_p50_ms": measured["latency_p50_ms"],
            "latency_runs": measured["latency_runs"],
            "latency_threads": measured["latency_threads"],
        },
        "aliases": aliases,
        "previous_champion": previous,
        "champion": champion_now,
        "audit": entry,
        "metrics": {"f1_macro": candidate_f1, "accuracy": metrics["accuracy"]},
        "behaviour": (behaviour_report or {}).get("metrics"),
        "dataset_fingerprint": evaluation_report.get("dataset_fingerprint"),
    }
    summary = StageSummary(
        stage="registry",
        dataset_fingerprint=evaluation_report.get("dataset_fingerprint"),
        mlflow_run_id=run_id,
        model_version=version,
        champion_version=champion_now,
        metrics={
            "test_f1_macro": candidate_f1,
            "test_accuracy": float(metrics["accuracy"]),
            "serving_model_mb": measured["model_mb"],
            "onnx_latency_p50_ms": measured["latency_p50_ms"],
        },
        verdict=decision["verdict"],
        outputs=["registry_decision"],
    )
    return decision_doc, summary.to_json()


def _already_registered(cl, mv, evaluation_report: dict) -> tuple[dict, dict]:
    from plants_mlops.model import registry

    name, version = mv.name, str(mv.version)
    tags = mv.tags or {}
    champion = registry.alias_version(cl, ALIAS_CHAMPION, name)
    detail = (
        f"run {mv.run_id} is already registered as {name} version {version} "
        f"(gate {tags.get('verdict', '?')}); nothing changed"
    )
    log.info(detail)
    decision = {
        "model_name": name,
        "model_version": version,
        "mlflow_run_id": mv.run_id,
        "verdict": tags.get("verdict"),
        "already_registered": True,
        "detail": detail,
        "aliases": sorted(cl.get_model_version(name, version).aliases or []),
        "champion": champion,
        "dataset_fingerprint": evaluation_report.get("dataset_fingerprint"),
    }
    summary = StageSummary(
        stage="registry",
        dataset_fingerprint=evaluation_report.get("dataset_fingerprint"),
        mlflow_run_id=mv.run_id,
        model_version=version,
        champion_version=champion,
        verdict=tags.get("verdict"),
        outputs=["registry_decision"],
    )
    return decision, summary.to_json()
