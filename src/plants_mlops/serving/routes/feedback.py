"""``POST /feedback`` (``X-API-Key``): the true label of an earlier prediction, for review."""

from __future__ import annotations

from fastapi import APIRouter, Depends
from starlette.concurrency import run_in_threadpool

from plants_mlops.contracts import LABELS
from plants_mlops.db.feedback import FeedbackDecided
from plants_mlops.errors import UserFacingError
from plants_mlops.serving.deps import ServiceDep, require_api_key
from plants_mlops.serving.errors import ApiError
from plants_mlops.serving.routes.admin import AUTH_ERRORS
from plants_mlops.serving.schemas import ErrorResponse, FeedbackRequest, FeedbackResponse

router = APIRouter(
    tags=["feedback"], dependencies=[Depends(require_api_key)], responses=AUTH_ERRORS
)


@router.post(
    "/feedback",
    response_model=FeedbackResponse,
    status_code=202,
    responses={404: {"model": ErrorResponse}, 409: {"model": ErrorResponse}},
    summary="Say what an earlier prediction should have been; a person reviews it",
)
async def feedback(service: ServiceDep, body: FeedbackRequest) -> FeedbackResponse:
    seen = await run_in_threadpool(service.feedback.find, body.prediction_id)
    if seen is None:
        raise ApiError(
            404,
            "unknown_prediction",
            f"no prediction {body.prediction_id!r} in the prediction log "
            f"(PLANTS_PREDICTION_LOG={service.config.prediction_log})",
        )
    model = service.manager.current
    labels = model.meta.labels if model is not None else LABELS
    try:
        feedback_id, replaced = await run_in_threadpool(
            service.feedback.file, seen, body.label, body.comment, labels
        )
    except FeedbackDecided as exc:
        raise ApiError(409, "feedback_decided", str(exc)) from None
    except UserFacingError as exc:  # a label the served model does not know
        raise ApiError(422, "invalid_request", str(exc)) from None
    kept = bool(seen.get("kept_image"))
    return FeedbackResponse(
        feedback_id=feedback_id,
        status="pending",
        image_kept=kept,
        replaced=replaced,
        detail="filed for review (`plants-mlops data review`)"
        + ("" if kept else "; the image was not kept, so it cannot join the training data"),
    )
