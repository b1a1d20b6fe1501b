"""MLflow Model Registry: versions of ``plants-classifier``, the promotion gate, alias moves
and their audit trail.

Aliases (``champion``, ``challenger``), never the deprecated stages. Every alias move is
recorded as a registered-model tag ``audit.<UTC time>.<random>`` whose value is a JSON
object ``{at, actor, action, alias, from_version, to_version, reason}``: it lives in the
tracking store itself, so it works the same on SQLite, PostgreSQL and a remote server, and
needs no extra artifact store.

Before an alias points to a version, the version's model is downloaded and run once through
ONNX Runtime: a model that fails to load never becomes champion.
"""

from __future__ import annotations

import datetime as dt
import getpass
import json
import os
import secrets
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from plants_mlops.contracts import ALIAS_CHALLENGER, ALIAS_CHAMPION, REGISTERED_MODEL_NAME
from plants_mlops.errors import UserFacingError
from plants_mlops.model import tracking

AUDIT_PREFIX = "audit."
SERVING_META_FILE = "serving_meta.json"


class RegistryError(UserFacingError):
    """A registry operation was refused; nothing was changed."""


def client(uri: str | None = None, must_exist: bool = False):
    """A client for the resolved tracking URI, after checking that it answers."""
    from mlflow import MlflowClient

    uri = tracking.configure(uri, must_exist=must_exist)
    return MlflowClient(tracking_uri=uri, registry_uri=uri)


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
                name, description="Dandelion vs grass classifier (ONNX serving model)."
            )
        except MlflowException as exc2:  # created concurrently
            if "RESOURCE_ALREADY_EXISTS" not in str(getattr(exc2, "error_code", "")):
                raise


def download_model(cl, version: str, dest: Path, name: str = REGISTERED_MODEL_NAME) -> Path:
    """Download a version's model folder (model.onnx, serving_meta.json, MLmodel)."""
    import mlflow

    mv = cl.get_model_version(name, version)
    return Path(
        mlflow.artifacts.download_artifacts(
            artifact_uri=mv.source,
            dst_path=str(dest),
            tracking_uri=cl._tracking_client.tracking_uri,
        )
    )


def load_serving_model(folder: Path):
    """(ORT session, serving meta) of a downloaded model folder; ValueError when broken."""
    from plants_mlops.model.export import check_serving_model, onnx_session

    meta_path = folder / SERVING_META_FILE
    onnx_path = folder / "model.onnx"
    if not onnx_path.is_file() or not meta_path.is_file():
        present = sorted(p.name for p in folder.iterdir()) if folder.is_dir() else []
        raise ValueError(f"model folder lacks model.onnx or {SERVING_META_FILE} (has {present})")
    meta = json.loads(meta_path.read_text())
    try:
        session = onnx_session(str(onnx_path))
    except Exception as exc:  # onnxruntime raises its own exception types
        raise ValueError(f"ONNX Runtime cannot load model.onnx: {exc}") from exc
    check_serving_model(session, int(meta["image_size"]))
    return session, meta


def verify_loadable(cl, version: str, name: str = REGISTERED_MODEL_NAME) -> dict:
    """Download and run the version once; RegistryError when it fails. Returns its meta."""
    with tempfile.TemporaryDirectory(prefix="plants-model-") as tmp:
        try:
            _, meta = load_serving_model(download_model(cl, version, Path(tmp), name))
        except Exception as exc:
            raise RegistryError(
                f"{name} version {version} fails to load ({type(exc).__name__}: {exc}); "
                "aliases left unchanged"
            ) from exc
    return meta


def _actor() -> str:
    if os.environ.get("PLANTS_MLOPS_ACTOR"):
        return os.environ["PLANTS_MLOPS_ACTOR"]
    try:
        return getpass.getuser()
    except (KeyError, OSError):
        return "unknown"


