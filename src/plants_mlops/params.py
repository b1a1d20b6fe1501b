"""Typed views of the stage parameters (``params:<stage>`` in ``conf/base/parameters_*.yml``).

One pydantic model per stage mirrors its YAML block key for key. The models carry no
defaults: the YAML is the only place a default lives, so a field the YAML lacks is an
error, and so is a key the model does not know (``extra="forbid"`` catches typos).
Nodes call ``parse`` at entry and read attributes instead of ``params.get(key, default)``.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any, Literal, TypeVar

from pydantic import BaseModel, ConfigDict, ValidationError, field_validator

from plants_mlops.errors import UserFacingError


class Params(BaseModel):
    """Base of every parameter model: unknown keys are errors; values are read-only."""

    model_config = ConfigDict(extra="forbid", frozen=True)


M = TypeVar("M", bound=BaseModel)

LABEL_PATTERN = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_-]{0,63}")


# -- the task (conf/base/task.yml) -----------------------------------------------------


class ClassBalance(Params):
    min_images_per_class: int
    min_class_ratio: float
    split_tolerance: float


class TaskNearDuplicates(Params):
    max_distance: int  # bits of the 64-bit perceptual hash: <= this is the same picture


class TaskParams(Params):
    """``params:task``: the task's name, its page title, its ordered labels (class index =
    position), the edits its images keep their labels under and the data-dependent
    thresholds the stage parameters refer to."""

    name: str
    title: str
    description: str
    labels: tuple[str, ...]
    # names in model.behaviour.EDITS: the behaviour step measures invariance under these
    # and the registry gate requires it (none: invariance not measured, not gated)
    label_preserving_edits: tuple[str, ...]
    # folder of <label>/* photos a person labels at a glance (project-relative): the
    # behaviour step's minimum functionality; None: not measured (the gate says so)
    clear_cases: str | None
    near_duplicates: TaskNearDuplicates
    class_balance: ClassBalance

    @field_validator("labels")
    @classmethod
    def _two_or_more_distinct(cls, labels: tuple[str, ...]) -> tuple[str, ...]:
        if len(labels) < 2:
            raise ValueError("a task needs at least two labels")
        if len(set(labels)) != len(labels):
            raise ValueError(f"labels repeat: {list(labels)}")
        bad = [lab for lab in labels if not LABEL_PATTERN.fullmatch(lab)]
        if bad:
            raise ValueError(
                f"labels {bad} are not names of 1-64 letters, digits, '_' or '-' "
                "(a label is a folder name, a metric key and a URL path part)"
            )
        return labels

    @field_validator("label_preserving_edits")
    @classmethod
    def _known_edits(cls, edits: tuple[str, ...]) -> tuple[str, ...]:
        from plants_mlops.model.behaviour import EDITS

        unknown = [e for e in edits if e not in EDITS]
        if unknown:
            raise ValueError(f"{unknown} are not edits; known: {', '.join(EDITS)}")
        if len(set(edits)) != len(edits):
            raise ValueError(f"edits repeat: {list(edits)}")
        return edits


def task_labels(task: Mapping[str, Any] | TaskParams) -> tuple[str, ...]:
    """The ordered labels of ``params:task``."""
    return parse(TaskParams, task, "task").labels


# -- ingestion ---------------------------------------------------------------------------


class Mirror(Params):
    prefix: str
    to: str | None  # an empty or null target disables the mirror


class FetchPolicy(Params):
    """How one URL is fetched (the part of ``params:ingestion`` ``fetch.py`` needs)."""

    connect_timeout_s: float
    read_timeout_s: float
    max_attempts: int
    backoff_s: float
    backoff_max_s: float
    max_bytes: int
    total_timeout_s: float
    allow_private_networks: bool


class IngestionParams(FetchPolicy):
    raw_root: str
    mirrors: list[Mirror]
    concurrency: int
    retry_failed: bool
    progress: bool


# -- formatting --------------------------------------------------------------------------


class SplitShares(Params):
    train: float
    val: float
    test: float
    salt: str


class FormattingParams(Params):
    image_size: int
    workers: int
    split: SplitShares


# -- curation ----------------------------------------------------------------------------


class CurationEmbeddings(Params):
    architecture: str
    weights: str | None
    image_size: int
    batch_size: int
    cache: str | None


class LabelIssues(Params):
    folds: int
    C: float
    seed: int


class Outliers(Params):
    k: int
    share: float


class ReviewQueue(Params):
    max_items: int
    thumbnail_px: int


class CurationParams(Params):
    """The near-duplicate distance is the task's: ``TaskParams.near_duplicates``."""

    embeddings: CurationEmbeddings
    label_issues: LabelIssues
    outliers: Outliers
    queue: ReviewQueue


# -- validation --------------------------------------------------------------------------


class ValidationParams(Params):
    """The data-dependent rules (class balance) are the task's: ``TaskParams``."""

    max_missing_rate: float
    min_source_side: int
    max_failing_rows_listed: int


# -- training ----------------------------------------------------------------------------


