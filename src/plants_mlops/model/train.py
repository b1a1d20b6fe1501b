"""Training: CUDA with mixed precision when present, deterministic CPU otherwise.

``train`` runs one of two strategies (``training.strategy``):

- ``finetune``: every layer trained; returns the model restored to its best epoch (early
  stopping on validation macro F1, ties broken by validation loss) with the per-epoch
  history.
- ``linear_probe``: the backbone frozen, a logistic regression on its embeddings written
  into the head (``model/probe.py``); the "epochs" of its history are the points of the
  ``C`` grid, ``best_epoch`` the one chosen.

Either way the result is a ``PlantsNet`` with a temperature fitted on the validation split.
"""

from __future__ import annotations

import copy
import logging
import random
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import nn
from tqdm.auto import tqdm

from plants_mlops.model.architectures import SPECS, PlantsNet, build_model
from plants_mlops.model.data import (
    AugmentedDataset,
    SplitImages,
    eval_tensor,
    stratified_sample,
)
from plants_mlops.model.metrics import classification_metrics
from plants_mlops.params import Optimizer, TrainingParams

log = logging.getLogger(__name__)


def select_device(preference: str = "auto") -> torch.device:
    """``auto``: CUDA when available, else CPU. Asking for ``cuda`` without one is an error."""
    if preference == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if preference.startswith("cuda") and not torch.cuda.is_available():
        raise RuntimeError("device 'cuda' requested but torch finds no CUDA GPU")
    return torch.device(preference)


def seed_everything(seed: int, device: torch.device) -> torch.Generator:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    if device.type == "cpu":
        # Same data + seed -> same weights on CPU. On CUDA cuDNN autotuning wins over
        # bit-exactness (documented in docs/model.md).
        torch.use_deterministic_algorithms(True, warn_only=True)
    else:
        torch.backends.cudnn.benchmark = True
    gen = torch.Generator()
    gen.manual_seed(seed)
    return gen


@dataclass
class TrainResult:
    model: PlantsNet
    history: list[dict[str, float]]
    best_epoch: int
    device: str
    train_seconds: float
    images_per_second: float
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    val_metrics: dict = field(default_factory=dict)
    # Temperature scaling on the validation split (model/calibration.calibrate); T = 1
    # when disabled or when it does not lower the validation NLL.
    calibration: dict = field(default_factory=lambda: {"temperature": 1.0, "applied": False})

    @property
    def probe_C(self) -> float | None:
        """The linear probe's chosen C (its best "epoch" is a point of the C grid); None
        when fine-tuned."""
        return self.history[self.best_epoch - 1].get("C") if self.history else None


def _optimizer(model: nn.Module, cfg: Optimizer) -> torch.optim.Optimizer:
    if cfg.name == "adamw":
        return torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    return torch.optim.SGD(
        model.parameters(), lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay
    )


@torch.no_grad()
def predict_logits(
    model: nn.Module, x: torch.Tensor, device: torch.device, batch_size: int = 64
) -> np.ndarray:
    """Logits [N, C] (float32) in eval mode."""
    model.eval()
    out = []
    for i in range(0, len(x), batch_size):
        xb = x[i : i + batch_size].to(device, non_blocking=True)
        xb = xb.contiguous(memory_format=torch.channels_last)
        with torch.autocast(device.type, dtype=torch.float16, enabled=device.type == "cuda"):
            logits, _ = model(xb)
        out.append(logits.float().cpu())
    return torch.cat(out).numpy()


def predict_proba(
    model: nn.Module, x: torch.Tensor, device: torch.device, batch_size: int = 64
) -> np.ndarray:
    """Class probabilities [N, C] in eval mode."""
    return torch.from_numpy(predict_logits(model, x, device, batch_size)).softmax(dim=1).numpy()


def _nll(proba: np.ndarray, y: np.ndarray) -> float:
    return float(-np.log(np.clip(proba[np.arange(len(y)), y], 1e-7, 1.0)).mean())


