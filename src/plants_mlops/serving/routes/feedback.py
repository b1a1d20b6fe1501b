"""``POST /feedback`` (``X-API-Key``): the true label of an earlier prediction, for review."""

from __future__ import annotations

from fastapi import APIRouter, Depends, Request
from starlette.concurrency import run_in_threadpool

from plants_mlops.db.feedback import FeedbackDecided
from plants_mlops.errors import UserFacingError
from plants_mlops.serving.deps import ModelDep, ServiceDep, require_api_key
from plants_mlops.serving.errors import ApiError
from plants_mlops.serving.ratelimit import client_of
from plants_mlops.serving.routes.admin import AUTH_ERRORS
from plants_mlops.serving.schemas import ErrorResponse, FeedbackRequest, FeedbackResponse

router = APIRouter(
    tags=["feedback"], dependencies=[Depends(require_api_key)], responses=AUTH_ERRORS
)


@router.post(
    "/feedback",
    response_model=FeedbackResponse,
    status_code=202,
    responses={
        404: {"model": ErrorResponse},
        409: {"model": ErrorResponse},
        422: {"model": ErrorResponse, "description": "a label the served model does not know"},
        429: {"model": ErrorResponse, "description": "too many requests from this client"},
        503: {"model": ErrorResponse, "description": "no model loaded yet"},
    },
    summary="Say what an earlier prediction should have been; a person reviews it",
)
async def feedback(
    service: ServiceDep, model: ModelDep, body: FeedbackRequest, request: Request
) -> FeedbackResponse:
    service.feedback_limit.check(client_of(request))  # before any lookup: floods cost nothing
    labels = model.meta.labels  # the task is the served model's
    if body.label not in labels:
        raise ApiError(
            422,
            "unknown_label",
            f"label {body.label!r} is not one of the served model's labels: {', '.join(labels)}",
        )
    seen = await run_in_threadpool(service.feedback.find, body.prediction_id)
    if seen is None:
        raise ApiError(
            404,
            "unknown_prediction",
            f"no prediction {body.prediction_id!r} in the prediction log "
            f"(PLANTS_PREDICTION_LOG={service.config.prediction_log})",
        )
    try:
        feedback_id, replaced = await run_in_threadpool(
            service.feedback.file, seen, body.label, body.comment, labels
        )
    except FeedbackDecided as exc:
        raise ApiError(409, "feedback_decided", str(exc)) from None
    except UserFacingError as exc:  # a label the served model does not know
        raise ApiError(422, "invalid_request", str(exc)) from None
    kept = bool(seen.get("kept_image"))
    env = service.config.kedro_env  # a task's API (serve --env): the review is the task's
    return FeedbackResponse(
        feedback_id=feedback_id,
        status="pending",
        image_kept=kept,
        replaced=replaced,
        detail=f"filed for review (`plants-mlops data review{f' --env {env}' if env else ''}`)"
        + ("" if kept else "; the image was not kept, so it cannot join the training data"),
    )
