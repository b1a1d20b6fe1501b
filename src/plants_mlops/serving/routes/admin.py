"""Admin routes (``X-API-Key``): reload the model now, start or inspect a retraining run."""

from __future__ import annotations

import shlex
from typing import Annotated

import anyio
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


# A reload answers within this, whatever the registry does: a hung tracking server gets a
# 503 saying so while the load goes on in its thread (bounded by bound_http_calls).
RELOAD_ANSWER_SECONDS = 9.0


@router.post(
    "/reload",
    response_model=ReloadResponse,
    responses={503: {"model": ErrorResponse, "description": "the model registry does not answer"}},
    summary="Resolve the champion alias now and swap in a new version",
)
async def reload(service: ServiceDep) -> ReloadResponse:
    try:
        with anyio.fail_after(RELOAD_ANSWER_SECONDS):
            # abandoned (not stopped) at the deadline: the thread finishes on its own
            outcome = await anyio.to_thread.run_sync(
                service.manager.reload, True, abandon_on_cancel=True
            )
    except TimeoutError:
        current = service.manager.current
        raise ApiError(
            503,
            "registry_unavailable",
            f"no answer from the model registry at {service.config.tracking_uri} within "
            f"{RELOAD_ANSWER_SECONDS:g} s; still serving version "
            f"{current.version if current else 'none'}; retry later",
        ) from None
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
