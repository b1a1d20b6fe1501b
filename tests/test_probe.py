"""The linear probe (``training.strategy: linear_probe``, model/probe.py): the backbone
frozen, a logistic regression on its embedding folded into the head."""

from __future__ import annotations

import logging

import numpy as np
import pytest
import torch
from support import model_data
from support.params import base_labels, deep_merge

from plants_mlops.contracts import ONNX_INPUT
from plants_mlops.model import artifact, probe
from plants_mlops.model.architectures import build_model
from plants_mlops.model.data import stratified_sample
from plants_mlops.model.export import load_checkpoint
from plants_mlops.model.train import seed_everything
from plants_mlops.pipelines.training.nodes import export_serving_model, train_model

LABELS = base_labels()  # the shipped task's (conf/base/task.yml)

PROBE = model_data.small_cnn_params(
    strategy="linear_probe",
    probe={"C_grid": [0.01, 0.1, 1.0], "folds": 3},
    seed=5,
)


@pytest.fixture(scope="module")
def data() -> model_data.ModelData:
    return model_data.build(per_label=40)


def test_the_head_gives_the_regressions_probabilities():
    rng = np.random.default_rng(0)
    y = np.repeat([0, 1], 30)
    emb = rng.normal(size=(60, 2, 128)) * rng.uniform(0.1, 5.0, size=128) + 3.0
    emb[:, :, :4] += y[:, None, None] * 2.0  # a few informative dimensions
    fitted = probe.fit(emb, y, grid=[0.01, 0.1, 1.0], folds=3, max_iter=1000, seed=0, n_classes=2)
    model = build_model("small_cnn", n_classes=len(LABELS), image_size=64, weights=None).eval()
    probe.load_into_head(model, fitted)

    test = rng.normal(size=(20, 128)) * 2.0 + 3.0
    with torch.no_grad():
        logits = model.head(torch.from_numpy(test).float()).double()
    proba = logits.softmax(dim=1)[:, 1].numpy()
    expected = 1.0 / (1.0 + np.exp(-fitted.decision(test)))
    np.testing.assert_allclose(proba, expected, atol=1e-5)

    from sklearn.linear_model import LogisticRegression
    from sklearn.preprocessing import StandardScaler

    rows = emb.reshape(-1, 128)
    scaler = StandardScaler().fit(rows)
    ref = LogisticRegression(C=fitted.C, max_iter=1000).fit(scaler.transform(rows), np.repeat(y, 2))
    np.testing.assert_allclose(proba, ref.predict_proba(scaler.transform(test))[:, 1], atol=1e-4)


def test_c_is_chosen_with_an_images_views_in_one_fold():
    """Labels are noise and each mirror row equals its image's row: folds that split an
    image's rows would reward memorising (the largest C, accuracy near 1); kept together,
    nothing generalises and the strongest regularisation has the lowest log-loss."""
    rng = np.random.default_rng(1)
    x = rng.normal(size=(80, 1, 64))
    emb = np.concatenate([x, x], axis=1)
    y = rng.permutation(np.repeat([0, 1], 40))
    fitted = probe.fit(emb, y, grid=[0.001, 0.1, 10.0], folds=4, max_iter=2000, seed=0, n_classes=2)
    assert max(row["cv_accuracy"] for row in fitted.grid) < 0.7
    assert fitted.C == 0.001 and fitted.folds == 4
    assert [row["C"] for row in fitted.grid] == [0.001, 0.1, 10.0]


def test_the_probe_needs_both_classes_and_a_grid():
    emb = np.zeros((10, 8))
    with pytest.raises(ValueError, match=r"every one of the 2 classes.*\[1\] have no image"):
        probe.fit(
            emb, np.zeros(10, dtype=int), grid=[1.0], folds=2, max_iter=10, seed=0, n_classes=2
        )
    with pytest.raises(ValueError, match="C_grid is empty"):
        probe.fit(emb, np.repeat([0, 1], 5), grid=[], folds=2, max_iter=10, seed=0, n_classes=2)


def test_probe_training_keeps_the_backbone_and_fits_the_head(data):
    ckpt, hist = train_model(data.dataset_index, data.fmt_images, PROBE, data.dataset_fingerprint)
    model, cfg, meta = load_checkpoint(ckpt)
    assert cfg["strategy"] == "linear_probe" and cfg["probe"]["C_grid"] == [0.01, 0.1, 1.0]

    # the backbone is the initial one, untouched (eval mode: BatchNorm statistics too)
    seed_everything(PROBE["seed"], torch.device("cpu"))
    initial = build_model(
        "small_cnn",
        n_classes=len(LABELS),
        image_size=64,
        weights=None,
        dropout=PROBE["dropout"],
        bn_momentum=PROBE["bn_momentum"],
    ).state_dict()
    trained = model.state_dict()
    backbone = [k for k in trained if k.startswith("backbone.")]
    assert backbone and all(torch.equal(trained[k], initial[k]) for k in backbone)
    assert not torch.equal(trained["head.weight"], initial["head.weight"])

    # its "epochs" are the C grid; the chosen one is recorded
    assert [row["C"] for row in hist["epochs"]] == [0.01, 0.1, 1.0]
    assert hist["epochs_run"] == 3 and 1 <= hist["best_epoch"] <= 3
    assert hist["probe_C"] == hist["epochs"][hist["best_epoch"] - 1]["C"]
    assert {"cv_log_loss", "cv_accuracy", "epoch_seconds"} <= set(hist["epochs"][0])
    assert hist["val_metrics"]["f1_macro"] >= 0.7  # colour alone separates these samples
    assert hist["calibration"]["temperature"] > 0

    # the same seed and data give the same model; the export serves the head's answers
    again, _ = train_model(data.dataset_index, data.fmt_images, PROBE, data.dataset_fingerprint)
    other = load_checkpoint(again)[0].state_dict()
    assert all(torch.equal(trained[k], other[k]) for k in trained)
    session = artifact.open_session(export_serving_model(ckpt, PROBE))
    x = torch.randn(3, 3, 64, 64)
    with torch.no_grad():
        logits, _ = model(x)
    np.testing.assert_allclose(
        session.run(None, {ONNX_INPUT: x.numpy()})[0], logits.numpy(), rtol=1e-3, atol=1e-4
    )


