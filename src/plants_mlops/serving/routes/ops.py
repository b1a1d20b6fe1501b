"""``/health``, ``/ready``, ``/model`` and ``/metrics``."""

from __future__ import annotations

from fastapi import APIRouter
from fastapi.responses import JSONResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST

from plants_mlops.serving.deps import ModelDep, ServiceDep
from plants_mlops.serving.schemas import (
    ErrorResponse,
    HealthResponse,
    ModelResponse,
    ReadyResponse,
)

router = APIRouter(tags=["ops"])


@router.get("/health", response_model=HealthResponse, summary="The process is alive")
def health() -> HealthResponse:
    return HealthResponse()


@router.get(
    "/ready",
    response_model=ReadyResponse,
    responses={503: {"model": ReadyResponse, "description": "no model loaded yet"}},
    summary="A model is loaded and predictions can be served",
)
def ready(service: ServiceDep):
    model = service.manager.current
    if model is None:
        err = service.manager.last_error
        detail = f"loading {service.config.model_uri}" + (f": {err['error']}" if err else "")
        return JSONResponse(ReadyResponse(ready=False, detail=detail).model_dump(), 503)
    workers = service.config.workers
    if workers > 1 and (loaded := service.metrics.workers_loaded()) < workers:
        # Another worker would still answer 503: ready only when every one has a model.
        detail = f"{loaded} of {workers} workers have loaded a model"
        return JSONResponse(ReadyResponse(ready=False, detail=detail).model_dump(), 503)
    return ReadyResponse(ready=True, model_version=model.version)


@router.get(
    "/model",
    response_model=ModelResponse,
    responses={503: {"model": ErrorResponse}},
    summary="The served model: version, metrics, dataset fingerprint, MLflow lineage",
)
def model_info(model: ModelDep, service: ServiceDep) -> ModelResponse:
    return ModelResponse(
        **model.describe(),
        model_uri=service.config.model_uri,
        last_reload_error=service.manager.last_error,
        poll_seconds=service.config.poll_seconds,
    )


@router.get(
    "/metrics",
    response_class=Response,
    summary="Prometheus metrics",
    responses={200: {"content": {CONTENT_TYPE_LATEST: {}}}},
)
def metrics(service: ServiceDep) -> Response:
    if service.writer is not None:
        service.metrics.log_pending.set(service.writer.pending())
    body, media_type = service.metrics.exposition()
    return Response(body, media_type=media_type)