def train(
    splits: Mapping[str, SplitImages], params: TrainingParams, labels: Sequence[str]
) -> TrainResult:
    """Train a head over ``labels`` (the task's, in class order) on ``splits['train']``,
    select the epoch on ``splits['val']``."""
    labels = tuple(labels)
    device = select_device(params.device)
    if params.num_threads:
        torch.set_num_threads(params.num_threads)
    gen = seed_everything(params.seed, device)
    arch = params.architecture
    image_size = params.image_size
    spec = SPECS.get(arch)
    if spec is None:
        raise ValueError(f"unknown architecture {arch!r}; choose one of {sorted(SPECS)}")
    model = build_model(
        arch,
        n_classes=len(labels),
        image_size=image_size,
        weights=params.weights,
        dropout=params.dropout,
        bn_momentum=params.bn_momentum,
    ).to(device, memory_format=torch.channels_last)
    val_x = eval_tensor(splits["val"], image_size=image_size, mean=spec.mean, std=spec.std)
    val_y = splits["val"].labels
    if params.strategy == "linear_probe":
        return _train_probe(model, splits, params, device, val_x, val_y, labels)

    train_ds = AugmentedDataset(
        splits["train"],
        image_size=image_size,
        mean=spec.mean,
        std=spec.std,
        augment=params.augment,
    )
    cuda = device.type == "cuda"
    loader = torch.utils.data.DataLoader(
        train_ds,
        batch_size=params.batch_size,
        shuffle=True,
        generator=gen,
        num_workers=params.loader_workers(cuda),
        pin_memory=cuda,
        drop_last=len(train_ds) > params.batch_size,
        persistent_workers=params.loader_workers(cuda) > 0,
    )

    epochs = params.epochs
    optimizer = _optimizer(model, params.optimizer)
    scheduler = (
        torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=max(epochs, 1))
        if params.scheduler == "cosine"
        else None
    )
    scaler = torch.amp.GradScaler("cuda", enabled=cuda)
    criterion = nn.CrossEntropyLoss(label_smoothing=params.label_smoothing)
    patience = params.early_stopping.patience
    min_delta = params.early_stopping.min_delta

    history: list[dict[str, float]] = []
    best: tuple[float, float] | None = None  # (val f1, -val loss)
    best_state, best_epoch, best_val = None, 0, {}
    stale = 0
    train_time = 0.0
    seen = 0
    for epoch in range(1, epochs + 1):
        model.train()
        t0 = time.perf_counter()
        total_loss, n = 0.0, 0
        bar = tqdm(
            loader,
            desc=f"epoch {epoch}/{epochs}",
            unit="batch",
            leave=False,
            disable=params.quiet or not sys.stderr.isatty(),  # a log gets the epoch's line
        )
        for xb, yb in bar:
            xb = xb.to(device, non_blocking=True).contiguous(memory_format=torch.channels_last)
            yb = yb.to(device, non_blocking=True)
            optimizer.zero_grad(set_to_none=True)
            with torch.autocast(device.type, dtype=torch.float16, enabled=cuda):
                logits, _ = model(xb)
                loss = criterion(logits, yb)
            scaler.scale(loss).backward()
            scaler.step(optimizer)
            scaler.update()
            total_loss += float(loss.detach()) * len(yb)
            n += len(yb)
            bar.set_postfix(loss=f"{total_loss / n:.4f}")
        if cuda:
            torch.cuda.synchronize()
        epoch_time = time.perf_counter() - t0
        train_time += epoch_time
        seen += n
        if scheduler is not None:
            scheduler.step()
        proba = predict_proba(model, val_x, device)
        val = classification_metrics(val_y, proba, labels)
        val_loss = _nll(proba, val_y)
        row = {
            "epoch": epoch,
            "train_loss": total_loss / max(n, 1),
            "val_loss": val_loss,
            "val_accuracy": val["accuracy"],
            "val_f1_macro": val["f1_macro"],
            "epoch_seconds": epoch_time,
            "images_per_second": n / epoch_time if epoch_time else 0.0,
            "lr": optimizer.param_groups[0]["lr"],
        }
        history.append(row)
        log.info(
            "epoch %d/%d: train_loss=%.4f val_loss=%.4f val_f1=%.4f (%.1fs, %.1f img/s)",
            epoch,
            epochs,
            row["train_loss"],
            val_loss,
            val["f1_macro"],
            epoch_time,
            row["images_per_second"],
        )
        key = (val["f1_macro"], -val_loss)
        if best is None or key[0] > best[0] + min_delta or (key[0] >= best[0] and key[1] > best[1]):
            best, best_epoch, best_val = key, epoch, val
            best_state = copy.deepcopy(model.state_dict())
            stale = 0
        else:
            stale += 1
        if stale >= patience:
            log.info("early stopping after epoch %d (best epoch %d)", epoch, best_epoch)
            break
    if best_state is not None:
        model.load_state_dict(best_state)
    model.eval()
    rate = seen / train_time if train_time else 0.0
    val = (val_x, val_y)
    return _result(model, history, best_epoch, train_time, rate, best_val, val, device, params)


