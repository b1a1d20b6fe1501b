"""``POST /explain``: one upload's prediction and the regions of the photo that drove it.

The served graph's ``class_maps`` output (model/export.py) gives the logits of every cell
of the backbone's last feature map; ``model/explain.py`` turns those of the explained
class into an evidence grid (an exact split of its logit margin over the cells) and a
PNG overlay on the picture the model saw. One inference, no second model. Explanations
are not logged as predictions (monitoring sees only ``/predict`` traffic).
"""

from __future__ import annotations

import time
from typing import Annotated

from fastapi import APIRouter, Query, Request
from pydantic import BaseModel, Field

from plants_mlops import imaging
from plants_mlops.model.artifact import ModelLoadError
from plants_mlops.model.explain import Explanation
from plants_mlops.serving.deps import ModelDep, RequestIdDep, ServiceDep
from plants_mlops.serving.errors import ApiError
from plants_mlops.serving.routes.predict import ERRORS, UPLOAD_OPENAPI, ImageUpload, read_one
from plants_mlops.serving.schemas import ErrorResponse

router = APIRouter(tags=["explain"])


class Cell(BaseModel):
    row: int = Field(ge=0)
    col: int = Field(ge=0)


class ExplainResponse(BaseModel):
    request_id: str
    label: str = Field(description="the predicted label")
    confidence: float = Field(ge=0, le=1)
    probabilities: dict[str, float]
    out_of_distribution: bool | None = Field(
        None, description="the photo is unlike the training images (None: no detector)"
    )
    ood_score: float | None = Field(None, description="distance from the training images")
    model_name: str
    model_version: str
    explained_label: str = Field(description="the class the heat map is for")
    grid: list[list[float]] = Field(
        description=(
            "evidence for explained_label per cell of the model's last feature map (rows "
            "top to bottom): the cell's logit for the label minus its mean logit over all "
            "labels; the grid's mean is exactly that margin for the whole image, positive "
            "cells speak for the label"
        )
    )
    hottest: Cell = Field(description="the cell with the most evidence")
    image_size: int = Field(description="side in px of the model's view the overlay shows")
    overlay_png: str = Field(
        description="base64 PNG: the model's view with the positive evidence drawn over it"
    )
    latency_ms: float = Field(description="decode + inference + overlay, milliseconds")


def explain_one(service, model, data: bytes, label: str | None, request_id: str) -> ExplainResponse:
    started = time.perf_counter()
    labels = list(model.meta.labels)
    if label is not None and label not in labels:
        # 404: the model has no such label (its class maps are the resources explained)
        raise ApiError(404, "unknown_label", f"the model has no label {label!r}: {labels}")
    prep = service._prepare(model, data)
    try:
        out, maps = model.run_with_maps(prep.x[None])
    except ModelLoadError as exc:
        raise ApiError(409, "no_class_maps", str(exc)) from None
    probs = out.probabilities[0]
    predicted = int(probs.argmax())
    index = predicted if label is None else labels.index(label)
    cam = Explanation.of(maps[0], index)
    meta = model.meta
    view = imaging.model_view(
        prep.fmt_image, resize_size=meta.resize_size, image_size=meta.image_size
    )
    row, col = cam.hottest
    return ExplainResponse(
        request_id=request_id,
        label=labels[predicted],
        confidence=round(float(probs[predicted]), 6),
        probabilities={lab: round(float(p), 6) for lab, p in zip(labels, probs, strict=True)},
        out_of_distribution=None
        if out.out_of_distribution is None
        else bool(out.out_of_distribution[0]),
        ood_score=None if out.ood_scores is None else round(float(out.ood_scores[0]), 6),
        model_name=model.name,
        model_version=model.version,
        explained_label=labels[index],
        grid=cam.rounded(),
        hottest=Cell(row=row, col=col),
        image_size=meta.image_size,
        overlay_png=cam.overlay_base64(view),
        latency_ms=round((time.perf_counter() - started) * 1000.0, 3),
    )


@router.post(
    "/explain",
    response_model=ExplainResponse,
    responses={
        **ERRORS,
        404: {"model": ErrorResponse, "description": "a label the served model does not have"},
        409: {
            "model": ErrorResponse,
            "description": "the served model was exported without class maps",
        },
    },
    summary="Classify one image and show the regions that drove the answer",
    openapi_extra=UPLOAD_OPENAPI,
)
async def explain(
    request: Request,
    file: ImageUpload,
    model: ModelDep,
    service: ServiceDep,
    rid: RequestIdDep,
    label: Annotated[
        str | None, Query(description="explain this label instead of the predicted one")
    ] = None,
) -> ExplainResponse:
    data = await read_one(request, file, service.config.max_upload_bytes)
    return await service.run(explain_one, service, model, data, label, rid)
