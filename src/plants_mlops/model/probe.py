"""Linear probe: the pretrained backbone frozen, an L2 logistic regression on its embeddings.

With 400 web-scraped images, fine-tuning every layer of EfficientNet-Lite0 fits the noise of
a few dozen images per fold; a logistic regression on the frozen ImageNet embedding has far
fewer degrees of freedom (docs/model.md, *Choosing the model*). Here:

- :func:`embed` runs the backbone (:func:`frozen_backbone`: on CPU through ONNX Runtime)
  over a split's serving view (the API's own preprocessing, ``data.eval_tensor``), and over its mirror
  image when asked: the flipped
  copies are extra training rows, as are the turned or otherwise edited copies of
  ``probe.turns`` and ``probe.extra_views`` (``model/behaviour.probe_views``).
- :func:`fit` standardises the embeddings, picks the inverse regularisation ``C`` from a grid
  by stratified k-fold cross-validated log-loss on the training rows (an image's rows stay
  in the same fold), and refits on all of them (``sklearn``'s
  ``LogisticRegression``, lbfgs: deterministic): a binary regression for two classes, a
  multinomial (softmax) one for more.
- :func:`load_into_head` folds the scaler and the regression into ``PlantsNet.head`` so the
  trained network is an ordinary ``PlantsNet``: the ONNX export, int8 quantisation,
  temperature scaling, evaluation and serving do not know how it was trained.
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field

import numpy as np
import torch

from plants_mlops.model.architectures import PlantsNet
from plants_mlops.progress import Progress

log = logging.getLogger(__name__)


@dataclass
class ProbeFit:
    C: float
    # On standardised embeddings: [1, D] and [1] for two classes (the logit of class 1),
    # [K, D] and [K] for K > 2 (the multinomial logits).
    coef: np.ndarray
    intercept: np.ndarray
    mean: np.ndarray  # [D] scaler centre
    scale: np.ndarray  # [D] scaler scale (1 where a dimension is constant)
    folds: int  # the cross-validation's folds (fewer than asked when a class is smaller)
    # One row per C of the grid: cross-validated log-loss and accuracy on the train rows.
    grid: list[dict[str, float]] = field(default_factory=list)

    def decision(self, emb: np.ndarray) -> np.ndarray:
        """The regression's decision for embeddings [N, D]: [N] (the logit of class 1) for
        two classes, [N, K] for more."""
        out = ((emb - self.mean) / self.scale) @ self.coef.T + self.intercept
        return out[:, 0] if self.coef.shape[0] == 1 else out


@contextlib.contextmanager
def frozen_backbone(
    model: PlantsNet, device: torch.device, image_size: int
) -> Iterator[Callable[[torch.Tensor], torch.Tensor]]:
    """The model's backbone, in eval mode, as a function of a batch on ``device``. On CPU
    it is exported once and run by ONNX Runtime with torch's thread count: EfficientNet-Lite0
    at 160 px embeds about 4 times as many images a second on 2 CPU cores as torch does
    (249-306 against 62, ``benchmarks/bench_training.py`` and ``make demo``), with the same
    embeddings to ~1e-5; its memory goes when the block ends. Elsewhere: torch."""
    model.eval()
    if device.type != "cpu":
        yield lambda xb: model.backbone(xb.contiguous(memory_format=torch.channels_last))
        return
    from plants_mlops.contracts import ONNX_INPUT
    from plants_mlops.model.artifact import open_session
    from plants_mlops.model.export import backbone_onnx_bytes

    onnx = backbone_onnx_bytes(model.backbone, image_size)
    session = open_session(onnx, threads=torch.get_num_threads())

    def run(xb: torch.Tensor) -> torch.Tensor:
        x = xb.contiguous().numpy()
        # 16 images a call: ONNX Runtime keeps its largest activations for the session's
        # life, which at 64 images of 160 px would hold about 400 MB more than torch does.
        parts = [session.run(None, {ONNX_INPUT: x[i : i + 16]})[0] for i in range(0, len(x), 16)]
        return torch.from_numpy(np.concatenate(parts))

    try:
        yield run
    finally:
        session = None  # freed at the block's end, even while a caller still holds ``run``


@torch.no_grad()
def embed(
    backbone: Callable[[torch.Tensor], torch.Tensor],
    view,
    device: torch.device,
    *,
    hflip: bool,
    batch_size: int = 64,
    progress: bool = True,
) -> np.ndarray:
    """Embeddings of ``view`` (a sliceable [N, 3, S, S] serving view) by ``backbone`` (a
    :func:`frozen_backbone` on ``device``): [N, D], or [N, 2, D] with the mirror image's
    embedding second when ``hflip``."""
    out = []
    with Progress(len(view), "probe embeddings", log, bar=progress) as done:
        for i in range(0, len(view), batch_size):
            xb = view[i : i + batch_size].to(device)
            rows = [backbone(xb)]
            if hflip:
                rows.append(backbone(torch.flip(xb, dims=[3])))
            out.append(torch.stack(rows, dim=1).float().cpu())
            done.update(len(xb))
    emb = torch.cat(out).numpy()
    return emb if hflip else emb[:, 0]


def _rows(emb: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """[N, V, D] embeddings (V views per image) as [N * V, D] rows with repeated labels."""
    if emb.ndim == 2:
        return emb, y
    return emb.reshape(-1, emb.shape[-1]), np.repeat(y, emb.shape[1])


def _logreg(C: float, max_iter: int):
    from sklearn.linear_model import LogisticRegression

    return LogisticRegression(C=C, max_iter=max_iter)


def fit(
    emb: np.ndarray,
    y: np.ndarray,
    *,
    grid: Sequence[float],
    folds: int,
    max_iter: int,
    seed: int,
    n_classes: int,
) -> ProbeFit:
    """The probe on training embeddings [N, D] or [N, V, D] with labels in
    {0, ..., n_classes - 1}; ``C``
    chosen by ``folds``-fold stratified cross-validated log-loss (ties: the smaller C).
    The fits run on one BLAS thread: on these small matrices more threads only contend
    (measured: 0.04 s per fit on one thread, over 1 s on two threads of a busy 2-core CPU)."""
    counts = np.bincount(y, minlength=n_classes)
    if len(counts) > n_classes or (counts == 0).any():
        absent = [int(i) for i in np.flatnonzero(counts == 0)]
        raise ValueError(
            f"the linear probe needs every one of the {n_classes} classes in the training "
            f"split (class indices {absent} have no image)"
        )
    if not grid:
        raise ValueError("training.probe.C_grid is empty")
    from threadpoolctl import threadpool_limits

    with threadpool_limits(limits=1, user_api="blas"):  # small matrices: one BLAS thread
        return _fit(emb, y, grid, folds, max_iter, seed, n_classes)


def _fit(emb, y, grid, folds, max_iter, seed, n_classes) -> ProbeFit:
    from sklearn.metrics import log_loss
    from sklearn.model_selection import StratifiedKFold
    from sklearn.preprocessing import StandardScaler

    X, Y = _rows(emb, y)
    scaler = StandardScaler().fit(X)
    Z = scaler.transform(X)
    views = 1 if emb.ndim == 2 else emb.shape[1]
    k = max(2, min(folds, int(np.bincount(y).min())))
    classes = list(range(n_classes))
    cuts = list(StratifiedKFold(k, shuffle=True, random_state=seed).split(np.zeros(len(y)), y))
    table = []
    for C in grid:
        t0 = time.perf_counter()
        losses, right = [], 0
        for tr, va in cuts:  # image indices -> their rows (an image's views stay together)
            tr_rows = (tr[:, None] * views + np.arange(views)).ravel()
            va_rows = (va[:, None] * views + np.arange(views)).ravel()
            clf = _logreg(C, max_iter).fit(Z[tr_rows], Y[tr_rows])
            p = clf.predict_proba(Z[va_rows])  # columns: clf.classes_, all of them
            losses.append(log_loss(Y[va_rows], p, labels=classes) * len(va_rows))
            right += int((p.argmax(axis=1) == Y[va_rows]).sum())
        table.append(
            {
                "C": float(C),
                "cv_log_loss": float(sum(losses) / len(Y)),
                "cv_accuracy": right / len(Y),
                "seconds": time.perf_counter() - t0,
            }
        )
    best = min(table, key=lambda r: (round(r["cv_log_loss"], 6), r["C"]))
    clf = _logreg(best["C"], max_iter).fit(Z, Y)
    return ProbeFit(
        C=best["C"],
        coef=clf.coef_.astype(np.float64),
        intercept=clf.intercept_.astype(np.float64),
        mean=scaler.mean_.astype(np.float64),
        scale=scaler.scale_.astype(np.float64),
        folds=k,
        grid=table,
    )


@torch.no_grad()
def load_into_head(model: PlantsNet, probe: ProbeFit) -> None:
    """Write the probe into the linear head so the head's softmax is the regression's
    probabilities: for two classes logits (-z/2, z/2) with z the logit of class 1 (softmax
    = sigmoid), for K classes the multinomial logits themselves."""
    w = probe.coef / probe.scale  # [K', D], the scaler folded in
    b = probe.intercept - w @ probe.mean  # [K']
    if len(w) == 1:
        w, b = np.concatenate([-w / 2, w / 2]), np.concatenate([-b / 2, b / 2])
    head = model.head
    if head.out_features != len(w):
        raise ValueError(
            f"the probe has {len(w)} classes, the model's head {head.out_features} outputs"
        )
    head.weight.copy_(torch.from_numpy(w).to(head.weight))
    head.bias.copy_(torch.from_numpy(b).to(head.bias))
