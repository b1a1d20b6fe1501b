"""The ``feedback_candidates`` table: feedback from the API (``POST /feedback``) waiting
for a person's decision; an accepted candidate becomes a pending ``plants_data`` row."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import sqlalchemy as sa

from plants_mlops import contracts
from plants_mlops.db.base import current_user, metadata, utcnow
from plants_mlops.db.plants_data import plants_data
from plants_mlops.errors import UserFacingError

# Feedback from the API (POST /feedback): a candidate row that enters plants_data only when
# a person accepts it (`plants-mlops data feedback accept ID`). One row per prediction (the
# server's prediction id); a later feedback on it replaces the pending one (`times_filed`).
FEEDBACK_STATES = ("pending", "accepted", "rejected")
feedback_candidates = sa.Table(
    "feedback_candidates",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    # The prediction id since schema 3 (a client's request id before: kept for old rows).
    sa.Column("request_id", sa.String(64), nullable=False, index=True),
    sa.Column("true_label", sa.String(64), nullable=False),
    sa.Column("predicted_label", sa.String(64), nullable=True),
    sa.Column("confidence", sa.Float, nullable=True),
    sa.Column("model_version", sa.String(32), nullable=True),
    sa.Column("image_path", sa.String(1024), nullable=True),  # the kept image, if any
    sa.Column("image_sha256", sa.String(64), nullable=True),
    sa.Column("comment", sa.Text, nullable=True),
    sa.Column("status", sa.String(16), nullable=False),
    sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
    sa.Column("decided_by", sa.String(128), nullable=True),
    sa.Column("decided_at", sa.DateTime(timezone=True), nullable=True),
    sa.Column("reason", sa.Text, nullable=True),
    sa.Column("row_id", sa.Integer, nullable=True),  # the plants_data row it became
    sa.Column("prediction_id", sa.String(32), nullable=True),
    sa.Column("times_filed", sa.Integer, nullable=True),
    sa.Index("ux_feedback_candidates_prediction_id", "prediction_id", unique=True),
)


class FeedbackDecided(UserFacingError):
    """Feedback on a prediction whose candidate a person has already accepted or rejected."""


def file_feedback(
    engine: sa.Engine, labels: Sequence[str], *, prediction_id: str, **values: Any
) -> tuple[int, bool]:
    """The pending candidate of ``prediction_id``, whose true label is one of ``labels``
    (the served model's): a new one, or the earlier pending one replaced by these values
    (counted in ``times_filed``). Returns (id, replaced). Never touches plants_data;
    FeedbackDecided when a person already decided on it."""
    if values.get("true_label") not in labels:
        raise UserFacingError(
            f"label {values.get('true_label')!r} is not one of {', '.join(labels)}"
        )
    # the request that got the prediction (what the server's log lines carry)
    values["request_id"] = values.get("request_id") or prediction_id
    for _ in range(3):  # two workers filing the same prediction at once: one inserts
        try:
            return _file_once(engine, prediction_id, values)
        except sa.exc.IntegrityError:
            continue
    raise RuntimeError(f"could not file feedback on prediction {prediction_id}")


def _file_once(engine: sa.Engine, prediction_id: str, values: dict) -> tuple[int, bool]:
    t = feedback_candidates
    with engine.begin() as conn:
        old = conn.execute(
            sa.select(t.c.id, t.c.status, t.c.times_filed).where(t.c.prediction_id == prediction_id)
        ).first()
        if old is not None and old.status != "pending":
            raise FeedbackDecided(
                f"feedback on prediction {prediction_id} was already {old.status} "
                f"(candidate {old.id})"
            )
        if old is not None:
            times = sa.func.coalesce(t.c.times_filed, 1) + 1  # in the database: no lost count
            conn.execute(sa.update(t).where(t.c.id == old.id).values(**values, times_filed=times))
            return int(old.id), True
        result = conn.execute(
            sa.insert(t).values(
                **values,
                prediction_id=prediction_id,
                times_filed=1,
                status="pending",
                created_at=utcnow(),
            )
        )
        return int(result.inserted_primary_key[0]), False


def list_feedback(engine: sa.Engine, status: str | None = "pending") -> list[dict[str, Any]]:
    query = sa.select(feedback_candidates).order_by(feedback_candidates.c.id)
    if status:
        query = query.where(feedback_candidates.c.status == status)
    with engine.connect() as conn:
        return [dict(r._mapping) for r in conn.execute(query)]


def decide_feedback(
    engine: sa.Engine, candidate_id: int, accept: bool, reason: str, who: str | None = None
) -> dict[str, Any]:
    """Accept (insert a pending plants_data row whose url_source is the kept image, so the
    next ingestion stores it like any other) or reject a pending candidate."""
    now = utcnow()
    with engine.begin() as conn:
        cand = conn.execute(
            sa.select(feedback_candidates).where(feedback_candidates.c.id == candidate_id)
        ).first()
        if cand is None:
            raise UserFacingError(f"no feedback candidate with id {candidate_id}")
        if cand.status != "pending":
            raise UserFacingError(f"feedback {candidate_id} is already {cand.status}")
        row_id = None
        if accept:
            if not cand.image_path:
                raise UserFacingError(
                    f"feedback {candidate_id} has no kept image (the API keeps the image of an "
                    "uncertain prediction only with PLANTS_KEEP_UNCERTAIN_IMAGES=true): "
                    "reject it, or add the image by URL with `db seed`"
                )
            existing = conn.execute(
                sa.select(plants_data.c.id).where(plants_data.c.url_source == cand.image_path)
            ).first()
            if existing is not None:
                row_id = existing.id
            else:
                result = conn.execute(
                    sa.insert(plants_data).values(
                        url_source=cand.image_path,
                        label=cand.true_label,
                        sha256=cand.image_sha256,
                        status=contracts.STATUS_PENDING,
                        created_at=now,
                        updated_at=now,
                    )
                )
                row_id = int(result.inserted_primary_key[0])
        conn.execute(
            sa.update(feedback_candidates)
            .where(feedback_candidates.c.id == candidate_id)
            .values(
                status="accepted" if accept else "rejected",
                decided_by=who or current_user(),
                decided_at=now,
                reason=reason,
                row_id=row_id,
            )
        )
    return {"id": candidate_id, "accepted": accept, "row_id": row_id}