def move_alias(
    cl, alias: str, version: str, *, action: str, reason: str, name: str = REGISTERED_MODEL_NAME
) -> dict:
    """Point ``alias`` at ``version`` and append the move to the audit trail."""
    previous = alias_version(cl, alias, name)
    cl.set_registered_model_alias(name, alias, str(version))
    now = dt.datetime.now(dt.UTC)
    entry = {
        "at": now.isoformat(timespec="microseconds"),
        "actor": _actor(),
        "action": action,
        "alias": alias,
        "from_version": previous,
        "to_version": str(version),
        "reason": reason,
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


def evaluate_gate(
    candidate_f1: float,
    baseline_f1: float | None,
    champion_f1: float | None,
    gate: Mapping[str, Any],
) -> dict:
    """The promotion gate. Returns ``{verdict: pass|fail, checks: [...]}``; every check says
    its inputs, so the verdict can be explained from the version's tags alone."""
    min_f1 = float(gate.get("min_f1", 0.9))
    margin = float(gate.get("baseline_margin", 0.0))
    tolerance = float(gate.get("champion_tolerance", 0.01))
    checks = [
        {
            "name": "min_f1",
            "passed": candidate_f1 >= min_f1,
            "detail": f"f1 {candidate_f1:.4f} >= threshold {min_f1:.4f}",
        }
    ]
    if gate.get("require_beat_baseline", True) and baseline_f1 is not None:
        checks.append(
            {
                "name": "baseline",
                "passed": candidate_f1 >= baseline_f1 + margin,
                "detail": f"f1 {candidate_f1:.4f} >= best baseline {baseline_f1:.4f} + {margin:.4f}",
            }
        )
    if champion_f1 is not None:
        checks.append(
            {
                "name": "champion",
                "passed": candidate_f1 >= champion_f1 - tolerance,
                "detail": f"f1 {candidate_f1:.4f} >= champion {champion_f1:.4f} - {tolerance:.4f}",
            }
        )
    else:
        checks.append(
            {
                "name": "champion",
                "passed": True,
                "detail": "no champion measured on this split: check skipped",
            }
        )
    return {"verdict": "pass" if all(c["passed"] for c in checks) else "fail", "checks": checks}


def register_version(
    cl,
    model_uri: str,
    run_id: str | None,
    tags: Mapping[str, Any],
    name: str = REGISTERED_MODEL_NAME,
) -> str:
    """A new version of ``name`` from a logged model URI (``models:/m-...`` or ``runs:/``)."""
    import mlflow

    ensure_registered_model(cl, name)
    mv = mlflow.register_model(model_uri, name, tags={k: str(v) for k, v in tags.items()})
    if run_id and mv.run_id and mv.run_id != run_id:
        raise RegistryError(
            f"registered version {mv.version} belongs to run {mv.run_id}, not {run_id}"
        )
    return str(mv.version)


def promote(cl, version: str, reason: str, name: str = REGISTERED_MODEL_NAME) -> dict:
    """Make ``version`` the champion (after checking it loads)."""
    version = str(version)
    try:
        cl.get_model_version(name, version)
    except Exception as exc:
        raise RegistryError(f"{name} has no version {version} ({exc})") from exc
    if alias_version(cl, ALIAS_CHAMPION, name) == version:
        raise RegistryError(f"version {version} is already the champion")
    verify_loadable(cl, version, name)
    entry = move_alias(cl, ALIAS_CHAMPION, version, action="promote", reason=reason, name=name)
    if alias_version(cl, ALIAS_CHALLENGER, name) == version:
        cl.delete_registered_model_alias(name, ALIAS_CHALLENGER)
    cl.set_model_version_tag(name, version, "promoted_reason", reason)
    return entry


def previous_champion(cl, name: str = REGISTERED_MODEL_NAME) -> str | None:
    """The version that was champion before the current one, from the audit trail."""
    current = alias_version(cl, ALIAS_CHAMPION, name)
    for entry in reversed(audit_trail(cl, name)):
        if (
            entry.get("alias") == ALIAS_CHAMPION
            and entry.get("to_version") == current
            and entry.get("from_version") not in (None, current)
        ):
            return entry["from_version"]
    return None


def rollback(cl, to: str | None, reason: str, name: str = REGISTERED_MODEL_NAME) -> dict:
    current = alias_version(cl, ALIAS_CHAMPION, name)
    target = str(to) if to is not None else previous_champion(cl, name)
    if target is None:
        raise RegistryError(
            f"no previous champion recorded for {name} (current: {current}); "
            "name one with --to VERSION"
        )
    if target == current:
        raise RegistryError(f"version {target} is already the champion")
    try:
        cl.get_model_version(name, target)
    except Exception as exc:
        raise RegistryError(f"{name} has no version {target} ({exc})") from exc
    verify_loadable(cl, target, name)
    return move_alias(cl, ALIAS_CHAMPION, target, action="rollback", reason=reason, name=name)


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
            }
        )
    return rows


def _float(v: str | None) -> float | None:
    try:
        return float(v) if v is not None else None
    except ValueError:
        return None
