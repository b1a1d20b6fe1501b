"""From the Kedro datasets (``dataset_index`` + ``fmt_images``) to tensors.

``fmt_images`` is a partitioned dataset: a dict ``image_key -> loader`` whose loader returns
JPEG bytes or a PIL image. Images are read lazily: a split holds its loaders, and an image
is decoded when a batch needs it, so memory does not grow with the number of images (held
decoded, 400 images at 160 px were ~30 MB, 100,000 would be 7.5 GB). Every image is
decoded once up front to check it (undecodable ones are skipped with a warning) and then
dropped. The eval view of an image is exactly the serving preprocessing
(``imaging.to_model_input``); training adds augmentations on top.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np
import pandas as pd
import torch
from PIL import Image

from plants_mlops import imaging
from plants_mlops.params import Augment

log = logging.getLogger(__name__)


class LazyImages(Sequence):
    """The images of a split, decoded on access (``images[i]``, ``images[a:b]``)."""

    def __init__(self, loaders: list[Any]) -> None:
        self._loaders = loaders

    def __len__(self) -> int:
        return len(self._loaders)

    def __getitem__(self, i):
        if isinstance(i, slice):
            return [_to_image(value) for value in self._loaders[i]]
        return _to_image(self._loaders[i])


@dataclass
class SplitImages:
    """Square (fmt size) RGB images of one split, decoded on access, with their labels."""

    images: Sequence[Image.Image]
    labels: np.ndarray  # int64, index into the task's labels
    keys: list[str]

    def __len__(self) -> int:
        return len(self.labels)


def _to_image(value: Any) -> Image.Image:
    if callable(value):
        value = value()
    if isinstance(value, bytes | bytearray | memoryview):
        return imaging.decode_image(bytes(value)).image
    if isinstance(value, Image.Image):
        return imaging.to_rgb(value)
    if isinstance(value, np.ndarray):
        return Image.fromarray(value).convert("RGB")
    raise TypeError(f"unsupported fmt image value of type {type(value).__name__}")


def load_splits(
    dataset_index: pd.DataFrame,
    fmt_images: Mapping[str, Callable[[], Any] | Any],
    labels: Sequence[str],
    splits: tuple[str, ...] = ("train", "val", "test"),
    max_per_split: int | None = None,
    seed: int = 0,
) -> dict[str, SplitImages]:
    """Decode the images of ``splits``, their labels as indices into ``labels`` (the task's,
    in class order). Rows whose image is missing or undecodable are skipped with a warning
    (the run goes on with the rest); labels outside ``labels`` are an error.
    ``max_per_split`` keeps a stratified, seeded subset (for quick runs and tests)."""
    missing_cols = {"image_key", "label", "split"} - set(dataset_index.columns)
    if missing_cols:
        raise ValueError(f"dataset_index lacks columns {sorted(missing_cols)}")
    labels = list(labels)
    bad = sorted(set(dataset_index["label"]) - set(labels))
    if bad:
        raise ValueError(f"dataset_index has labels outside {labels}: {bad}")
    class_of = {label: i for i, label in enumerate(labels)}
    out: dict[str, SplitImages] = {}
    for split in splits:
        rows = dataset_index[dataset_index["split"] == split].sort_values("image_key")
        if max_per_split and len(rows) > max_per_split:
            frac = max_per_split / len(rows)
            rows = (
                rows.groupby("label", group_keys=False)[rows.columns]
                .apply(lambda g, f=frac: g.sample(frac=f, random_state=seed))
                .sort_values("image_key")
            )
        images, classes, keys, skipped = [], [], [], []
        for key, label in zip(rows["image_key"], rows["label"], strict=True):
            try:
                value = fmt_images[key]
                _to_image(value)  # a check only: the image is decoded again when used
                images.append(value)
            except (KeyError, TypeError, OSError, imaging.ImageDecodeError) as exc:
                skipped.append(f"{key} ({type(exc).__name__}: {exc})")
                continue
            classes.append(class_of[label])
            keys.append(key)
        if skipped:
            log.warning(
                "split %s: skipped %d image(s) that could not be loaded: %s",
                split,
                len(skipped),
                "; ".join(skipped[:5]),
            )
        if not images:
            raise ValueError(f"split {split!r} has no usable images")
        out[split] = SplitImages(LazyImages(images), np.asarray(classes, dtype=np.int64), keys)
    return out


class Picked(Sequence):
    """The items of ``base`` at ``index``, still read on access."""

    def __init__(self, base: Sequence, index: Sequence[int]) -> None:
        self.base, self.index = base, list(index)

    def __len__(self) -> int:
        return len(self.index)

    def __getitem__(self, i):
        if isinstance(i, slice):
            return [self.base[j] for j in self.index[i]]
        return self.base[self.index[i]]


def stratified_sample(split: SplitImages, n: int, seed: int) -> SplitImages:
    """At most ``n`` images of ``split``, each class keeping its share (seeded; order kept)."""
    if len(split) <= n:
        return split
    rng = np.random.default_rng(seed)
    keep: list[int] = []
    for label in np.unique(split.labels):
        members = np.flatnonzero(split.labels == label)
        share = max(1, round(n * len(members) / len(split)))
        keep += rng.choice(members, size=min(share, len(members)), replace=False).tolist()
    keep.sort()
    return SplitImages(
        Picked(split.images, keep), split.labels[keep], [split.keys[i] for i in keep]
    )


class Subset(Protocol):
    """What picks a split's images: ``params:training`` and ``params:evaluation.subset``."""

    max_images_per_split: int | None
    seed: int


