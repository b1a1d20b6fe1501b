"""``POST /feedback`` (``X-API-Key``): the true label of an earlier prediction, filed as a
candidate for review (it never reaches the training table by itself)."""

from __future__ import annotations

from fastapi import APIRouter, Depends
from starlette.concurrency import run_in_threadpool

from plants_mlops.contracts import LABELS
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
    responses={404: {"model": ErrorResponse}},
    summary="Say what an earlier prediction should have been; a person reviews it",
)
async def feedback(service: ServiceDep, body: FeedbackRequest) -> FeedbackResponse:
    seen = service.recent.lookup(body.request_id)
    if seen is None:
        raise ApiError(
            404,
            "unknown_request",
            f"no recent prediction with request id {body.request_id!r} (the API remembers the "
            f"last {service.recent.size} and, with PLANTS_KEEP_UNCERTAIN_IMAGES, every uncertain one)",
        )
    # the true label is one of the served model's labels (the task's, when none is loaded)
    model = service.manager.current
    labels = list(model.meta.labels) if model is not None else list(LABELS)
    if body.label not in labels:
        raise ApiError(422, "invalid_request", f"label: not one of {', '.join(labels)}")
    feedback_id = await run_in_threadpool(
        service.feedback.file, body.request_id, body.label, body.comment, seen, labels
    )
    kept = bool(seen.get("image_path"))
    return FeedbackResponse(
        feedback_id=feedback_id,
        status="pending",
        image_kept=kept,
        detail="filed for review (`plants-mlops data review`)"
        + ("" if kept else "; the image was not kept, so it cannot join the training data"),
    )
