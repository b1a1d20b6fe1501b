"""Pydantic models of every request and response body (they make the OpenAPI spec)."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, Field

# The media types the upload parts are documented with (OpenAPI `encoding.contentType`):
# what a client should send. The server decodes by the bytes, not by this header, and
# refuses a part whose declared type is neither an image nor octet-stream.
IMAGE_CONTENT_TYPES = "image/jpeg, image/png, image/webp, image/gif, image/bmp"


class ErrorResponse(BaseModel):
    error: str = Field(description="machine-readable reason, e.g. not_an_image, too_large")
    detail: str = Field(description="what went wrong, for a human")
    request_id: str | None = None


class PredictionResponse(BaseModel):
    prediction_id: str = Field(description="the server's id of this prediction (for feedback)")
    request_id: str = Field(description="the request's X-Request-ID (the client's or a new one)")
    label: str
    confidence: float = Field(ge=0, le=1)
    probabilities: dict[str, float]
    model_name: str
    model_version: str
    latency_ms: float = Field(description="decode + preprocess + inference, milliseconds")
    uncertain: bool = Field(
        False, description="confidence under PLANTS_UNCERTAIN_BELOW: feedback welcome"
    )
    out_of_distribution: bool = Field(
        False,
        description="the image does not look like the photos the model was trained on "
        "(ood_score above the model's threshold, chosen to flag at most 5 % of its "
        "validation photos): do not trust the label; always false for a model without "
        "a detector",
    )
    ood_score: float | None = Field(
        None,
        description="how far the image's embedding lies from the training images (higher: "
        "further; model/ood.py); null for a model without a detector",
    )


class BatchItem(BaseModel):
    index: int
    filename: str | None = None
    prediction: PredictionResponse | None = None
    error: ErrorResponse | None = None


class BatchResponse(BaseModel):
    request_id: str
    model_version: str
    count: int
    succeeded: int
    failed: int
    items: list[BatchItem]


class HealthResponse(BaseModel):
    status: str = "ok"


class ReadyResponse(BaseModel):
    ready: bool
    model_version: str | None = None
    detail: str = ""


class ReloadError(BaseModel):
    version: str | None = None
    error: str
    at: str
    kept_version: str | None = None


class ModelResponse(BaseModel):
    name: str
    version: str
    source: str
    model_uri: str
    run_id: str | None = None
    architecture: str
    precision: str = "fp32"  # "int8": a static QDQ int8 graph (docs/model.md)
    labels: list[str]
    image_size: int
    resize_size: int
    embedding_dim: int
    dataset_fingerprint: str | None = None
    test_metrics: dict[str, float] = {}
    lineage: dict[str, Any] = {}
    loaded_at: str
    model_card: str | None = Field(
        None, description="the version's model card (HTML) in the MLflow artifact store"
    )
    gate_verdict: str | None = Field(
        None,
        description="the promotion gate's recorded verdict on this version when it was "
        "loaded: pass, fail, or null (never gated). A champion served is pass or a recorded "
        "--force; PLANTS_MODEL_URI naming another alias or a version serves any verdict",
    )
    last_reload_error: ReloadError | None = None
    poll_seconds: float


class ReloadResponse(BaseModel):
    changed: bool
    model_version: str | None = None
    error: str | None = None
    detail: str = ""


class RetrainRequest(BaseModel):
    reason: str = Field(default="manual", max_length=200)


class RetrainResponse(BaseModel):
    started: bool
    run_id: str | None = None
    command: list[str]
    pid: int | None = None
    log_path: str | None = None
    detail: str = ""


class RetrainStatus(BaseModel):
    run_id: str | None = None
    running: bool
    returncode: int | None = None
    command: list[str] = []
    started_at: str | None = None
    finished_at: str | None = None
    reason: str | None = None
    log_path: str | None = None


class FeedbackRequest(BaseModel):
    prediction_id: str = Field(
        min_length=1, max_length=32, description="the prediction_id of a prediction's answer"
    )
    label: str = Field(
        min_length=1,
        max_length=64,
        description="the true label: one of the served model's labels (GET /model lists them)",
    )
    comment: str | None = Field(None, max_length=2000)


class FeedbackResponse(BaseModel):
    feedback_id: int
    status: str = Field(description="pending: it enters the training data only after review")
    image_kept: bool
    replaced: bool = Field(description="an earlier pending feedback on it was replaced")
    detail: str
