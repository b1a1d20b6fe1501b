"""The prediction work behind the routes: bytes -> decoded image -> model -> response + log."""

from __future__ import annotations

import functools
import time
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime

import anyio
import numpy as np

from plants_mlops import imaging
from plants_mlops.retrain import RetrainRunner
from plants_mlops.serving.config import ServingConfig
from plants_mlops.serving.errors import ApiError
from plants_mlops.serving.feedback import FeedbackStore, keep_image
from plants_mlops.serving.metrics import ServiceMetrics
from plants_mlops.serving.model import ModelManager, ServingModel
from plants_mlops.serving.predlog import PredictionLogWriter, PredictionRecord
from plants_mlops.serving.ratelimit import RateLimiter
from plants_mlops.serving.schemas import BatchItem, ErrorResponse, PredictionResponse


@dataclass
class Prepared:
    """What a prediction keeps of an upload: the model input, the small image the
    prediction log describes, and the original's format and size; never its full-size
    pixels (released, inside the decode budget, as soon as the model input exists)."""

    x: np.ndarray
    fmt_image: object
    image_format: str
    original_size: tuple[int, int]
    started: float
    data: bytes


class PredictionService:
    def __init__(
        self,
        config: ServingConfig,
        manager: ModelManager,
        metrics: ServiceMetrics,
        writer: PredictionLogWriter | None,
        retrain: RetrainRunner,
    ) -> None:
        self.config = config
        self.manager = manager
        self.metrics = metrics
        self.writer = writer
        self.retrain = retrain
        self.decode_budget = imaging.DecodeBudget(config.decode_budget_pixels)
        self.feedback = FeedbackStore(config, writer.sink if writer is not None else None)
        # Decode + model calls at once in this worker (the rest wait for a thread).
        self.limiter = anyio.CapacityLimiter(config.predict_threads)
        self.feedback_limit = RateLimiter(config.feedback_per_minute)

    async def run(self, fn, *args):
        """``fn(*args)`` on a worker thread (decoding and ONNX Runtime release the GIL)."""
        return await anyio.to_thread.run_sync(functools.partial(fn, *args), limiter=self.limiter)

    def _prepare(self, model: ServingModel, data: bytes) -> Prepared:
        started = time.perf_counter()
        try:
            with imaging.decoded_within(
                data,
                self.decode_budget,
                max_pixels=self.config.max_pixels,
                fit=model.meta.resize_size,  # what preprocess's square resize makes
            ) as decoded:
                x, fmt = model.preprocess(decoded.image)
                kind, size = decoded.format, decoded.original_size
        except imaging.ImageDecodeError as exc:
            self.metrics.rejected.labels(reason=exc.reason).inc()
            raise ApiError.from_decode(exc) from None
        return Prepared(x, fmt, kind, size, started, data)

    def _respond(
        self,
        model: ServingModel,
        prep: Prepared,
        probs: np.ndarray,
        emb: np.ndarray,
        request_id: str,
        endpoint: str,
        ood: tuple[float | None, bool] = (None, False),
    ) -> PredictionResponse:
        """``ood``: (the row's ood_score, flagged) from :func:`ood_of` (no detector: (None,
        False))."""
        labels = model.meta.labels
        idx = int(np.argmax(probs))
        probabilities = {label: round(float(p), 6) for label, p in zip(labels, probs, strict=True)}
        latency = (time.perf_counter() - prep.started) * 1000.0
        uncertain = float(probs[idx]) < self.config.uncertain_below
        prediction_id = uuid.uuid4().hex  # the server's own: what feedback refers to
        kept = None
        if uncertain and self.config.keep_uncertain_images:
            kept = keep_image(self.config.uncertain_dir, prep.data, prep.image_format)
        self.metrics.predictions.labels(label=labels[idx], model_version=model.version).inc()
        ood_score, flagged = ood
        if flagged:
            self.metrics.out_of_distribution.labels(model_version=model.version).inc()
        self.metrics.inference.observe(latency / 1000.0)
        if self.writer is not None:
            self.writer.submit(
                PredictionRecord(
                    prediction_id=prediction_id,
                    request_id=request_id,
                    created_at=datetime.now(UTC),
                    model_version=model.version,
                    label=labels[idx],
                    probabilities=probabilities,
                    latency_ms=latency,
                    image_format=prep.image_format,
                    orig_width=prep.original_size[0],
                    orig_height=prep.original_size[1],
                    image=prep.fmt_image,
                    embedding=emb,
                    endpoint=endpoint,
                    uncertain=uncertain,
                    kept_image=kept,
                    ood_score=ood_score,
                    out_of_distribution=None if ood_score is None else flagged,
                )
            )
        return PredictionResponse(
            prediction_id=prediction_id,
            request_id=request_id,
            label=labels[idx],
            confidence=round(float(probs[idx]), 6),
            probabilities=probabilities,
            model_name=model.name,
            model_version=model.version,
            latency_ms=round(latency, 3),
            uncertain=uncertain,
            out_of_distribution=flagged,
            ood_score=None if ood_score is None else round(ood_score, 6),
        )

    def predict_one(self, model: ServingModel, data: bytes, request_id: str) -> PredictionResponse:
        prep = self._prepare(model, data)
        out = model.run(prep.x[None])
        return self._respond(
            model,
            prep,
            out.probabilities[0],
            out.embeddings[0],
            request_id,
            "predict",
            ood_of(out, 0),
        )

    def predict_many(
        self,
        model: ServingModel,
        files: list[tuple[str | None, bytes | ApiError]],
        request_id: str,
    ) -> list[BatchItem]:
        """``files``: (name, bytes, or the error its part already got)."""
        items: list[BatchItem] = []
        ready: list[tuple[int, Prepared]] = []
        for i, (name, data) in enumerate(files):
            try:
                if isinstance(data, ApiError):
                    raise data
                ready.append((i, self._prepare(model, data)))
                items.append(BatchItem(index=i, filename=name))
            except ApiError as exc:
                error = ErrorResponse(error=exc.code, detail=exc.detail, request_id=request_id)
                items.append(BatchItem(index=i, filename=name, error=error))
        if ready:
            out = model.run(np.stack([p.x for _, p in ready]))
            for row, (i, prep) in enumerate(ready):
                items[i].prediction = self._respond(
                    model,
                    prep,
                    out.probabilities[row],
                    out.embeddings[row],
                    request_id,
                    "batch",
                    ood_of(out, row),
                )
        return items


def ood_of(out, row: int) -> tuple[float | None, bool]:
    """(ood_score, flagged) of one row of a model output (``artifact.Prediction``); (None,
    False) for a model without an OOD detector."""
    if out.ood_scores is None:
        return None, False
    return float(out.ood_scores[row]), bool(out.out_of_distribution[row])
