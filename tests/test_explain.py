"""Class activation maps: exported with the serving graph, exact, and following the object."""

from __future__ import annotations

import io

import numpy as np
import pytest
import torch
from PIL import Image
from support import champion, images
from support.params import base_labels

from plants_mlops import imaging
from plants_mlops.contracts import ONNX_INPUT
from plants_mlops.model import artifact, explain
from plants_mlops.model.architectures import SPECS, build_model, cell_embeddings, split_backbone
from plants_mlops.model.export import onnx_bytes

LABELS = base_labels()


def _artifact(small_model) -> artifact.ServingArtifact:
    meta = {
        "labels": list(LABELS),
        "image_size": small_model.history["config"]["image_size"],
        "resize_size": small_model.history["resize_size"],
        "mean": small_model.history["mean"],
        "std": small_model.history["std"],
    }
    return artifact.ServingArtifact.from_bytes(small_model.onnx, meta, threads=1)


def test_class_maps_of_the_pretrained_lite0_export_average_to_its_logits():
    torch.manual_seed(0)
    model = build_model(
        "efficientnet_lite0", n_classes=len(LABELS), image_size=128, weights="imagenet"
    ).eval()
    torch.nn.init.normal_(model.head.weight, std=0.05)
    session = artifact.open_session(onnx_bytes(model, 128), threads=1)
    x = np.random.default_rng(0).normal(size=(2, 3, 128, 128)).astype(np.float32)
    logits, _, maps = session.run(None, {ONNX_INPUT: x})
    assert maps.shape == (2, len(LABELS), 4, 4)  # stride 32
    np.testing.assert_allclose(maps.mean(axis=(2, 3)), logits, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("architecture", sorted(SPECS))
def test_cell_embeddings_are_the_neck_of_each_cell_alone(architecture):
    torch.manual_seed(0)
    model = build_model(architecture, n_classes=len(LABELS), image_size=64).eval()
    trunk, neck = split_backbone(model.backbone)
    with torch.no_grad():
        fmap = trunk(torch.randn(2, 3, 64, 64))
        n, c, h, w = fmap.shape
        one_by_one = fmap.permute(0, 2, 3, 1).reshape(-1, c, 1, 1)
        expected = neck(one_by_one).reshape(n, h, w, -1)
        torch.testing.assert_close(cell_embeddings(neck, fmap), expected)


def test_the_served_graph_pools_the_feature_map_once():
    """The class maps read the feature map's cells as they are: a pooling node per cell
    (a second GlobalAveragePool over N x h x w maps of 1 x 1) cost more than any other node
    of the int8 Lite0 graph on a 2-core CPU (0.39 of 3.9 ms at batch 1)."""
    import onnx

    model = build_model("efficientnet_lite0", n_classes=len(LABELS), image_size=64).eval()
    graph = onnx.load_from_string(onnx_bytes(model, 64)).graph
    assert [n.op_type for n in graph.node].count("GlobalAveragePool") == 1


def test_the_hottest_cell_follows_a_yellow_disc_from_left_to_right(small_model):
    model = _artifact(small_model)
    dandelion = LABELS.index("dandelion")
    hottest = {}
    for side, x in (("left", 35), ("right", 125)):
        batch = model.preprocess(images.yellow_disc_on_grass(x))[0][None]
        prediction, maps = model.run_with_maps(batch)
        cam = explain.Explanation.of(maps[0], dandelion)
        # The evidence is an exact split of the logit margin over the cells.
        margin = prediction.logits[0, dandelion] - prediction.logits[0].mean()
        assert cam.grid.mean() == pytest.approx(margin, abs=1e-4)
        hottest[side] = cam.hottest
    width = maps.shape[-1]
    assert hottest["left"][1] < width / 2 <= hottest["right"][1], hottest


def test_the_overlay_is_the_models_view_coloured_only_where_the_evidence_is(small_model):
    model = _artifact(small_model)
    picture = images.yellow_disc_on_grass(35)
    _, maps = model.run_with_maps(model.preprocess(picture)[0][None])
    cam = explain.Explanation.of(maps[0], LABELS.index("dandelion"))
    meta = model.meta
    view = imaging.model_view(picture, resize_size=meta.resize_size, image_size=meta.image_size)
    png = Image.open(io.BytesIO(cam.overlay_png(view)))
    assert png.format == "PNG" and png.size == view.size
    drawn, photo = np.asarray(png.convert("RGB"), int), np.asarray(view, int)
    heat = cam.heat(view.width)
    assert (drawn[heat == 0] == photo[heat == 0]).all()
    assert np.abs(drawn - photo).sum(axis=-1)[heat > 0.5].min() > 0


def test_a_model_exported_without_class_maps_says_it_cannot_explain():
    meta = {
        "labels": list(LABELS),
        "image_size": 64,
        "resize_size": 64,
        "mean": champion.IMAGENET_MEAN,
        "std": champion.IMAGENET_STD,
    }
    model = artifact.ServingArtifact.from_bytes(champion.tiny_cnn_onnx(), meta, threads=1)
    assert not model.has_class_maps
    with pytest.raises(artifact.ModelLoadError, match="retrain"):
        model.run_with_maps(np.zeros((1, 3, 64, 64), np.float32))
