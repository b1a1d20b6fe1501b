"""Why the model answered what it did: class activation maps, as a grid and an overlay.

The serving graph's ``class_maps`` output (model/export.py) holds, for every cell of the
backbone's last feature map, the logits the linear head gives that cell's features alone;
with the embedding an average of the cells, their mean over the cells is the logits.
Softmax only sees differences between logits, so the evidence a cell gives class ``k`` is
its logit for ``k`` minus its mean logit over all K classes: the grid's mean is then
exactly ``logit_k - mean(logits)`` (for two classes, half the logit margin). Positive cells
push the answer towards ``k``, negative ones away.

Pure numpy and Pillow (no torch, no matplotlib): the API, the curation review page and
the benchmark share it.
"""

from __future__ import annotations

import base64
import io
from dataclasses import dataclass

import numpy as np
from PIL import Image

# A jet-like colour scale (blue -> cyan -> yellow -> red), sampled into a 256-entry table.
_STOPS = np.array([0.0, 0.125, 0.375, 0.625, 0.875, 1.0])
_COLOURS = np.array(
    [[0, 0, 143], [0, 0, 255], [0, 255, 255], [255, 255, 0], [255, 0, 0], [128, 0, 0]],
    dtype=np.float64,
)
_LUT = np.stack(
    [np.interp(np.linspace(0, 1, 256), _STOPS, _COLOURS[:, c]) for c in range(3)], axis=1
).astype(np.float32)


def evidence(maps: np.ndarray, label_index: int) -> np.ndarray:
    """[h, w] evidence for class ``label_index`` from one image's class maps [K, h, w]:
    the cell's logit for the class minus its mean logit over the classes."""
    maps = np.asarray(maps, dtype=np.float64)
    if maps.ndim != 3 or not 0 <= label_index < maps.shape[0]:
        raise ValueError(f"want class maps [K, h, w] and a class below K, got {maps.shape}")
    return maps[label_index] - maps.mean(axis=0)


@dataclass(frozen=True)
class Explanation:
    """The evidence grid for one class of one image."""

    label_index: int
    grid: np.ndarray  # [h, w], logit units (see the module docstring)

    @classmethod
    def of(cls, maps: np.ndarray, label_index: int) -> Explanation:
        return cls(label_index, evidence(maps, label_index))

    @property
    def hottest(self) -> tuple[int, int]:
        """(row, column) of the cell with the most evidence for the class."""
        row, col = np.unravel_index(int(np.argmax(self.grid)), self.grid.shape)
        return int(row), int(col)

    def rounded(self, digits: int = 4) -> list[list[float]]:
        return [[round(float(v), digits) for v in row] for row in self.grid]

    def heat(self, size: int) -> np.ndarray:
        return heat(self.grid, size)

    def overlay(self, view: Image.Image, opacity: float = 0.6) -> Image.Image:
        return overlay(view, self.grid, opacity)

    def overlay_png(self, view: Image.Image) -> bytes:
        buf = io.BytesIO()
        self.overlay(view).save(buf, format="PNG", optimize=False, compress_level=3)
        return buf.getvalue()

    def overlay_base64(self, view: Image.Image) -> str:
        return base64.b64encode(self.overlay_png(view)).decode("ascii")


def heat(grid: np.ndarray, size: int) -> np.ndarray:
    """[size, size] in [0, 1]: the positive evidence of ``grid``, bilinearly upsampled and
    scaled by its maximum (all zeros when no cell supports the class)."""
    grid = np.asarray(grid, dtype=np.float64)
    top = float(grid.max())
    if top <= 0:
        return np.zeros((size, size), np.float32)
    cells = Image.fromarray(np.clip(grid / top, 0, 1).astype(np.float32), mode="F")
    up = np.asarray(cells.resize((size, size), Image.Resampling.BILINEAR), np.float32)
    return np.clip(up, 0.0, 1.0)


def overlay(view: Image.Image, grid: np.ndarray, opacity: float = 0.6) -> Image.Image:
    """``view`` (the picture the model saw, ``imaging.model_view``) with the heat of
    ``grid`` drawn over it: colour and opacity grow with the evidence, so regions that do
    not support the class keep the photo as it is."""
    if view.width != view.height:
        raise ValueError(f"the model's view is square, got {view.size}")
    h = heat(grid, view.width)
    colour = _LUT[np.round(h * 255).astype(np.uint8)]
    alpha = (opacity * h)[..., None]
    photo = np.asarray(view.convert("RGB"), np.float32)
    return Image.fromarray(np.round(photo * (1 - alpha) + colour * alpha).astype(np.uint8))
