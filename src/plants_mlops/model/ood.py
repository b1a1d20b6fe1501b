"""Out-of-distribution (OOD) detection in the frozen backbone's embedding space.

A closed-set softmax answers every upload with a confident label, a cat photo included.
This module scores how far an embedding lies from the training images, so the API can
say "this does not look like a <task> photo" instead (docs/model.md, *Out-of-distribution
detection*). Two detectors, both measured (``benchmarks/bench_ood.py``):

- ``mahalanobis``: the distance to the nearest class mean under the classes' shared
  (within-class) covariance, in the ``rank`` leading principal directions of that
  covariance (whitened), plus the squared residual outside them scaled by the mean
  residual variance, so nothing the subspace leaves out goes unseen. Fixed size
  (``D x rank``), whatever the number of training images.
- ``knn``: one minus the cosine similarity to the ``k``-th nearest training *image*
  (L2-normalised embeddings; an image is as near as the nearest of its views, so a photo
  stored with its mirror and turns counts once; ``k`` at most half the smallest class's
  images); its reference grows with the data (capped at ``max_reference`` rows: a seeded
  draw of whole images with all their views).

The API: :func:`fit` ``(embeddings, labels, config) -> OODDetector``;
:meth:`OODDetector.score` ``(embeddings) -> float array`` (higher: further from the
training data); :func:`threshold_for` picks the threshold on in-distribution
scores so that at most ``max_flag_rate`` of them are flagged: the validation split's,
and (knn) the training images' scores with each image left out of the reference
(:meth:`OODDetector.held_out_scores`), which a small validation split needs;
:func:`attach` appends the detector to the serving ONNX graph as a third output,
``ood_score`` ``[N]``, computed from the graph's own ``embedding`` output, so the float
model, the int8 model, the registry's load check and the API carry the detector in the
one file they already load (no second file to keep in step). The threshold and the
shares it flags travel in ``serving_meta.ood`` (:class:`OODSummary`).

Everything works for K classes (class means over the labels present).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import numpy as np
from pydantic import BaseModel, ConfigDict

OUTPUT = "ood_score"  # the serving graph's extra output: float32 [N]
_EPS = 1e-12


class OODSummary(BaseModel):
    """What the serving meta says about the detector (``serving_meta.ood``), also the
    figures the model card reads: method, threshold, and the shares of in-distribution
    images it flags."""

    model_config = ConfigDict(extra="ignore", frozen=True)

    method: Literal["mahalanobis", "knn"]
    threshold: float  # a request whose ood_score is above it is out of distribution
    max_flag_rate: float  # the limit the threshold was chosen for (validation)
    val_flag_rate: float  # share of validation images the threshold flags
    val_images: int
    train_images: int  # images (not views) the detector was fitted on
    # knn: share of the training images the threshold flags, each scored with itself and
    # its views left out of the reference (held_out_scores); None: mahalanobis
    train_flag_rate: float | None = None
    rank: int | None = None  # mahalanobis: principal directions kept
    k: int | None = None  # knn: the neighbour (a training image) whose distance is the score
    reference_rows: int | None = None  # knn: stored training embeddings
    views: int | None = None  # knn: rows per reference image (the image and its views)
    output: str = OUTPUT


@dataclass(frozen=True)
class OODDetector:
    """A fitted detector: the arrays its score needs, float32 as the graph holds them."""

    method: str
    center: np.ndarray  # [D] mean of the training embeddings (mahalanobis)
    projection: np.ndarray  # [D, r] whitening projection (mahalanobis)
    class_means: np.ndarray  # [K, r] class means, projected (mahalanobis)
    residual_scale: float  # 1 / mean residual variance per dimension (mahalanobis)
    reference: np.ndarray  # [M * views, D] L2-normalised training embeddings (knn)
    k: int
    train_images: int
    views: int = 1  # knn: consecutive reference rows that are views of one image
    # knn: the training image (index into fit's embeddings) of each reference image [M]
    reference_images: np.ndarray | None = None

    @property
    def rank(self) -> int:
        return int(self.projection.shape[1])

    def score(self, embeddings: np.ndarray) -> np.ndarray:
        """OOD score per row of ``embeddings`` [N, D] (float64 [N]; higher: further)."""
        x = np.asarray(embeddings, dtype=np.float32)
        if self.method == "knn":
            x = x / np.sqrt((x * x).sum(axis=1, keepdims=True) + _EPS)
            sims = (x @ self.reference.T).reshape(len(x), -1, self.views).max(axis=2)
            kth = -np.sort(-sims, axis=1)[:, self.k - 1]
            return (1.0 - kth).astype(np.float64)
        c = x - self.center
        z = c @ self.projection  # [N, r]
        d = ((z[:, None, :] - self.class_means[None, :, :]) ** 2).sum(axis=2).min(axis=1)
        resid = (c * c).sum(axis=1) - (z * z * self._eig).sum(axis=1)
        return (d + np.maximum(resid, 0.0) * self.residual_scale).astype(np.float64)

    def held_out_scores(self, embeddings: np.ndarray) -> np.ndarray | None:
        """knn: the score of each training image of :func:`fit`'s ``embeddings``
        ([N, D] or [N, V, D]; the image itself is the first view) with that image and its
        views left out of the reference (float64 [N]). The backbone is frozen, so these
        are scores of in-distribution photos the reference has not seen, as an upload's
        is (an image kept out of a capped reference is scored against all of it). None for
        mahalanobis: its class means and covariance were fitted on these images, so their
        scores are not those of unseen photos (nor for a reference of one image: none
        would be left)."""
        if self.method != "knn" or self.reference_images is None:
            return None
        if len(self.reference_images) < 2:
            return None
        x = np.asarray(embeddings, dtype=np.float32)
        x = x[:, 0] if x.ndim == 3 else x
        x = x / np.sqrt((x * x).sum(axis=1, keepdims=True) + _EPS)
        out = np.empty(len(x), np.float64)
        own = np.full(len(x), -1)
        own[self.reference_images] = np.arange(len(self.reference_images))
        for start in range(0, len(x), 512):  # [512, M] similarities at a time
            rows = slice(start, start + 512)
            sims = (x[rows] @ self.reference.T).reshape(len(x[rows]), -1, self.views).max(axis=2)
            inside = np.flatnonzero(own[rows] >= 0)
            sims[inside, own[rows][inside]] = -np.inf  # the image and its views: left out
            out[rows] = 1.0 - (-np.sort(-sims, axis=1)[:, self.k - 1])
        return out

    @property
    def _eig(self) -> np.ndarray:
        # ||c||^2 - ||U^T c||^2 is the residual; z = U^T c / sqrt(lambda), so
        # ||U^T c||^2 = sum(z^2 * lambda), and lambda = 1 / ||projection column||^2.
        return 1.0 / ((self.projection * self.projection).sum(axis=0) + _EPS)


def _views(emb: np.ndarray, labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """[N, V, D] (V views per image) as [N * V, D] rows with repeated labels."""
    emb = np.asarray(emb, dtype=np.float64)
    labels = np.asarray(labels)
    if emb.ndim == 2:
        return emb, labels
    return emb.reshape(-1, emb.shape[-1]), np.repeat(labels, emb.shape[1])


def fit(
    embeddings: np.ndarray,
    labels: np.ndarray,
    *,
    method: str,
    rank: int,
    k: int,
    max_reference: int,
    seed: int = 0,
) -> OODDetector:
    """Fit a detector on training embeddings [N, D] or [N, V, D] (views of each image,
    e.g. its mirror) with labels in 0..K-1."""
    n_images = int(len(embeddings))
    x, y = _views(embeddings, labels)
    if len(x) < 2:
        raise ValueError("OOD detection needs at least two training embeddings")
    d = x.shape[1]
    empty = np.zeros((0, d), np.float32)
    if method == "knn":
        views = 1 if np.ndim(embeddings) == 2 else int(np.shape(embeddings)[1])
        ref = x / np.sqrt((x * x).sum(axis=1, keepdims=True) + _EPS)
        kept = np.arange(n_images)
        if len(ref) > max_reference:  # whole images, each with all its views
            n_keep = max(1, max_reference // views)
            kept = np.sort(np.random.default_rng(seed).choice(n_images, n_keep, False))
            ref = ref.reshape(n_images, views, d)[kept].reshape(-1, d)
        # At most half the smallest class's images: a photo of that class then finds its
        # k-th nearest image among its own class (a larger k scores it by the others).
        smallest = int(np.unique(np.asarray(labels)[kept], return_counts=True)[1].min())
        k = max(1, min(k, smallest // 2))
        return OODDetector(
            "knn",
            np.zeros(d, np.float32),
            np.zeros((d, 0), np.float32),
            np.zeros((0, 0), np.float32),
            0.0,
            ref.astype(np.float32),
            int(k),  # <= the smallest class's kept images: never past the reference
            n_images,
            views,
            kept,
        )
    if method != "mahalanobis":
        raise ValueError(f"unknown OOD method {method!r} (mahalanobis or knn)")
    center = x.mean(axis=0)
    classes = np.unique(y)
    means = np.stack([x[y == c].mean(axis=0) for c in classes])
    within = x - means[np.searchsorted(classes, y)]
    # Shared covariance through the SVD of the within-class residuals: [n, D] with n << D
    # is cheap this way, and the directions past the data's rank carry no variance.
    _, s, vt = np.linalg.svd(within, full_matrices=False)
    var = s**2 / max(len(x) - len(classes), 1)
    r = int(min(rank, int((var > var.max() * 1e-10).sum())))
    u, lam = vt[:r].T, var[:r]
    total = float((within * within).sum() / max(len(x) - len(classes), 1))
    resid_var = max(total - float(lam.sum()), _EPS) / max(d - r, 1)
    projection = u / np.sqrt(lam)
    return OODDetector(
        "mahalanobis",
        center.astype(np.float32),
        projection.astype(np.float32),
        ((means - center) @ projection).astype(np.float32),
        float(1.0 / resid_var),
        empty,
        int(k),
        n_images,
    )


def threshold_for(
    scores: np.ndarray, max_flag_rate: float, held_out: np.ndarray | None = None
) -> float:
    """A threshold that flags (``score > threshold``) at most ``max_flag_rate`` of
    ``scores`` (in-distribution validation scores) and, with ``held_out`` (the training
    images' :meth:`OODDetector.held_out_scores`), at most ``max_flag_rate`` of those as
    well: the higher of the two thresholds. A few dozen validation images allow one or
    none flagged, so on its own the threshold is the highest or second-highest validation
    score, and how many unseen photos it flags varies from one split to the next; the
    training images, several times as many, hold it where their own 5 % lies.

    Each threshold is halfway between the highest score it lets through and the lowest it
    flags, so that no validation image sits on it and the serving graph's float32 rounding
    cannot flag one more than counted here (with none to flag: the highest score)."""
    threshold = _quantile_threshold(scores, max_flag_rate)
    if held_out is not None and len(held_out):
        threshold = max(threshold, _quantile_threshold(held_out, max_flag_rate))
    return threshold


def _quantile_threshold(scores: np.ndarray, max_flag_rate: float) -> float:
    s = np.sort(np.asarray(scores, dtype=np.float64))
    if not len(s):
        raise ValueError("no in-distribution scores to choose the OOD threshold on")
    allowed = int(np.floor(max_flag_rate * len(s) + 1e-9))
    if allowed >= len(s):
        return float(s[0])
    kept = s[len(s) - 1 - allowed]
    return float((kept + s[len(s) - allowed]) / 2) if allowed else float(kept)


def flag_rate(scores: np.ndarray, threshold: float) -> float:
    scores = np.asarray(scores)
    return float((scores > threshold).mean()) if len(scores) else 0.0


def auroc(in_scores: np.ndarray, out_scores: np.ndarray) -> float:
    """Separation: the probability that an OOD image scores above an in-distribution one
    (ties count half)."""
    a, b = np.asarray(in_scores, np.float64), np.asarray(out_scores, np.float64)
    if not len(a) or not len(b):
        return float("nan")
    greater = (b[:, None] > a[None, :]).sum() + 0.5 * (b[:, None] == a[None, :]).sum()
    return float(greater / (len(a) * len(b)))


def summary(
    detector: OODDetector,
    threshold: float,
    val_scores: np.ndarray,
    max_flag_rate: float,
    held_out: np.ndarray | None = None,
) -> OODSummary:
    knn = detector.method == "knn"
    return OODSummary(
        method=detector.method,
        threshold=threshold,
        max_flag_rate=max_flag_rate,
        val_flag_rate=flag_rate(val_scores, threshold),
        val_images=int(len(val_scores)),
        train_images=detector.train_images,
        train_flag_rate=None if held_out is None else flag_rate(held_out, threshold),
        rank=None if knn else detector.rank,
        k=detector.k if knn else None,
        reference_rows=int(len(detector.reference)) if knn else None,
        views=detector.views if knn else None,
    )


# --- in the ONNX graph ---------------------------------------------------------------


def attach(onnx: bytes, detector: OODDetector, embedding_output: str = "embedding") -> bytes:
    """``onnx`` with the detector appended: a third graph output ``ood_score`` [N]
    computed from ``embedding_output`` exactly as :meth:`OODDetector.score` does (float32).
    Works on the float and the int8 (QDQ) graph alike: it reads their float embedding."""
    import onnx as onnx_lib
    from onnx import TensorProto, helper, numpy_helper

    model = onnx_lib.load_from_string(onnx)
    graph = model.graph
    if any(o.name == OUTPUT for o in graph.output):
        raise ValueError(f"the graph already has an {OUTPUT!r} output")
    names = {o.name for o in graph.output}
    if embedding_output not in names:
        raise ValueError(f"the graph has no {embedding_output!r} output (outputs: {names})")

    def const(name: str, value) -> str:
        full = f"ood/{name}"
        graph.initializer.append(numpy_helper.from_array(np.asarray(value), full))
        return full

    def node(op: str, inputs: list[str], name: str, **attrs) -> str:
        out = f"ood/{name}"
        graph.node.append(helper.make_node(op, inputs, [out], name=out, **attrs))
        return out

    emb = embedding_output
    opset = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 17)
    axes = const("axes1", np.array([1], np.int64))  # Unsqueeze's axes (an input since opset 13)

    def reduce(x: str, axis: int, name: str, op: str = "ReduceSum") -> str:
        # ReduceSum takes its axes as an input since opset 13, ReduceMin/Max since opset 18.
        if op == "ReduceSum" or opset >= 18:
            axes = f"ood/axes{axis}"
            if not any(i.name == axes for i in graph.initializer):
                const(f"axes{axis}", np.array([axis], np.int64))
            return node(op, [x, axes], name, keepdims=0)
        return node(op, [x], name, axes=[axis], keepdims=0)

    if detector.method == "knn":
        sq = node("Mul", [emb, emb], "sq")
        norm = node(
            "Sqrt",
            [
                node(
                    "Add",
                    [reduce(sq, 1, "sqsum_k"), const("eps", np.float32(_EPS))],
                    "sqsum_eps",
                )
            ],
            "norm",
        )
        unit = node("Div", [emb, node("Unsqueeze", [norm, axes], "norm_col")], "unit")
        sims = node("MatMul", [unit, const("reference_t", detector.reference.T.copy())], "sims")
        # [N, M * V] -> [N, M, V] -> the nearest view of each reference image: [N, M]
        grouped = node(
            "Reshape",
            [sims, const("grouped_shape", np.array([0, -1, detector.views], np.int64))],
            "sims_grouped",
        )
        per_image = reduce(grouped, 2, "per_image", op="ReduceMax")
        k = const("k", np.array([detector.k], np.int64))
        topk = helper.make_node(
            "TopK", [per_image, k], ["ood/topk_values", "ood/topk_indices"], name="ood/topk", axis=1
        )
        graph.node.append(topk)
        last = node(
            "Gather",
            ["ood/topk_values", const("last", np.array(detector.k - 1, np.int64))],
            "kth",
            axis=1,
        )
        node("Sub", [const("one", np.float32(1.0)), last], "score")
    else:
        c = node("Sub", [emb, const("center", detector.center)], "centered")
        z = node("MatMul", [c, const("projection", detector.projection)], "z")
        diff = node(
            "Sub",
            [
                node("Unsqueeze", [z, axes], "z3"),
                const("class_means", detector.class_means[None, :, :]),
            ],
            "diff",
        )
        dist = reduce(node("Mul", [diff, diff], "diff_sq"), 2, "dist")
        nearest = reduce(dist, 1, "nearest", op="ReduceMin")
        total = reduce(node("Mul", [c, c], "c_sq"), 1, "c_norm")
        kept = reduce(
            node("Mul", [node("Mul", [z, z], "z_sq"), const("eig", detector._eig)], "z_eig"),
            1,
            "kept",
        )
        resid = node("Relu", [node("Sub", [total, kept], "resid_raw")], "resid")
        scaled = node(
            "Mul",
            [resid, const("residual_scale", np.float32(detector.residual_scale))],
            "resid_scaled",
        )
        node("Add", [nearest, scaled], "score")
    graph.node.append(helper.make_node("Identity", ["ood/score"], [OUTPUT], name="ood/output"))
    graph.output.append(helper.make_tensor_value_info(OUTPUT, TensorProto.FLOAT, ["batch"]))
    onnx_lib.checker.check_model(model)
    return model.SerializeToString()
