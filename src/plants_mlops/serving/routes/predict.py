"""``POST /predict`` and ``POST /predict/batch``: multipart image uploads."""

from __future__ import annotations

import contextlib
from typing import Annotated

from fastapi import APIRouter, File, Request, Response, UploadFile
from starlette.concurrency import run_in_threadpool
from starlette.requests import ClientDisconnect

from plants_mlops.serving import errors, upload
from plants_mlops.serving.deps import ModelDep, RequestIdDep, ServiceDep, serving_model
from plants_mlops.serving.errors import ApiError
from plants_mlops.serving.middleware import send_json
from plants_mlops.serving.schemas import (
    IMAGE_CONTENT_TYPES,
    BatchResponse,
    ErrorResponse,
    PredictionResponse,
)
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


async def _answer(app, content_type: str, body: bytes, request_id: str) -> str:
    """The JSON answer to a ``/predict`` upload; ApiError for one that cannot be served."""
    service: PredictionService = app.state.service
    model = serving_model(service)
    part = upload.file_part(content_type, body)
    data = _checked(part.content_type, part.data, service.config.max_upload_bytes)
    batcher = getattr(app.state, "batcher", None)
    if batcher is not None:  # decoded, batched and answered on a lane (serving/batching.py)
        return await batcher.predict(model, data, request_id)
    # Serialised once by pydantic's own JSON encoder: returning the model would have FastAPI
    # validate it again against response_model and encode it through jsonable_encoder.
    return (await run_in_threadpool(service.predict_one, model, data, request_id)).model_dump_json()


@contextlib.contextmanager
def _arriving(app):
    """Counts an upload still being read: a lane may wait for it (PLANTS_BATCH_WAIT_MS)."""
    batcher = getattr(app.state, "batcher", None)
    if batcher is None:
        yield
        return
    batcher.arriving += 1
    try:
        yield
    finally:
        batcher.arriving -= 1


async def predict_asgi(scope, receive, send) -> None:
    """``POST /predict`` as a raw ASGI app: what the server runs (``PlantsAPI`` shortcuts
    it inside ``RequestContextMiddleware``, past Starlette's middleware stack and FastAPI's
    routing, which rebuilds an included route's handler on every request). The same
    answers as :func:`predict`, the FastAPI route that documents it."""
    app = scope["app"]
    rid = scope["state"]["request_id"]
    with _arriving(app):
        chunks = []
        while True:  # bounded by the middleware's size limit and timeout
            message = await receive()
            if message["type"] == "http.disconnect":
                raise ClientDisconnect()
            chunks.append(message.get("body", b""))
            if not message.get("more_body", False):
                break
    content_type = next((v for k, v in scope["headers"] if k == b"content-type"), b"")
    try:
        payload = (
            await _answer(app, content_type.decode("latin-1"), b"".join(chunks), rid)
        ).encode()
        status = 200
    except ApiError as exc:
        payload, status = errors.error_json(exc.code, exc.detail, rid), exc.status
    await send_json(send, status, payload)


@router.post(
    "/predict",
    response_model=PredictionResponse,
    responses=ERRORS,
    summary="Classify one image",
    openapi_extra=upload.OPENAPI_BODY,
)
async def predict(request: Request) -> Response:
    # Served by predict_asgi (the app's shortcut) unless a root path is set: same answers.
    # No File()/Depends parameters: their parsing and solving cost the event loop about
    # 0.2 ms per request, the largest single share of what HTTP adds (serving/upload.py).
    # The body is bounded by the middleware's size limit and timeout while it is read.
    with _arriving(request.app):
        body = await request.body()
    rid = request.state.request_id
    answer = await _answer(request.app, request.headers.get("content-type", ""), body, rid)
    return Response(answer, media_type="application/json")


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
