"""``POST /predict`` and ``POST /predict/batch``: multipart image uploads."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, File, Request, Response, UploadFile
from starlette.concurrency import run_in_threadpool

from plants_mlops.serving import upload
from plants_mlops.serving.deps import ModelDep, RequestIdDep, ServiceDep, serving_model
from plants_mlops.serving.errors import ApiError
from plants_mlops.serving.schemas import BatchResponse, ErrorResponse, PredictionResponse
from plants_mlops.serving.service import PredictionService

router = APIRouter(tags=["predict"])

ERRORS = {
    400: {"model": ErrorResponse, "description": "empty or damaged image"},
    413: {"model": ErrorResponse, "description": "file or image dimensions over the limit"},
    415: {"model": ErrorResponse, "description": "not an image / unsupported content type"},
    422: {"model": ErrorResponse, "description": "not a multipart upload with a file"},
    503: {"model": ErrorResponse, "description": "no model loaded yet"},
}


def _check_content_type(content_type: str | None) -> None:
    ctype = (content_type or "").split(";")[0].strip().lower()
    if ctype and not (ctype.startswith("image/") or ctype == "application/octet-stream"):
        raise ApiError(
            415,
            "unsupported_media_type",
            f"file content type {ctype!r} is not an image type (image/jpeg, image/png...)",
        )


def _checked(content_type: str | None, data: bytes, limit: int) -> bytes:
    """An uploaded file's bytes, once its content type and size pass."""
    _check_content_type(content_type)
    if len(data) > limit:
        raise ApiError(413, "too_large", f"file exceeds the upload limit of {limit} bytes")
    return data


async def _read(upload: UploadFile, limit: int) -> bytes:
    return _checked(upload.content_type, await upload.read(limit + 1), limit)


@router.post(
    "/predict",
    response_model=PredictionResponse,
    responses=ERRORS,
    summary="Classify one image",
    openapi_extra=upload.OPENAPI_BODY,
)
async def predict(request: Request) -> Response:
    # No File()/Depends parameters: their parsing and solving cost the event loop about
    # 0.2 ms per request, the largest single share of what HTTP adds (serving/upload.py).
    # The body is bounded by the middleware's size limit and timeout while it is read.
    batcher = getattr(request.app.state, "batcher", None)
    if batcher is not None:  # a lane may wait for uploads still on their way
        batcher.arriving += 1
    try:
        body = await request.body()
    finally:
        if batcher is not None:
            batcher.arriving -= 1
    service: PredictionService = request.app.state.service
    model = serving_model(service)
    part = upload.file_part(request.headers.get("content-type", ""), body)
    data = _checked(part.content_type, part.data, service.config.max_upload_bytes)
    rid = request.state.request_id
    if batcher is not None:  # decoded, batched and answered on a lane (serving/batching.py)
        body = await batcher.predict(model, data, rid)
    else:
        body = (await run_in_threadpool(service.predict_one, model, data, rid)).model_dump_json()
    # Serialised once by pydantic's own JSON encoder: returning the model would have FastAPI
    # validate it again against response_model and encode it through jsonable_encoder.
    return Response(body, media_type="application/json")


@router.post(
    "/predict/batch",
    response_model=BatchResponse,
    responses=ERRORS,
    summary="Classify several images; per-file errors do not fail the batch",
)
async def predict_batch(
    files: Annotated[list[UploadFile], File(description="the images")],
    model: ModelDep,
    service: ServiceDep,
    rid: RequestIdDep,
) -> BatchResponse:
    limit = service.config.max_batch_files
    if len(files) > limit:
        raise ApiError(413, "too_many_files", f"{len(files)} files; the batch limit is {limit}")
    payload: list[tuple[str | None, bytes]] = []
    for file in files:
        payload.append((file.filename, await _read(file, service.config.max_upload_bytes)))
    items = await run_in_threadpool(service.predict_many, model, payload, rid)
    ok = sum(1 for i in items if i.prediction is not None)
    return BatchResponse(
        request_id=rid,
        model_version=model.version,
        count=len(items),
        succeeded=ok,
        failed=len(items) - ok,
        items=items,
    )
