"""``POST /predict`` and ``POST /predict/batch``: multipart image uploads."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, File, Request, UploadFile

from plants_mlops.serving.deps import ModelDep, RequestIdDep, ServiceDep
from plants_mlops.serving.errors import ApiError
from plants_mlops.serving.schemas import (
    IMAGE_CONTENT_TYPES,
    BatchResponse,
    ErrorResponse,
    PredictionResponse,
)

router = APIRouter(tags=["predict"])

ERRORS = {
    400: {"model": ErrorResponse, "description": "empty or damaged image"},
    413: {"model": ErrorResponse, "description": "file or image dimensions over the limit"},
    415: {"model": ErrorResponse, "description": "not an image / unsupported content type"},
    422: {"model": ErrorResponse, "description": "not a multipart upload with a file"},
    503: {
        "model": ErrorResponse,
        "description": "no model loaded yet, or too busy (decoding, or receiving uploads)",
    },
}

# The upload part's media types in the OpenAPI document of a route that takes one image
# as ``file`` (FastAPI deep-merges this into the request body it generates).
UPLOAD_OPENAPI = {
    "requestBody": {
        "content": {
            "multipart/form-data": {"encoding": {"file": {"contentType": IMAGE_CONTENT_TYPES}}}
        }
    }
}


# The one image a route takes, as the multipart field ``file``.
ImageUpload = Annotated[UploadFile, File(description=f"the image ({IMAGE_CONTENT_TYPES})")]


async def _read(upload: UploadFile, limit: int) -> bytes:
    """An uploaded file's bytes, once its content type and size pass."""
    ctype = (upload.content_type or "").split(";")[0].strip().lower()
    if ctype and not (ctype.startswith("image/") or ctype == "application/octet-stream"):
        raise ApiError(
            415,
            "unsupported_media_type",
            f"file content type {ctype!r} is not an image type (image/jpeg, image/png...)",
        )
    data = await upload.read(limit + 1)
    if len(data) > limit:
        raise ApiError(413, "too_large", f"file exceeds the upload limit of {limit} bytes")
    return data


async def read_one(request: Request, upload: UploadFile, limit: int) -> bytes:
    """The image of a route that takes one (``file``); several ``file`` parts are refused
    (FastAPI would hand the route the last one)."""
    if len((await request.form()).getlist("file")) > 1:  # the parsed form, not a new parse
        raise ApiError(
            422, "invalid_request", "one image per request: send several to /predict/batch"
        )
    return await _read(upload, limit)


@router.post(
    "/predict",
    response_model=PredictionResponse,
    responses=ERRORS,
    summary="Classify one image",
    openapi_extra=UPLOAD_OPENAPI,
)
async def predict(
    request: Request,
    file: ImageUpload,
    model: ModelDep,
    service: ServiceDep,
    rid: RequestIdDep,
) -> PredictionResponse:
    data = await read_one(request, file, service.config.max_upload_bytes)
    return await service.run(service.predict_one, model, data, rid)


@router.post(
    "/predict/batch",
    response_model=BatchResponse,
    responses=ERRORS,
    summary="Classify several images; per-file errors do not fail the batch",
)
async def predict_batch(
    # at least one file (an empty batch is a 422, as the document's minItems says); a
    # part that is not an image gets its own error in the batch's 200
    files: Annotated[
        list[UploadFile],
        File(description=f"the images ({IMAGE_CONTENT_TYPES}), at least one", min_length=1),
    ],
    model: ModelDep,
    service: ServiceDep,
    rid: RequestIdDep,
) -> BatchResponse:
    limit = service.config.max_batch_files
    if len(files) > limit:
        raise ApiError(413, "too_many_files", f"{len(files)} files; the batch limit is {limit}")
    payload: list[tuple[str | None, bytes | ApiError]] = []
    for f in files:  # a part of the wrong type or size is its own item's error
        try:
            payload.append((f.filename, await _read(f, service.config.max_upload_bytes)))
        except ApiError as exc:
            payload.append((f.filename, exc))
    items = await service.run(service.predict_many, model, payload, rid)
    ok = sum(1 for i in items if i.prediction is not None)
    return BatchResponse(
        request_id=rid,
        model_version=model.version,
        count=len(items),
        succeeded=ok,
        failed=len(items) - ok,
        items=items,
    )
