"""The ``data_decisions`` table: curation decisions (exclude, relabel, restore) on
``plants_data`` rows, an append-only log of who decided what, when and why."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import sqlalchemy as sa

from plants_mlops.db.base import current_user, metadata, utcnow
from plants_mlops.db.plants_data import plants_data
from plants_mlops.errors import UserFacingError

# Curation decisions on plants_data rows: an append-only log (who, when, why). The newest
# decision of a row is in force; `restore` cancels the ones before it. Raw bytes are never
# deleted: formatting leaves an excluded row out and indexes a relabelled one under its
# new label (plants_mlops.pipelines.curation.decisions).
DECISION_ACTIONS = ("exclude", "relabel", "restore")
data_decisions = sa.Table(
    "data_decisions",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("row_id", sa.Integer, nullable=False, index=True),
    sa.Column("action", sa.String(16), nullable=False),
    sa.Column("label", sa.String(64), nullable=True),  # the new label of a relabel
    sa.Column("reason", sa.Text, nullable=False),
    sa.Column("decided_by", sa.String(128), nullable=False),
    sa.Column("decided_at", sa.DateTime(timezone=True), nullable=False),
)


def record_decision(
    engine: sa.Engine,
    row_id: int,
    action: str,
    reason: str,
    *,
    label: str | None = None,
    labels: Sequence[str],
    who: str | None = None,
) -> dict[str, Any]:
    """Record an exclude / relabel / restore decision on a plants_data row; a relabel
    names one of ``labels`` (the task's)."""
    if action not in DECISION_ACTIONS:
        raise UserFacingError(f"action {action!r} is not one of {', '.join(DECISION_ACTIONS)}")
    if action != "restore" and not (reason or "").strip():
        raise UserFacingError(f"{action} needs a reason (--reason TEXT)")
    if action == "relabel" and label not in labels:
        raise UserFacingError(f"label {label!r} is not one of {', '.join(labels)}")
    with engine.begin() as conn:
        row = conn.execute(
            sa.select(plants_data.c.id, plants_data.c.label).where(plants_data.c.id == row_id)
        ).first()
        if row is None:
            raise UserFacingError(f"no plants_data row with id {row_id}")
        last = conn.execute(
            sa.select(data_decisions.c.action, data_decisions.c.label)
            .where(data_decisions.c.row_id == row_id)
            .order_by(data_decisions.c.id.desc())
            .limit(1)
        ).first()
        in_force = last if last is not None and last.action != "restore" else None
        if action == "restore" and in_force is None:
            raise UserFacingError(f"row {row_id} has no decision in force: nothing to restore")
        if action == "exclude" and in_force is not None and in_force.action == "exclude":
            raise UserFacingError(f"row {row_id} is already excluded")
        current = in_force.label if in_force is not None and in_force.action == "relabel" else None
        if action == "relabel" and label == (current or row.label):
            raise UserFacingError(f"row {row_id} is already labelled {label!r}")
        values = {
            "row_id": row_id,
            "action": action,
            "label": label if action == "relabel" else None,
            "reason": (reason or "").strip() or "restored",
            "decided_by": who or current_user(),
            "decided_at": utcnow(),
        }
        conn.execute(sa.insert(data_decisions).values(**values))
    # the decision in force it replaces (an exclude a relabel cancels, say), or None
    return {**values, "replaces": None if in_force is None else in_force.action}


def decision_history(engine: sa.Engine, row_id: int | None = None) -> list[dict[str, Any]]:
    """Every decision, oldest first (of one row when ``row_id`` is given)."""
    query = sa.select(data_decisions).order_by(data_decisions.c.id)
    if row_id is not None:
        query = query.where(data_decisions.c.row_id == row_id)
    with engine.connect() as conn:
        return [dict(r._mapping) for r in conn.execute(query)]


def decisions_in_force(engine: sa.Engine) -> list[dict[str, Any]]:
    """The newest decision of each row, unless that is a restore: what formatting applies."""
    latest: dict[int, dict[str, Any]] = {}
    for d in decision_history(engine):
        latest[d["row_id"]] = d
    return [d for d in latest.values() if d["action"] != "restore"]
