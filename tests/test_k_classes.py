"""K-class functions (K > 2): the probe folded into the head, the metrics and curves, the
colour-histogram baseline, the predicted-label drift test and the per-class split rule."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image
from sklearn import metrics as skm

from plants_mlops.model import probe
from plants_mlops.model.architectures import build_model
from plants_mlops.model.metrics import classification_metrics, confusion_matrix_png, curves_png
from plants_mlops.pipelines.evaluation.nodes import (
    class_probabilities,
    colour_histogram,
)
from plants_mlops.pipelines.monitoring.nodes import label_drift
from plants_mlops.pipelines.validation.nodes import per_class_split_rule

LABELS4 = ("ant", "bee", "cat", "dog")


def _blobs(n_per_class: int, k: int, dim: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    y = np.repeat(np.arange(k), n_per_class)
    centres = rng.normal(0.0, 3.0, size=(k, dim))
    return centres[y] + rng.normal(size=(len(y), dim)), y


def test_a_k_class_probe_is_multinomial_and_the_head_gives_its_probabilities():
    emb, y = _blobs(15, 4, 128, seed=0)  # 128: small_cnn's embedding size
    views = np.stack([emb, emb + 0.01], axis=1)  # [N, 2, D]: an image and its mirror
    fitted = probe.fit(
        views, y, grid=[0.1, 1.0], folds=3, max_iter=2000, seed=0, n_classes=len(LABELS4)
    )
    assert fitted.coef.shape == (4, 128) and fitted.intercept.shape == (4,)
    model = build_model("small_cnn", n_classes=4, image_size=64, weights=None).eval()
    probe.load_into_head(model, fitted)

    test, _ = _blobs(5, 4, 128, seed=1)
    with torch.no_grad():
        proba = model.head(torch.from_numpy(test).float()).double().softmax(dim=1).numpy()
    from sklearn.linear_model import LogisticRegression
    from sklearn.preprocessing import StandardScaler

    rows = views.reshape(-1, 128)
    scaler = StandardScaler().fit(rows)
    ref = LogisticRegression(C=fitted.C, max_iter=2000).fit(scaler.transform(rows), np.repeat(y, 2))
    np.testing.assert_allclose(proba, ref.predict_proba(scaler.transform(test)), atol=1e-4)
    assert fitted.grid and all(0.0 <= r["cv_accuracy"] <= 1.0 for r in fitted.grid)


def test_the_probe_refuses_a_head_of_another_size_and_a_class_without_images():
    emb, y = _blobs(6, 3, 8, seed=2)
    fitted = probe.fit(emb, y, grid=[1.0], folds=2, max_iter=500, seed=0, n_classes=3)
    with pytest.raises(ValueError, match="3 classes, the model's head 2 outputs"):
        probe.load_into_head(build_model("small_cnn", n_classes=2, image_size=64), fitted)
    with pytest.raises(ValueError, match=r"every one of the 4 classes.*\[3\] have no image"):
        probe.fit(emb, y, grid=[1.0], folds=2, max_iter=500, seed=0, n_classes=4)


def test_k_class_metrics_are_one_vs_rest_with_a_k_by_k_confusion_matrix():
    y = np.array([0, 0, 1, 1, 2, 2, 3, 3])
    proba = np.array(
        [
            [0.7, 0.1, 0.1, 0.1],
            [0.2, 0.5, 0.2, 0.1],  # a 0 taken for a 1
            [0.1, 0.8, 0.05, 0.05],
            [0.1, 0.6, 0.2, 0.1],
            [0.1, 0.1, 0.7, 0.1],
            [0.3, 0.1, 0.4, 0.2],
            [0.1, 0.1, 0.1, 0.7],
            [0.1, 0.2, 0.1, 0.6],
        ]
    )
    m = classification_metrics(y, proba, LABELS4)
    assert np.array(m["confusion_matrix"]).shape == (4, 4)
    assert m["confusion_matrix"][0] == [1, 1, 0, 0]
    assert m["accuracy"] == pytest.approx(7 / 8)
    assert m["recall_ant"] == pytest.approx(0.5) and m["precision_bee"] == pytest.approx(2 / 3)
    for k, label in enumerate(LABELS4):
        assert m[f"roc_auc_{label}"] == pytest.approx(skm.roc_auc_score(y == k, proba[:, k]))
    expected = skm.roc_auc_score(y, proba, multi_class="ovr", average="macro")
    assert m["roc_auc"] == pytest.approx(expected)
    # a class the split lacks is left out of the macro AUC, not an error
    some = classification_metrics(y[:6], proba[:6], LABELS4)
    assert "roc_auc_dog" not in some
    assert some["roc_auc"] == pytest.approx(
        np.mean([skm.roc_auc_score(y[:6] == k, proba[:6, k]) for k in range(3)])
    )
    with pytest.raises(ValueError, match="for 3 labels"):
        classification_metrics(y, proba, LABELS4[:3])


def test_k_class_figures_draw_every_class():
    y = np.repeat(np.arange(4), 5)
    proba = np.eye(4)[y] * 0.6 + 0.1
    curves = curves_png(y, proba, LABELS4)
    assert set(curves) == {"roc_curve.png", "pr_curve.png"}
    matrix = classification_metrics(y, proba, LABELS4)["confusion_matrix"]
    for png in (*curves.values(), confusion_matrix_png(matrix, LABELS4)):
        assert png.startswith(b"\x89PNG")
    assert curves_png(np.zeros(4, dtype=int), proba[:4], LABELS4) == {}


def test_the_colour_histogram_baseline_separates_k_colours_and_keeps_k_columns():
    from sklearn.linear_model import LogisticRegression

    colours = [(220, 30, 30), (30, 200, 30), (30, 30, 220), (230, 220, 40)]
    rng = np.random.default_rng(0)

    def images(k: int, n: int) -> list[Image.Image]:
        out = []
        for _ in range(n):
            base = np.array(colours[k], dtype=np.int16) + rng.integers(-20, 20, size=(16, 16, 3))
            out.append(Image.fromarray(np.clip(base, 0, 255).astype(np.uint8)))
        return out

    train_y = np.repeat([0, 1, 2], 6)  # class 3 absent from the training split
    train = [img for k in range(3) for img in images(k, 6)]
    test_y = np.arange(4)
    test = [images(k, 1)[0] for k in range(4)]
    clf = LogisticRegression(max_iter=500).fit(colour_histogram(train, 4), train_y)
    proba = class_probabilities(clf, colour_histogram(test, 4), 4)
    assert proba.shape == (4, 4) and (proba[:, 3] == 0).all()
    np.testing.assert_allclose(proba.sum(axis=1), 1.0)
    assert list(proba[:3].argmax(axis=1)) == [0, 1, 2]
    assert classification_metrics(test_y, proba, LABELS4)["recall_dog"] == 0.0


def test_predicted_label_drift_is_a_chi_square_over_every_label():
    from scipy.stats import chi2_contingency

    ref = pd.Series(["ant"] * 50 + ["bee"] * 50 + ["cat"] * 50 + ["dog"] * 50)
    same = pd.Series(["ant"] * 12 + ["bee"] * 13 + ["cat"] * 12 + ["dog"] * 13)
    moved = pd.Series(["ant"] * 5 + ["bee"] * 5 + ["cat"] * 40)  # no dog predicted at all
    assert not label_drift(same, ref)["drift"]
    out = label_drift(moved, ref)
    table = np.array([[5, 5, 40, 0], [50, 50, 50, 50]])
    assert out["method"] == "chisquare" and out["drift"]
    assert out["score"] == pytest.approx(chi2_contingency(table, correction=False).pvalue)
    assert out["current_shares"]["dog"] == 0.0 and out["reference_shares"]["dog"] == 0.25
    # two labels: the two-proportion z-test (chi2 = z^2)
    a = pd.Series(["x"] * 30 + ["y"] * 20)
    b = pd.Series(["x"] * 20 + ["y"] * 30)
    p1, p2, pooled = 30 / 50, 20 / 50, 50 / 100
    z = (p1 - p2) / np.sqrt(pooled * (1 - pooled) * (2 / 50))
    from scipy.stats import norm

    assert label_drift(a, b)["score"] == pytest.approx(2 * norm.sf(abs(z)))
    assert label_drift(pd.Series(["x"] * 5), pd.Series(["x"] * 9))["score"] == 1.0


def test_each_class_must_sit_in_every_split_near_its_expected_share():
    split = {"train": 0.7, "val": 0.15, "test": 0.15}
    rows = []
    for lab in LABELS4:
        for i in range(100):
            rows.append({"label": lab, "split": "train" if i < 70 else "val" if i < 85 else "test"})
    good = pd.DataFrame(rows)
    assert per_class_split_rule(good, split, 0.07, LABELS4)["passed"]
    # the overall shares stay right while one class's test images move to val and another's
    # val images to test (what near-duplicate joining did to one class of the digits)
    skewed = good.copy()
    ant_test = (skewed["label"] == "ant") & (skewed["split"] == "test")
    bee_val = (skewed["label"] == "bee") & (skewed["split"] == "val")
    skewed.loc[ant_test, "split"] = "val"
    skewed.loc[bee_val, "split"] = "test"
    shares = skewed["split"].value_counts(normalize=True)
    assert all(abs(shares[s] - split[s]) <= 0.07 for s in split)  # overall: fine
    rule = per_class_split_rule(skewed, split, 0.07, LABELS4)
    assert not rule["passed"] and rule["n_failing"] == 4
    assert any(r.startswith("ant/test: 0.000") for r in rule["failing_rows"])
    # a small class gets the binomial allowance: 2 of 10 in test is chance, not a fault
    small = pd.DataFrame(
        {"label": ["ant"] * 10, "split": ["train"] * 7 + ["val"] * 1 + ["test"] * 2}
    )
    assert per_class_split_rule(small, split, 0.07, ("ant",))["passed"]


def test_temperature_scaling_fits_k_class_logits():
    from plants_mlops.model.calibration import calibrate, nll

    rng = np.random.default_rng(3)
    y = rng.integers(0, 4, 400)
    logits = rng.normal(0.0, 1.0, (400, 4))
    logits[np.arange(400), y] += 1.5
    logits[rng.random(400) < 0.3] = rng.normal(0.0, 1.0, (1, 4))  # some confusions
    overconfident = logits * 4.0
    out = calibrate(overconfident, y)
    assert out["applied"] and out["temperature"] > 2.0
    assert nll(overconfident, y, out["temperature"]) < nll(overconfident, y)
    assert out["ece_after"] < out["ece_before"]