def load_subset(
    dataset_index: pd.DataFrame,
    fmt_images: Mapping,
    labels: Sequence[str],
    splits: tuple[str, ...],
    subset: Subset,
) -> dict[str, SplitImages]:
    """:func:`load_splits` with the subset its parameters choose."""
    return load_splits(
        dataset_index,
        fmt_images,
        labels,
        splits,
        max_per_split=subset.max_images_per_split,
        seed=subset.seed,
    )


class EvalView:
    """The serving view of every image in a split, float32 [N, 3, S, S], built per slice
    (``view[a:b]`` is a tensor) so the whole split is never in memory at once."""

    def __init__(self, split: SplitImages, *, image_size: int, mean: tuple, std: tuple) -> None:
        self.images, self.image_size, self.mean, self.std = split.images, image_size, mean, std

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, i: slice) -> torch.Tensor:
        arrays = [
            imaging.to_model_input(
                img,
                resize_size=img.width,
                image_size=self.image_size,
                mean=self.mean,
                std=self.std,
            )
            for img in self.images[i]
        ]
        return torch.from_numpy(np.stack(arrays))


def eval_tensor(split: SplitImages, *, image_size: int, mean: tuple, std: tuple) -> EvalView:
    """The serving view of every image in the split, sliced into tensors on demand."""
    return EvalView(split, image_size=image_size, mean=mean, std=std)


class AugmentedDataset(torch.utils.data.Dataset):
    """Training view: random resized crop, horizontal flip, mild colour jitter, an optional
    automatic policy (TrivialAugmentWide / RandAugment), normalise.

    Randomness comes only from torch's generator, so a fixed seed gives the same batches.
    """

    def __init__(
        self,
        split: SplitImages,
        *,
        image_size: int,
        mean: tuple,
        std: tuple,
        augment: Augment,
    ) -> None:
        from torchvision.transforms import v2

        self.images = split.images  # decoded per item: memory does not grow with the split
        self.labels = torch.from_numpy(split.labels)
        steps: list = []
        scale = tuple(augment.crop_scale)
        steps.append(v2.RandomResizedCrop(image_size, scale=scale, antialias=True))
        if augment.hflip:
            steps.append(v2.RandomHorizontalFlip())
        if augment.vflip:
            steps.append(v2.RandomVerticalFlip())
        jitter = augment.color_jitter
        if jitter > 0:
            steps.append(v2.ColorJitter(brightness=jitter, contrast=jitter, saturation=jitter))
        if augment.policy == "trivialaugment":
            steps.append(v2.TrivialAugmentWide())
        elif augment.policy == "randaugment":
            steps.append(v2.RandAugment(num_ops=2, magnitude=9))
        steps += [v2.ToDtype(torch.float32, scale=True), v2.Normalize(list(mean), list(std))]
        self.transform = v2.Compose(steps)

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        image = torch.from_numpy(np.asarray(self.images[i]).copy()).permute(2, 0, 1)
        return self.transform(image), self.labels[i]
