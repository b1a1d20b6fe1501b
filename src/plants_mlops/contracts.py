"""Names shared between stages. Changing one of these is a breaking change: see docs/contracts.md."""

from __future__ import annotations

LABELS = ("dandelion", "grass")  # class index = position in this tuple
SPLITS = ("train", "val", "test")

# Row status in the plants_data table.
STATUS_PENDING = "pending"
STATUS_OK = "ok"
STATUS_FAILED = "failed"

# MLflow Model Registry
REGISTERED_MODEL_NAME = "plants-classifier"
ALIAS_CHAMPION = "champion"
ALIAS_CHALLENGER = "challenger"

# ONNX serving model: one input, two outputs.
ONNX_INPUT = "image"  # float32 [N, 3, H, W], normalised as ServingMeta says
ONNX_OUTPUT_LOGITS = "logits"  # float32 [N, len(LABELS)]
ONNX_OUTPUT_EMBEDDING = "embedding"  # float32 [N, D], penultimate layer
