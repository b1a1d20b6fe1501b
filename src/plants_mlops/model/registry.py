"""MLflow Model Registry: versions of ``plants-classifier``, the promotion gate, alias moves
and their audit trail.

Aliases (``champion``, ``challenger``), never the deprecated stages. Every alias move is
recorded as a registered-model tag ``audit.<UTC time>.<random>`` whose value is a JSON
object ``{at, actor, action, alias, from_version, to_version, reason}`` (``to_version``
null: the alias was removed): it lives in the tracking store itself, so it works the same
on SQLite, PostgreSQL and a remote server, and needs no extra artifact store.

``champion`` moves only through ``move_champion``: the version must carry the gate's
recorded verdict ``pass`` (or the move is ``--force --reason``, recorded as such), and its
model is downloaded and run once through ONNX Runtime: a model that fails to load never
becomes champion.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import secrets
import tempfile
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from plants_mlops.contracts import ALIAS_CHALLENGER, ALIAS_CHAMPION, REGISTERED_MODEL_NAME
from plants_mlops.errors import UserFacingError
from plants_mlops.model import artifact
from plants_mlops.model.artifact import LoggedArtifact, ServingMeta
from plants_mlops.params import Gate

AUDIT_PREFIX = "audit."


class RegistryError(UserFacingError):
    """A registry operation was refused; nothing was changed."""


def _not_found(exc: Exception) -> bool:
    return (
        "RESOURCE_DOES_NOT_EXIST" in str(getattr(exc, "error_code", ""))
        or "not found" in str(exc).lower()
    )


def alias_version(cl, alias: str, name: str = REGISTERED_MODEL_NAME) -> str | None:
    from mlflow.exceptions import MlflowException

    try:
        return str(cl.get_model_version_by_alias(name, alias).version)
    except MlflowException as exc:
        if _not_found(exc):
            return None
        raise


def ensure_registered_model(cl, name: str = REGISTERED_MODEL_NAME) -> None:
    from mlflow.exceptions import MlflowException

    try:
        cl.get_registered_model(name)
    except MlflowException as exc:
        if not _not_found(exc):
            raise
        try:
            cl.create_registered_model(
                name,
                description="Image classifier (ONNX serving model; its labels are in each "
                "version's serving meta).",
            )
        except MlflowException as exc2:  # created concurrently
            if "RESOURCE_ALREADY_EXISTS" not in str(getattr(exc2, "error_code", "")):
                raise


def verify_loadable(cl, version: str, name: str = REGISTERED_MODEL_NAME) -> ServingMeta:
    """Download and run the version once; RegistryError when it fails. Returns its meta."""
    try:
        return artifact.load_version(cl, name, version, threads=1).meta
    except Exception as exc:
        raise _fails_to_load(name, version, exc) from exc


def _fails_to_load(name: str, version: str, exc: Exception) -> RegistryError:
    return RegistryError(
        f"{name} version {version} fails to load ({type(exc).__name__}: {exc}); "
        "aliases left unchanged"
    )


def measure_onnx_latency_ms(
    model: bytes | str | Path, image_size: int, *, runs: int = 50, threads: int | None = 1
) -> float:
    """Batch-1 ONNX Runtime latency, median over ``runs`` timed runs (after 5 warm-up runs),
    in ms, with the serving session settings (``artifact.open_session``; ``threads`` 1 is
    the API's ``PLANTS_ORT_THREADS`` default)."""
    return _latency_p50_ms(artifact.open_session(model, threads), image_size, runs)


def _latency_p50_ms(session, image_size: int, runs: int) -> float:
    return float(np.median(latency_samples_ms(session, image_size, runs)))


def latency_samples_ms(session, image_size: int, runs: int) -> list[float]:
    """``runs`` timed batch-1 runs of an open session (after 5 warm-up runs), in ms."""
    from plants_mlops.contracts import ONNX_INPUT

    x = np.zeros((1, 3, image_size, image_size), np.float32)
    for _ in range(5):
        session.run(None, {ONNX_INPUT: x})
    times = []
    for _ in range(max(runs, 1)):
        t0 = time.perf_counter()
        session.run(None, {ONNX_INPUT: x})
        times.append((time.perf_counter() - t0) * 1000.0)
    return times


def measure_version(
    cl, version: str, name: str = REGISTERED_MODEL_NAME, *, runs: int = 50, threads: int = 1
) -> dict:
    """Download the version, load it (contract checked) and measure what the gate limits:
    the serving ONNX file's size and its batch-1 ONNX Runtime latency (p50 over ``runs``).
    RegistryError "fails to load" when it cannot serve."""
    with tempfile.TemporaryDirectory(prefix="plants-gate-") as tmp:
        try:
            folder = artifact.download_version(cl, name, version, Path(tmp))
            loaded = artifact.ServingArtifact.from_folder(folder, threads, version)
            size = (folder / artifact.ONNX_FILE).stat().st_size
        except Exception as exc:
            raise _fails_to_load(name, version, exc) from exc
    latency = _latency_p50_ms(loaded.session, loaded.meta.image_size, runs)
    return {
        "model_bytes": int(size),
        "model_mb": size / 1e6,
        "latency_p50_ms": latency,
        "latency_runs": runs,
        "latency_threads": threads,
        "meta": loaded.meta,
    }


def _actor() -> str:
    """Who moves an alias: ``PLANTS_MLOPS_ACTOR`` (its former name), else who a curation
    decision names (``PLANTS_USER``, else the login name)."""
    from plants_mlops.db.base import current_user

    return os.environ.get("PLANTS_MLOPS_ACTOR") or current_user()


def move_alias(
    cl,
    alias: str,
    version: str | None,
    *,
    action: str,
    reason: str,
    name: str = REGISTERED_MODEL_NAME,
    extra: Mapping[str, Any] | None = None,
) -> dict:
    """Point ``alias`` at ``version`` (None: remove the alias) and append the move to the
    audit trail."""
    previous = alias_version(cl, alias, name)
    if version is None:
        cl.delete_registered_model_alias(name, alias)
    else:
        cl.set_registered_model_alias(name, alias, str(version))
    now = dt.datetime.now(dt.UTC)
    entry = {
        "at": now.isoformat(timespec="microseconds"),
        "actor": _actor(),
        "action": action,
        "alias": alias,
        "from_version": previous,
        "to_version": None if version is None else str(version),
        "reason": reason,
        **(extra or {}),
    }
    key = f"{AUDIT_PREFIX}{now.strftime('%Y%m%dT%H%M%S.%fZ')}.{secrets.token_hex(3)}"
    cl.set_registered_model_tag(name, key, json.dumps(entry, sort_keys=True))
    return entry


def audit_trail(cl, name: str = REGISTERED_MODEL_NAME) -> list[dict]:
    """Every recorded alias move, oldest first."""
    from mlflow.exceptions import MlflowException

    try:
        tags = cl.get_registered_model(name).tags
    except MlflowException as exc:
        if _not_found(exc):
            return []
        raise
    entries = []
    for key in sorted(k for k in tags if k.startswith(AUDIT_PREFIX)):
        try:
            entries.append(json.loads(tags[key]))
        except json.JSONDecodeError:
            entries.append({"at": key.removeprefix(AUDIT_PREFIX), "raw": tags[key]})
    return entries


def _limit_check(name: str, value: float | None, limit: float, what: str, unit: str) -> dict:
    """A PROBLEM.md limit: ``value <= limit``; an unmeasured value (None) fails."""
    if value is None:
        return {"name": name, "passed": False, "detail": f"{what} not measured"}
    return _check(
        name,
        f"{what} {value:.2f} {unit}",
        "<=",
        f"limit {limit:.2f} {unit}",
        value,
        limit,
        digits=2,
        unit=unit,
    )


def _check(
    name: str,
    measured: str,
    op: str,
    bound: str,
    value: float,
    limit: float,
    *,
    digits: int = 4,
    unit: str = "",
) -> dict:
    """A check ``value op limit`` (op ``>=`` or ``<=``) whose detail states what holds:
    ``f1 0.9600 >= threshold 0.9500`` when it passes, ``f1 0.9486 < threshold 0.9900
    (needs >= 0.9900)`` when it fails (``measured``: the value as shown, ``bound``: the
    limit as shown, e.g. ``best baseline 0.9000 + 0.0100``)."""
    passed = value >= limit if op == ">=" else value <= limit
    if passed:
        return {"name": name, "passed": True, "detail": f"{measured} {op} {bound}"}
    needs = f"{op} {limit:.{digits}f}" + (f" {unit}" if unit else "")
    failed = "<" if op == ">=" else ">"
    return {"name": name, "passed": False, "detail": f"{measured} {failed} {bound} (needs {needs})"}


def evaluate_gate(
    candidate_f1: float,
    baseline_f1: float | None,
    champion_f1: float | None,
    gate: Gate,
    *,
    model_mb: float | None,
    latency_ms: float | None,
    behaviour: Mapping[str, Any] | None = None,
) -> dict:
    """The promotion gate (thresholds from ``params:registry.gate``). Returns
    ``{verdict: pass|fail, checks: [...], refused_because: [...]}``; every check says its
    inputs, so the verdict can be explained from the version's tags alone.

    PROBLEM.md's limits are checks too: the serving ONNX file's size (``model_mb``, 1 MB =
    10^6 bytes) <= ``gate.max_model_mb`` and its batch-1 ONNX Runtime latency p50
    (``latency_ms``) <= ``gate.latency_budget_ms``; a size or latency that was not measured
    (None) fails its check, so an unmeasured model is never promoted.

    ``behaviour`` is ``behaviour_report.metrics`` (the behaviour step): invariance, clear
    cases, OOD flags, checked against ``gate.behaviour``; a figure the report lacks (a
    model without an OOD detector) fails its check. None (a caller outside the pipeline,
    which always passes the report): those checks are skipped and say so."""
    checks = [
        _limit_check("model_size", model_mb, gate.max_model_mb, "serving ONNX", "MB"),
        _limit_check(
            "latency", latency_ms, gate.latency_budget_ms, "batch-1 ONNX Runtime p50", "ms"
        ),
        _check(
            "min_f1",
            f"f1 {candidate_f1:.4f}",
            ">=",
            f"threshold {gate.min_f1:.4f}",
            candidate_f1,
            gate.min_f1,
        ),
    ]
    if gate.require_beat_baseline and baseline_f1 is not None:
        margin = gate.baseline_margin
        checks.append(
            _check(
                "baseline",
                f"f1 {candidate_f1:.4f}",
                ">=",
                f"best baseline {baseline_f1:.4f} + {margin:.4f}",
                candidate_f1,
                baseline_f1 + margin,
            )
        )
    if champion_f1 is not None:
        tolerance = gate.champion_tolerance
        checks.append(
            _check(
                "champion",
                f"f1 {candidate_f1:.4f}",
                ">=",
                f"champion {champion_f1:.4f} - {tolerance:.4f}",
                candidate_f1,
                champion_f1 - tolerance,
            )
        )
    else:
        checks.append(
            {
                "name": "champion",
                "passed": True,
                "detail": "no champion measured on this split: check skipped",
            }
        )
    checks += behaviour_checks(behaviour, gate)
    return {
        "verdict": "pass" if all(c["passed"] for c in checks) else "fail",
        "checks": checks,
        "refused_because": [f"{c['name']}: {c['detail']}" for c in checks if not c["passed"]],
    }


def behaviour_checks(metrics: Mapping[str, Any] | None, gate: Gate) -> list[dict]:
    """The behaviour figures against ``gate.behaviour`` (see :func:`evaluate_gate`)."""
    if metrics is None:
        return [
            {
                "name": "behaviour",
                "passed": True,
                "detail": "no behaviour report given: checks skipped",
            }
        ]
    b = gate.behaviour
    # Invariance to an edit and clear cases are the task's (task.label_preserving_edits,
    # behaviour.clear_cases): an edit a task does not list, or a task without clear cases,
    # is not measured and not checked. A missing OOD figure (no detector) still fails.
    optional = {"invariance", "mirror_invariance", "functionality"}
    rules = (  # name, metric, limit, at least (else at most), what
        ("invariance", "invariance_min", b.min_invariance, True, "labels kept, worst edit"),
        (
            "mirror_invariance",
            "invariance_mirror",
            b.min_mirror_invariance,
            True,
            "labels kept under the mirror",
        ),
        ("functionality", "functionality", b.min_functionality, True, "clear cases right"),
        (
            "ood_flagged",
            "ood_flagged",
            b.min_ood_flagged,
            True,
            "held-out out-of-distribution photos flagged",
        ),
        ("false_flags", "false_flags", b.max_false_flags, False, "test images flagged OOD"),
    )
    checks = []
    for name, key, limit, at_least, what in rules:
        value = metrics.get(key)
        if value is None:
            skipped = name in optional
            detail = f"{what}: not measured" + (" for this task: not checked" if skipped else "")
            checks.append({"name": name, "passed": skipped, "detail": detail})
            continue
        value = float(value)
        sign = ">=" if at_least else "<="
        checks.append(_check(name, f"{what} {value:.4f}", sign, f"{limit:.4f}", value, limit))
    return checks


def register_version(
    cl,
    logged: LoggedArtifact,
    tags: Mapping[str, Any],
    name: str = REGISTERED_MODEL_NAME,
) -> str:
    """A new version of ``name`` from a logged serving model."""
    ensure_registered_model(cl, name)
    mv = cl.create_model_version(
        name,
        source=logged.artifact_location,
        run_id=logged.run_id,
        tags={k: str(v) for k, v in tags.items()},
        model_id=logged.model_id,
    )
    return str(mv.version)


def version_of_run(cl, run_id: str, name: str = REGISTERED_MODEL_NAME):
    """The version ``run_id``'s model is registered as, or None: one run, one version."""
    for mv in cl.search_model_versions(f"run_id='{run_id}'"):
        if mv.name == name:
            return mv
    return None


_DEFAULT_REASONS = {"promote": "manual promotion", "rollback": "manual rollback"}


def move_champion(
    cl,
    version: str,
    *,
    action: str,
    reason: str | None,
    name: str = REGISTERED_MODEL_NAME,
    force: bool = False,
) -> dict:
    """The one way the ``champion`` alias moves (promote, rollback, rollback --to, the
    registry node). The version must exist, load, and carry the gate's recorded verdict
    ``pass``; a version the gate failed, or one with no verdict (its registry run died
    before the gate: the next registry run gates it), moves only with ``force`` and a
    ``reason``, and the audit entry records the override and the verdict it overrode."""
    version = str(version)
    try:
        mv = cl.get_model_version(name, version)
    except Exception as exc:
        raise RegistryError(f"{name} has no version {version} ({exc})") from exc
    if alias_version(cl, ALIAS_CHAMPION, name) == version and not serving_refusal(
        cl, version, name
    ):  # an alias moved by hand onto an ungated version may still be promoted on record
        raise RegistryError(f"version {version} is already the champion")
    tags = mv.tags or {}
    verdict = tags.get("verdict")
    if verdict != "pass":
        why = (
            f"failed the gate ({tags.get('gate.refused') or tags.get('gate.checks', '')})"
            if verdict == "fail"
            else "has no gate verdict (its registry run did not finish: the next registry "
            "run gates it)"
        )
        if not force:
            raise RegistryError(
                f"version {version} {why}; to make it the champion anyway use --force --reason TEXT"
            )
        if not reason:
            raise RegistryError("--force needs --reason TEXT: the audit trail records why")
        action = f"force-{action}"
    verify_loadable(cl, version, name)
    reason = reason or _DEFAULT_REASONS.get(action.removeprefix("force-"), action)
    extra = {"gate_verdict": verdict or "none", "forced": action.startswith("force-")}
    entry = move_alias(
        cl, ALIAS_CHAMPION, version, action=action, reason=reason, name=name, extra=extra
    )
    if alias_version(cl, ALIAS_CHALLENGER, name) == version:
        # the champion is no longer the challenger: an audited move too (to_version null)
        move_alias(cl, ALIAS_CHALLENGER, None, action=action, reason=reason, name=name, extra=extra)
    return entry


def promote(
    cl,
    version: str,
    reason: str | None = None,
    name: str = REGISTERED_MODEL_NAME,
    force: bool = False,
) -> dict:
    """Make ``version`` the champion (``move_champion``'s rules) and tag why."""
    entry = move_champion(cl, version, action="promote", reason=reason, name=name, force=force)
    cl.set_model_version_tag(name, str(version), "promoted_reason", entry["reason"])
    return entry


def serving_refusal(cl, version: str, name: str = REGISTERED_MODEL_NAME) -> str | None:
    """Why the API must not serve ``version`` as the champion, or None. The alias can be
    moved around ``move_champion`` (MLflow's UI or API): a hot reload then follows it only
    to a version with the gate's ``pass`` verdict, or one the audit trail's last champion
    move made champion with ``--force --reason``."""
    version = str(version)
    tags = cl.get_model_version(name, version).tags or {}
    if tags.get("verdict") == "pass":
        return None
    for entry in reversed(audit_trail(cl, name)):
        if entry.get("alias") != ALIAS_CHAMPION:
            continue
        forced = entry.get("forced") or str(entry.get("action", "")).startswith("force-")
        if str(entry.get("to_version")) == version and forced:
            return None
        break
    return (
        f"{name} version {version} holds the champion alias without a passing gate verdict "
        f"(verdict: {tags.get('verdict') or 'none'}) or a recorded --force: not served; move "
        "the alias with `plants-mlops registry promote|rollback`"
    )


def champion_history(cl, name: str = REGISTERED_MODEL_NAME) -> list[str]:
    """The champions in order, as a stack: a move pushes its version, a rollback pops back
    to its target (its latest term, when it was champion more than once). The last entry
    is the current champion."""
    stack: list[str] = []
    for entry in audit_trail(cl, name):
        if entry.get("alias") != ALIAS_CHAMPION or not entry.get("to_version"):
            continue
        target = str(entry["to_version"])
        if entry.get("action") in ("rollback", "force-rollback") and target in stack:
            del stack[len(stack) - stack[::-1].index(target) :]
        else:
            stack.append(target)
    return stack


def previous_champion(cl, name: str = REGISTERED_MODEL_NAME) -> str | None:
    """The champion before the current one in the champion history (rollbacks undone)."""
    current = alias_version(cl, ALIAS_CHAMPION, name)
    history = champion_history(cl, name)
    while history and history[-1] == current:
        history.pop()
    return history[-1] if history else None


def rollback(
    cl,
    to: str | None,
    reason: str | None = None,
    name: str = REGISTERED_MODEL_NAME,
    force: bool = False,
) -> dict:
    """Return the champion to the previous one (or ``to``), under ``move_champion``'s rules."""
    current = alias_version(cl, ALIAS_CHAMPION, name)
    target = str(to) if to is not None else previous_champion(cl, name)
    if target is None:
        raise RegistryError(
            f"no previous champion recorded for {name} (current: {current}); "
            "name one with --to VERSION"
        )
    return move_champion(cl, target, action="rollback", reason=reason, name=name, force=force)


def list_versions(cl, name: str = REGISTERED_MODEL_NAME) -> list[dict]:
    """Every version, newest first, with aliases, verdict and headline metrics."""
    from mlflow.exceptions import MlflowException

    try:
        by_alias = cl.get_registered_model(name).aliases or {}
    except MlflowException as exc:
        if _not_found(exc):
            return []
        raise
    versions = cl.search_model_versions(f"name='{name}'")
    rows = []
    for mv in sorted(versions, key=lambda v: int(v.version), reverse=True):
        tags = mv.tags or {}
        rows.append(
            {
                "version": str(mv.version),
                # search results may omit aliases: take them from the registered model
                "aliases": sorted(a for a, v in by_alias.items() if str(v) == str(mv.version)),
                "created_at": dt.datetime.fromtimestamp(
                    mv.creation_timestamp / 1000, dt.UTC
                ).isoformat(timespec="seconds"),
                "run_id": mv.run_id,
                "verdict": tags.get("verdict"),
                "test_f1_macro": _float(tags.get("test_f1_macro")),
                "test_accuracy": _float(tags.get("test_accuracy")),
                "dataset_fingerprint": tags.get("dataset_fingerprint"),
                # versions registered before the choice existed served fp32
                "precision": tags.get("serving_precision", "fp32"),
                # why the gate refused it (one clause per failed check); None: it did not
                "refused_because": tags.get("gate.refused"),
                # the version's model card (pipelines/registry/card.py); None before cards
                "model_card": tags.get("model_card"),
            }
        )
    return rows


def _float(v: str | None) -> float | None:
    try:
        return float(v) if v is not None else None
    except ValueError:
        return None