class Optimizer(Params):
    name: Literal["adamw", "sgd"]
    lr: float
    weight_decay: float
    momentum: float  # sgd only


class EarlyStopping(Params):
    patience: int
    min_delta: float


class Augment(Params):
    crop_scale: tuple[float, float]
    hflip: bool
    vflip: bool
    color_jitter: float
    # An automatic policy applied after the crop/flip steps: none | trivialaugment
    # (TrivialAugmentWide) | randaugment (RandAugment, 2 ops of magnitude 9).
    policy: Literal["none", "trivialaugment", "randaugment"]


class Calibration(Params):
    """Temperature scaling fitted on the validation split after the fit."""

    enabled: bool
    # Keep the fitted T only when it lowers the validation NLL by more than this.
    min_nll_gain: float


class ServingPrecision(Params):
    """The precision of the ONNX model the API serves (``model/quantize.py``)."""

    # fp32: the float export; int8: static QDQ int8 when its validation macro F1 stays
    # within max_f1_drop of fp32's; auto: int8 only when it is also min_speedup times
    # faster at batch 1 on the training machine.
    mode: Literal["fp32", "int8", "auto"]
    max_f1_drop: float
    min_speedup: float
    calibration_images: int
    latency_runs: int


class LinearProbe(Params):
    """``strategy: linear_probe``: a logistic regression on the frozen backbone's embedding
    (``model/probe.py``)."""

    C_grid: list[float]  # inverse L2 strengths tried; chosen by cross-validated log-loss
    folds: int  # stratified folds over the train split for that choice
    hflip: bool  # the mirror image of every training image as a second row
    # the three quarter turns (rotate90/180/270) of every training image as more rows, for a
    # task whose label_preserving_edits list all three (none otherwise)
    turns: bool
    # more views of every training image as extra rows (names in model.behaviour.EDITS,
    # e.g. rotate90, blur): what the behaviour step's invariance asks the label to survive
    extra_views: list[str]
    max_iter: int  # lbfgs iterations per fit
    # A stratified sample of at most this many training images (null: all): the embeddings
    # are held in memory (10 KiB per image with its mirror), so this bounds the fit's RSS.
    max_train_images: int | None


class TrainingMlflow(Params):
    enabled: bool
    tracking_uri: str | None
    experiment: str
    run_name: str | None


class OODConfig(Params):
    """Out-of-distribution detection fitted with the model (``model/ood.py``)."""

    enabled: bool
    method: Literal["knn", "mahalanobis"]
    k: int  # knn: the k-th nearest training image (its nearest view) gives the score
    rank: int  # mahalanobis: principal directions of the shared covariance kept
    max_reference: int  # knn: training embeddings stored in the graph, at most (whole images)
    max_flag_rate: float  # the threshold flags at most this share of the val split (knn: and
    # of the training images, each scored with itself left out of the reference)


class TrainingParams(Params):
    # finetune: every layer, epochs of SGD/AdamW (the fields below up to calibration);
    # linear_probe: the backbone frozen, ``probe`` fits the head (epochs, optimizer,
    # scheduler, label smoothing, early stopping and augment are unused).
    strategy: Literal["finetune", "linear_probe"]
    probe: LinearProbe
    architecture: str
    weights: str | None
    image_size: int
    dropout: float
    bn_momentum: float | None
    epochs: int
    batch_size: int
    optimizer: Optimizer
    scheduler: Literal["cosine"] | None
    label_smoothing: float
    early_stopping: EarlyStopping
    augment: Augment
    calibration: Calibration
    seed: int
    device: str
    num_threads: int | None
    num_workers: int | None
    max_images_per_split: int | None
    onnx_opset: int
    serving_precision: ServingPrecision
    ood: OODConfig
    quiet: bool
    mlflow: TrainingMlflow

    def loader_workers(self, cuda: bool) -> int:
        """DataLoader worker processes: ``num_workers``, or when null 4 on CUDA (keep the
        GPU fed) and 0 on CPU (workers only compete with the training threads)."""
        if self.num_workers is not None:
            return self.num_workers
        return 4 if cuda else 0


# -- evaluation --------------------------------------------------------------------------


class EvaluationSubset(Params):
    max_images_per_split: int | None
    seed: int


class Baselines(Params):
    histogram_bins: int
    C: float


class EvaluationMlflow(Params):
    tracking_uri: str | None
    log_to_run: bool


class EvaluationParams(Params):
    compare_champion: bool
    model_name: str
    subset: EvaluationSubset
    baselines: Baselines
    mlflow: EvaluationMlflow


# -- registry ----------------------------------------------------------------------------


class BehaviourGate(Params):
    """The behaviour step's figures a version must reach (``behaviour_report``)."""

    min_invariance: float  # share of test labels unchanged under each edit but the mirror
    min_mirror_invariance: float  # the same under the mirror (the probe trains on it)
    min_functionality: float  # share of the shipped clear cases labelled right
    min_ood_flagged: float  # share of the held-out out-of-distribution photos flagged
    max_false_flags: float  # share of the test split flagged out of distribution