def test_the_probe_fits_on_a_stratified_sample_above_its_cap(data, caplog):
    params = deep_merge(PROBE, {"probe": {"max_train_images": 20}})
    with caplog.at_level(logging.INFO, logger="plants_mlops.model.train"):
        _, hist = train_model(data.dataset_index, data.fmt_images, params, data.dataset_fingerprint)
    assert any("a stratified 20 of the" in r.getMessage() for r in caplog.records)
    assert hist["val_metrics"]["f1_macro"] > 0


def test_stratified_sample_keeps_class_shares_order_and_seed():
    from plants_mlops.model.data import SplitImages

    labels = np.array([0] * 30 + [1] * 10)
    split = SplitImages(list(range(40)), labels, [f"k{i}" for i in range(40)])
    a = stratified_sample(split, 20, seed=3)
    assert len(a) == 20 and int((a.labels == 1).sum()) == 5
    picked = [a.images[i] for i in range(len(a))]
    assert picked == sorted(picked) and a.keys == [f"k{i}" for i in picked]
    assert a.images[2:4] == picked[2:4]
    assert stratified_sample(split, 20, seed=3).keys == a.keys
    assert stratified_sample(split, 20, seed=4).keys != a.keys
    assert stratified_sample(split, 50, seed=3) is split


def test_the_shipped_probe_trains_on_turned_rows_only_for_a_task_that_lists_the_turns(data, caplog):
    """``probe.turns`` (on in conf/base): every training image's three quarter turns join
    the image and its mirror as rows when the task lists the turns (the shipped lawn task),
    and none join for a task that leaves them out (a 6 turned is a 9). The OOD detector's
    reference holds the same views: a turned photo of the task is no stranger."""
    from support.params import task_params

    from plants_mlops.pipelines.training.nodes import attach_ood_detector

    def rows(task) -> tuple[int, dict]:
        caplog.clear()
        with caplog.at_level(logging.INFO, logger="plants_mlops.model.train"):
            ckpt, hist = train_model(
                data.dataset_index, data.fmt_images, PROBE, data.dataset_fingerprint, task
            )
        line = next(r.message for r in caplog.records if "linear probe: " in r.message)
        return int(line.split("linear probe: ")[1].split()[0]) // hist["split_sizes"]["train"], (
            ckpt,
            hist,
        )

    shipped, (ckpt, hist) = rows(task_params())
    assert shipped == 5  # image, mirror, 90, 180 and 270 degrees
    upright_only = task_params(label_preserving_edits=["mirror", "blur", "rotate180"])
    assert rows(upright_only)[0] == 2
    _, ood = attach_ood_detector(
        export_serving_model(ckpt, PROBE), hist, data.dataset_index, data.fmt_images, PROBE
    )
    assert ood["reference_rows"] == min(5 * hist["split_sizes"]["train"], 1000)
    assert ood["val_flag_rate"] <= 0.05 and ood["train_flag_rate"] <= 0.05


def test_extra_views_are_more_rows_per_image_and_unknown_edits_are_refused(data, caplog):
    """``probe.extra_views``: each training image's turned copy joins its mirror as a row
    (the behaviour step's edits), so the fit sees three views per image."""
    turned = deep_merge(PROBE, {"probe": {"extra_views": ["rotate90"], "turns": False}})
    with caplog.at_level(logging.INFO, logger="plants_mlops.model.train"):
        _, hist = train_model(data.dataset_index, data.fmt_images, turned, data.dataset_fingerprint)
    n_train = hist["split_sizes"]["train"]
    assert any(f"linear probe: {3 * n_train} embeddings" in r.message for r in caplog.records)
    bad = deep_merge(PROBE, {"probe": {"extra_views": ["sideways"]}})
    with pytest.raises(ValueError, match="unknown edit 'sideways'"):
        train_model(data.dataset_index, data.fmt_images, bad, data.dataset_fingerprint)


def test_cpu_embeddings_come_from_onnx_runtime_and_equal_torchs(monkeypatch):
    """On CPU the frozen backbone runs in ONNX Runtime (4x torch's images a second for
    Lite0 on 2 cores, benchmarks/bench_training.py), exported once for every batch and the
    mirror."""
    from plants_mlops.model import export

    exports = []
    real_export = export.backbone_onnx_bytes
    monkeypatch.setattr(
        export, "backbone_onnx_bytes", lambda *a, **k: exports.append(a) or real_export(*a, **k)
    )
    torch.manual_seed(0)
    model = build_model("efficientnet_lite0", n_classes=2, image_size=64, weights="imagenet")
    model = model.to(memory_format=torch.channels_last).eval()  # as training leaves it
    x = torch.randn(20, 3, 64, 64)
    cpu = torch.device("cpu")
    with probe.frozen_backbone(model, cpu, 64) as backbone:
        emb = probe.embed(backbone, x, cpu, hflip=True, batch_size=8, progress=False)
    with torch.no_grad():
        expected = torch.stack([model.backbone(x), model.backbone(torch.flip(x, dims=[3]))], 1)
    np.testing.assert_allclose(emb, expected.numpy(), rtol=1e-4, atol=1e-4)
    assert len(exports) == 1
