"""Names shared between stages. Changing one of these is a breaking change: see docs/contracts.md."""

from __future__ import annotations

# The labels are the task's, not a constant here: conf/<env>/task.yml (params:task), then
# the dataset fingerprint, then the serving meta of each model (docs/own-data.md).
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
ONNX_OUTPUT_LOGITS = "logits"  # float32 [N, K], one per label of the serving meta
ONNX_OUTPUT_EMBEDDING = "embedding"  # float32 [N, D], penultimate layer
# Optional third output (exports since issue 31): the head applied to every cell of the last
# feature map, float32 [N, len(labels), h, w]; its mean over the cells is `logits` exactly
# when the head is linear on pooled features (model/explain.py).
ONNX_OUTPUT_CLASS_MAPS = "class_maps"

# Stages, in the order of the end-to-end run (`kedro run`, the ZenML pipeline, the demo).
# Monitoring is not part of it: it needs a prediction log, which exists once the API served.
STAGES = (
    "ingestion",
    "formatting",
    "curation",
    "validation",
    "training",
    "evaluation",
    "behaviour",
    "registry",
)
# ZenML stacks `plants-mlops stack register` knows (orchestration/stacks.py builds them).
STACK_NAMES = ("local", "minio", "gpu")
# Credentials by name, never by value: ZenML secrets and the Kubernetes secrets of the same
# names (docs/deploy.md) hold the object store's keys and the MLflow server's login.
S3_SECRET = "plants-s3"
MLFLOW_SECRET = "plants-mlflow"

# Embedded defaults, relative to the project root (where kedro and plants-mlops run).
DEFAULT_DB_URL = "sqlite:///data/plants.db"
DEFAULT_TRACKING_URI = "sqlite:///data/mlflow.db"
DEFAULT_MODEL_URI = f"models:/{REGISTERED_MODEL_NAME}@{ALIAS_CHAMPION}"

# The prediction log the API writes and monitoring reads (SQL table or parquet dataset):
# one row per prediction, image statistics as `stat_<name>` (imaging.STAT_COLUMNS),
# `embedding` as float32 bytes.
PREDICTION_LOG_TABLE = "prediction_log"
PREDICTION_LOG_STAT_PREFIX = "stat_"
