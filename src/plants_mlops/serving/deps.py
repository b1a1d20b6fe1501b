"""FastAPI dependencies: the service, the model being served, the admin API key."""

from __future__ import annotations

import hmac
from typing import Annotated

from fastapi import Depends, Request, Security
from fastapi.security import APIKeyHeader

from plants_mlops.serving.errors import ApiError
from plants_mlops.serving.model import ServingModel
from plants_mlops.serving.service import PredictionService

api_key_header = APIKeyHeader(
    name="X-API-Key", auto_error=False, description="admin key (PLANTS_API_KEYS)"
)


async def get_service(request: Request) -> PredictionService:
    return request.app.state.service


ServiceDep = Annotated[PredictionService, Depends(get_service)]


async def get_model(service: ServiceDep) -> ServingModel:
    """The model this request keeps (read once: a hot swap does not change it mid-way)."""
    model = service.manager.current
    if model is None:
        raise ApiError(503, "model_not_ready", "no model loaded yet; retry when /ready is 200")
    return model


ModelDep = Annotated[ServingModel, Depends(get_model)]


async def request_id(request: Request) -> str:
    return request.state.request_id


RequestIdDep = Annotated[str, Depends(request_id)]


async def require_api_key(
    key: Annotated[str | None, Security(api_key_header)], service: ServiceDep
) -> str:
    keys = service.config.api_keys
    if not keys:
        raise ApiError(
            403, "admin_disabled", "no admin API keys are configured (set PLANTS_API_KEYS)"
        )
    if not key:
        raise ApiError(401, "unauthorized", "missing X-API-Key header")
    if not any(hmac.compare_digest(key.encode(), k.encode()) for k in keys):
        raise ApiError(401, "unauthorized", "invalid API key")
    return key
