"""Admin routes (``X-API-Key``): reload the model now, start or inspect a retraining run."""

from __future__ import annotations

import shlex
from typing import Annotated

from fastapi import APIRouter, Body, Depends
from starlette.concurrency import run_in_threadpool

from plants_mlops.serving.deps import ServiceDep, require_api_key
from plants_mlops.serving.errors import ApiError
from plants_mlops.serving.schemas import (
    ErrorResponse,
    ReloadResponse,
    RetrainRequest,
    RetrainResponse,
    RetrainStatus,
)

AUTH_ERRORS = {401: {"model": ErrorResponse}, 403: {"model": ErrorResponse}}
router = APIRouter(
    prefix="/admin", tags=["admin"], dependencies=[Depends(require_api_key)], responses=AUTH_ERRORS
)


@router.post(
    "/reload",
    response_model=ReloadResponse,
    summary="Resolve the champion alias now and swap in a new version",
)
async def reload(service: ServiceDep) -> ReloadResponse:
    outcome = await run_in_threadpool(service.manager.reload, True)
    service.manager.broadcast_reload()  # the other workers, when there are several
    return ReloadResponse(
        changed=outcome.changed,
        model_version=outcome.version,
        error=outcome.error,
        detail=outcome.detail,
    )


@router.post(
    "/retrain",
    response_model=RetrainResponse,
    status_code=202,
    responses={409: {"model": ErrorResponse}, 500: {"model": ErrorResponse}},
    summary="Start the retraining pipeline in the background",
)
async def retrain(
    service: ServiceDep, body: Annotated[RetrainRequest | None, Body()] = None
) -> RetrainResponse:
    reason = (body or RetrainRequest()).reason
    try:
        started, run, detail = await run_in_threadpool(service.retrain.trigger, reason)
    except RuntimeError as exc:
        raise ApiError(500, "retrain_failed_to_start", str(exc)) from None
    if not started:
        raise ApiError(409, "retrain_in_progress", f"{detail} (run {run['run_id']})")
    return RetrainResponse(started=True, detail=detail, **run)


@router.get("/retrain", response_model=RetrainStatus, summary="The last retraining run")
async def retrain_status(service: ServiceDep) -> RetrainStatus:
    run = await run_in_threadpool(service.retrain.status)
    if run is None:
        return RetrainStatus(running=False, command=service.retrain.command)
    return RetrainStatus(
        run_id=run["run_id"],
        running=run["running"],
        returncode=run["returncode"],
        command=shlex.split(run["command"]),
        started_at=run["started_at"].isoformat(),
        finished_at=run["finished_at"].isoformat() if run["finished_at"] else None,
        reason=run["reason"],
        log_path=run["log_path"],
    )