def _train_probe(
    model: PlantsNet,
    splits: Mapping[str, SplitImages],
    params: TrainingParams,
    device: torch.device,
    val_x,
    val_y: np.ndarray,
    labels: tuple[str, ...],
) -> TrainResult:
    """The ``linear_probe`` strategy: embeddings of the train split (with its mirrors and
    ``behaviour.probe_views``) through the frozen backbone, the logistic regression's C
    chosen by cross-validation on them, the fit written into the head."""
    from plants_mlops.model import behaviour, probe

    spec = SPECS[params.architecture]
    cfg = params.probe
    t0 = time.perf_counter()
    train = splits["train"]
    if cfg.max_train_images is not None and len(train) > cfg.max_train_images:
        log.info(
            "linear probe: a stratified %d of the %d training images "
            "(training.probe.max_train_images)",
            cfg.max_train_images,
            len(train),
        )
        train = stratified_sample(train, cfg.max_train_images, params.seed)
    train_view = eval_tensor(train, image_size=params.image_size, mean=spec.mean, std=spec.std)
    views = behaviour.probe_views(cfg)
    with probe.frozen_backbone(model, device, params.image_size) as backbone:
        emb = probe.embed(backbone, train_view, device, hflip=cfg.hflip, progress=not params.quiet)
        if views:  # more rows per image: [N, V, D], an image's views in one CV fold
            emb = emb if emb.ndim == 3 else emb[:, None]
            more = _view_embeddings(backbone, train, views, params, device)
            emb = np.concatenate([emb, more], 1)
    embed_seconds = time.perf_counter() - t0
    fitted = probe.fit(
        emb,
        train.labels,
        grid=cfg.C_grid,
        folds=cfg.folds,
        max_iter=cfg.max_iter,
        seed=params.seed,
        n_classes=len(labels),
    )
    probe.load_into_head(model, fitted)
    train_time = time.perf_counter() - t0
    val = classification_metrics(val_y, predict_proba(model, val_x, device), labels)
    history = [
        {
            "epoch": i,  # the grid point: the probe's "epochs" (docs/model.md)
            "C": row["C"],
            "cv_log_loss": row["cv_log_loss"],
            "cv_accuracy": row["cv_accuracy"],
            "epoch_seconds": row["seconds"],
        }
        for i, row in enumerate(fitted.grid, start=1)
    ]
    best_epoch = 1 + [row["C"] for row in fitted.grid].index(fitted.C)
    images = emb.shape[0] * (emb.shape[1] if emb.ndim == 3 else 1)
    log.info(
        "linear probe: %d embeddings in %.1fs (%.1f img/s), C=%g chosen by %d-fold CV "
        "(log-loss %.4f), val_f1=%.4f, %.1fs in all",
        images,
        embed_seconds,
        images / embed_seconds if embed_seconds else 0.0,
        fitted.C,
        fitted.folds,
        fitted.grid[best_epoch - 1]["cv_log_loss"],
        val["f1_macro"],
        train_time,
    )
    rate = images / embed_seconds if embed_seconds else 0.0
    return _result(
        model, history, best_epoch, train_time, rate, val, (val_x, val_y), device, params
    )


def _view_embeddings(
    backbone: Callable[[torch.Tensor], torch.Tensor],
    split: SplitImages,
    views: list[str],
    params: TrainingParams,
    device: torch.device,
) -> np.ndarray:
    """Embeddings [N, len(views), D] of ``split``'s images under the named edits
    (``model/behaviour.EDITS``), through the serving view."""
    from plants_mlops.model import behaviour, probe

    spec = SPECS[params.architecture]
    out = []
    for name in views:
        if name not in behaviour.EDITS:
            raise ValueError(
                f"training.probe.extra_views: unknown edit {name!r}; known: {sorted(behaviour.EDITS)}"
            )
        edited = SplitImages(
            behaviour.EditedImages(split.images, behaviour.EDITS[name]), split.labels, split.keys
        )
        view = eval_tensor(edited, image_size=params.image_size, mean=spec.mean, std=spec.std)
        out.append(probe.embed(backbone, view, device, hflip=False))
    return np.stack(out, axis=1)


def _result(
    model: PlantsNet,
    history: list[dict[str, float]],
    best_epoch: int,
    train_seconds: float,
    images_per_second: float,
    val_metrics: dict,
    val: tuple,
    device: torch.device,
    params: TrainingParams,
) -> TrainResult:
    """The fitted model with its temperature scaling on the validation split ``val``
    (``(view, labels)``; T = 1 when disabled)."""
    spec = SPECS[params.architecture]
    return TrainResult(
        model=model,
        history=history,
        best_epoch=best_epoch,
        device=str(device),
        train_seconds=train_seconds,
        images_per_second=images_per_second,
        mean=spec.mean,
        std=spec.std,
        val_metrics=val_metrics,
        calibration=_calibrate(model, *val, device, params),
    )


def _calibrate(model, val_x, val_y: np.ndarray, device, params: TrainingParams) -> dict:
    """Temperature scaling on the validation split (T = 1 when disabled)."""
    if not params.calibration.enabled:
        return {"temperature": 1.0, "applied": False}
    from plants_mlops.model.calibration import calibrate

    calibration = calibrate(
        predict_logits(model, val_x, device), val_y, min_gain=params.calibration.min_nll_gain
    )
    log.info(
        "temperature scaling on val: T=%.3f %s (%s), NLL %.4f -> %.4f, ECE %.4f -> %.4f",
        calibration["fitted_temperature"],
        "applied" if calibration["applied"] else "not applied",
        calibration["reason"],
        calibration["nll_before"],
        calibration["nll_after"],
        calibration["ece_before"],
        calibration["ece_after"],
    )
    return calibration