class Gate(Params):
    min_f1: float
    require_beat_baseline: bool
    baseline_margin: float
    champion_tolerance: float
    max_model_mb: float  # PROBLEM.md: the serving ONNX file, 1 MB = 10^6 bytes
    latency_budget_ms: float  # batch-1 ONNX Runtime p50, measured at registration
    latency_runs: int
    latency_threads: int  # ONNX Runtime intra-op threads (the API's PLANTS_ORT_THREADS)
    behaviour: BehaviourGate


class RegistryMlflow(Params):
    tracking_uri: str | None


class RegistryParams(Params):
    model_name: str
    gate: Gate
    mlflow: RegistryMlflow


# -- behaviour ---------------------------------------------------------------------------


class BehaviourParams(Params):
    """The edits measured and the clear cases are the task's: ``TaskParams``."""

    generated_size: int  # side of the generated non-photos, px
    subset: EvaluationSubset
    mlflow: EvaluationMlflow


# -- monitoring --------------------------------------------------------------------------


class Window(Params):
    hours: float | None
    last_n: int | None
    model_version: int | str | None


class Reference(Params):
    split: Literal["train", "val", "test"]
    max_rows: int | None


class Embeddings(Params):
    method: Literal["model", "mmd", "distance", "ratio"]
    bootstrap: bool | None
    threshold: float | None
    pca_components: int | None


class Verdict(Params):
    use_prediction_drift: bool
    # drift when the window's share flagged out of distribution exceeds the reference's
    # by more than this (model/ood.py; skipped for models without a detector)
    max_ood_share_rise: float


class Retrain(Params):
    enabled: bool  # "true"/"false" from PLANTS_MONITORING_RETRAIN are accepted
    command: str | list[str] | None
    log_dir: str


class MonitoringParams(Params):
    window: Window
    min_current_rows: int
    reference: Reference
    stat_columns: list[str]
    stat_test: str | None
    stat_threshold: float | None
    drift_share: float
    embeddings: Embeddings
    verdict: Verdict
    retrain: Retrain


# The model of each ``params:<stage>`` block.
# -- model card ----------------------------------------------------------------------------


class CardBootstrap(Params):
    resamples: int  # bootstrap draws of the test images
    confidence: float  # e.g. 0.95: the 2.5th and 97.5th percentiles
    seed: int


class CardSlices(Params):
    short_side_px: list[int]  # bucket edges of the original image's shorter side
    aspect_ratio: tuple[float, float]  # width / height below: portrait; from: landscape
    brightness: tuple[float, float]  # mean luminance in [0, 1] below: dark; from: bright
    max_hosts: int  # the most frequent source hosts shown, the rest pooled
    min_slice_images: int  # a slice with fewer images is marked "few images"


class ModelCardParams(Params):
    intended_use: str
    out_of_scope: list[str]
    bootstrap: CardBootstrap
    slices: CardSlices
    subset: EvaluationSubset  # the test images evaluation used


STAGES: dict[str, type[Params]] = {
    "ingestion": IngestionParams,
    "formatting": FormattingParams,
    "curation": CurationParams,
    "validation": ValidationParams,
    "training": TrainingParams,
    "evaluation": EvaluationParams,
    "behaviour": BehaviourParams,
    "registry": RegistryParams,
    "monitoring": MonitoringParams,
    "task": TaskParams,
    "model_card": ModelCardParams,
}


def parse(model: type[M], params: Mapping[str, Any] | M, key: str) -> M:
    """``params`` (what Kedro passes for ``params:<key>``) validated as ``model``.

    An instance of ``model`` is returned as is. On failure raises ``UserFacingError`` with
    one line per problem, naming the YAML key path and the file it comes from, e.g.
    ``params:training.optimizer.lr: Input should be a valid number, got 'fast'
    (conf/base/parameters_training.yml)``.
    """
    if isinstance(params, model):
        return params
    try:
        return model.model_validate(params)
    except ValidationError as exc:
        raise UserFacingError(_describe(exc, key)) from None


def _describe(exc: ValidationError, key: str) -> str:
    stage = key.split(".", 1)[0]
    # the task file of the run's environment (conf/base/task.yml for the shipped task)
    source = "conf/<env>/task.yml" if stage == "task" else f"conf/base/parameters_{stage}.yml"
    lines = []
    for err in exc.errors():
        path = ".".join([key, *(str(p) for p in err["loc"])])
        problem = err["msg"]
        if err["type"] == "value_error":  # a validator's own message names what is wrong
            problem = problem.removeprefix("Value error, ")
        elif err["type"] not in ("missing", "extra_forbidden") and not isinstance(
            err["input"], Mapping
        ):
            problem = f"{problem.split(',', 1)[0]}, got {err['input']!r}"
        elif err["type"] == "missing":
            problem = "missing (every parameter is set in the YAML)"
        elif err["type"] == "extra_forbidden":
            problem = "unknown parameter (a typo?)"
        lines.append(f"params:{path}: {problem} ({source})")
    return "\n".join(lines)
