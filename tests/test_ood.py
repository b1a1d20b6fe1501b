"""OOD detection (model/ood.py): the detector inside the serving graph scores exactly as
its numpy twin, the threshold keeps the validation flag rate within its limit, and the
serving artifact turns the score into ``out_of_distribution``."""

from __future__ import annotations

import numpy as np
import pytest

from plants_mlops.model import ood
from plants_mlops.model.artifact import ModelLoadError, ServingArtifact


def _embeddings(seed: int, n: int, d: int, shift: float = 0.0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return (rng.normal(size=(n, d)) + shift).astype(np.float32)


@pytest.mark.parametrize("method", ["knn", "mahalanobis"])
def test_the_graph_output_scores_as_the_detector_does_and_flags_far_images(method):
    from support.champion import serving_meta, tiny_cnn_onnx

    base = tiny_cnn_onnx(seed=1, image_size=32)
    plain = ServingArtifact.from_bytes(base, serving_meta(32, None, 32), threads=1)
    rng = np.random.default_rng(0)
    # in distribution: smooth images near mid-grey; out: saturated noise
    inside = (rng.normal(0, 0.3, (40, 3, 32, 32))).astype(np.float32)
    outside = (rng.normal(0, 3.0, (10, 3, 32, 32))).astype(np.float32)
    emb_in = plain.run(inside).embeddings
    labels = np.arange(40) % 3  # three classes: nothing assumes two
    detector = ood.fit(
        np.stack([emb_in[:30], emb_in[:30] * 1.01], axis=1),
        labels[:30],
        method=method,
        rank=8,
        k=3,
        max_reference=1000,
    )
    threshold = ood.threshold_for(detector.score(emb_in[30:]), 0.1)
    meta = serving_meta(32, None, 32)
    meta["ood"] = ood.summary(detector, threshold, detector.score(emb_in[30:]), 0.1).model_dump()
    served = ServingArtifact.from_bytes(ood.attach(base, detector), meta, threads=1)

    batch = np.concatenate([inside[30:], outside])
    out = served.run(batch)
    np.testing.assert_allclose(out.ood_scores, detector.score(out.embeddings), rtol=2e-3, atol=1e-4)
    assert out.out_of_distribution[:10].mean() <= 0.1  # the validation images
    assert out.out_of_distribution[10:].all()  # noise far from every training image
    # a meta that promises a detector the graph does not have is refused at load
    with pytest.raises(ModelLoadError, match="ood_score"):
        ServingArtifact.from_bytes(base, meta, threads=1)


def test_knn_counts_training_images_not_the_views_stored_with_them():
    # One training photo stored with four views (its mirror and turns) is one neighbour: an
    # image close to that photo alone is still far from the training data at k=2.
    rng = np.random.default_rng(3)
    photos = rng.normal(size=(12, 1, 64))
    views = photos + 0.01 * rng.normal(size=(12, 4, 64))  # [images, views, D]
    labels = np.arange(12) % 2
    detector = ood.fit(views, labels, method="knn", rank=8, k=2, max_reference=1000)
    near_one = photos[0] + 0.01 * rng.normal(size=(1, 64))
    near_two = (photos[0] + photos[1]) / 2
    score_one, score_two = detector.score(near_one)[0], detector.score(near_two)[0]
    assert score_one > 0.5  # the 2nd nearest image is an unrelated photo
    assert score_two < score_one
    assert ood.summary(detector, 0.5, np.zeros(3), 0.05).views == 4
    # over the cap, whole images are kept with all their views
    capped = ood.fit(views, labels, method="knn", rank=8, k=2, max_reference=10)
    assert capped.reference.shape == (8, 64)
    for rows in capped.reference.reshape(2, 4, 64):
        assert (rows @ rows.T).min() > 0.99  # the four rows are views of one photo


def test_knn_k_is_at_most_half_the_smallest_classs_training_images():
    # A photo of a class of ten images has its 30th nearest image in the other classes:
    # its score would measure those, and a small task's own test photos get flagged.
    views = np.random.default_rng(4).normal(size=(12, 2, 16))
    three = np.array([0, 1, 2] * 3 + [0, 0, 0])  # 6, 3 and 3 images
    assert ood.fit(views, three, method="knn", rank=8, k=30, max_reference=1000).k == 1
    two = np.array([0] * 7 + [1] * 5)
    assert ood.fit(views, two, method="knn", rank=8, k=30, max_reference=1000).k == 2
    assert ood.fit(views, two, method="knn", rank=8, k=1, max_reference=1000).k == 1


def test_threshold_flags_at_most_the_allowed_share():
    scores = np.arange(100, dtype=float)
    t = ood.threshold_for(scores, 0.05)
    assert ood.flag_rate(scores, t) == 0.05
    assert ood.flag_rate(scores, ood.threshold_for(scores, 0.0)) == 0.0
    assert ood.auroc(scores[:50], scores[50:]) == 1.0


def test_held_out_scores_leave_each_training_image_and_its_views_out_of_the_reference():
    rng = np.random.default_rng(5)
    views = rng.normal(size=(14, 1, 32)) + 0.05 * rng.normal(size=(14, 3, 32))
    labels = np.arange(14) % 2
    detector = ood.fit(views, labels, method="knn", rank=8, k=3, max_reference=1000)
    held_out = detector.held_out_scores(views)
    for i in (0, 5, 13):
        rest = np.delete(np.arange(14), i)
        alone = ood.fit(views[rest], labels[rest], method="knn", rank=8, k=3, max_reference=1000)
        assert held_out[i] == pytest.approx(alone.score(views[i, :1])[0], abs=1e-6)
    # in the reference, an image is its own nearest neighbour: its plain score is lower
    assert (detector.score(views[:, 0]) < held_out).all()
    # an image the capped reference left out is scored against all of it, as an upload is
    capped = ood.fit(views, labels, method="knn", rank=8, k=2, max_reference=24)  # 8 images
    outside = np.setdiff1d(np.arange(14), capped.reference_images)
    np.testing.assert_allclose(
        capped.held_out_scores(views)[outside], capped.score(views[outside, 0]), atol=1e-6
    )
    # mahalanobis: fitted on these very images, their scores are not those of unseen photos
    maha = ood.fit(views, labels, method="mahalanobis", rank=4, k=3, max_reference=1000)
    assert maha.held_out_scores(views) is None
    assert ood.summary(maha, 1.0, np.zeros(3), 0.05).train_flag_rate is None


def test_the_threshold_flags_at_most_the_share_of_validation_and_of_held_out_training():
    val = np.arange(20, dtype=float)  # one of 20 may be flagged: threshold 18.5
    held_out = np.arange(80, dtype=float) / 4 + 0.1  # 0.1 .. 19.85: four may be: 18.975
    t = ood.threshold_for(val, 0.05, held_out)
    assert t == pytest.approx(18.975) and t > ood.threshold_for(val, 0.05) == 18.5
    assert ood.flag_rate(val, t) <= 0.05 and ood.flag_rate(held_out, t) <= 0.05
    assert not np.isclose(np.concatenate([val, held_out]), t).any()  # nobody sits on it
    low = held_out - 10  # the validation split's threshold is the higher: it stays
    assert ood.threshold_for(val, 0.05, low) == ood.threshold_for(val, 0.05)
    assert ood.threshold_for(val, 0.05, np.array([])) == ood.threshold_for(val, 0.05)
    detector = ood.fit(
        np.random.default_rng(0).normal(size=(8, 4)), np.arange(8) % 2, method="knn",
        rank=2, k=1, max_reference=100,
    )  # fmt: skip
    record = ood.summary(detector, t, val, 0.05, held_out)
    assert record.train_flag_rate == ood.flag_rate(held_out, t) <= 0.05


def test_a_small_validation_split_no_longer_decides_how_many_unseen_photos_are_flagged():
    # Three classes of 20 training images (each with a second view) and 7 validation
    # images: 5 % of 7 flags none, so the validation split alone puts the threshold on
    # its highest score, and unseen photos of the task are flagged at 11 % on average, in
    # one draw of five at 20 % or more. With the 60 training images' held-out scores as
    # well, unseen photos are flagged at 4 % on average.
    rng = np.random.default_rng(11)
    d, centers = 24, np.random.default_rng(0).normal(0, 0.6, size=(3, 24))
    old, new, loo = [], [], []
    for _ in range(60):

        def draw(n):
            labels = np.arange(n) % 3
            return centers[labels] + rng.normal(size=(n, d)), labels

        (train, labels), (val, _), (fresh, _) = draw(60), draw(7), draw(600)
        views = np.stack([train, train + 0.1 * rng.normal(size=train.shape)], axis=1)
        detector = ood.fit(views, labels, method="knn", rank=8, k=30, max_reference=1000)
        val_scores, held_out = detector.score(val), detector.held_out_scores(views)
        fresh_scores = detector.score(fresh)
        t_old = ood.threshold_for(val_scores, 0.05)
        t_new = ood.threshold_for(val_scores, 0.05, held_out)
        assert ood.flag_rate(val_scores, t_new) <= 0.05
        old.append(ood.flag_rate(fresh_scores, t_old))
        new.append(ood.flag_rate(fresh_scores, t_new))
        loo.append(ood.summary(detector, t_new, val_scores, 0.05, held_out).train_flag_rate)
    old, new = np.array(old), np.array(new)
    assert old.mean() > 0.09 and (old >= 0.2).mean() > 0.1  # the validation split alone
    assert new.mean() <= 0.06 and (new >= 0.2).mean() == 0.0
    assert max(loo) <= 0.05


def test_a_rise_of_the_out_of_distribution_share_counts_toward_the_drift_verdict():
    import pandas as pd
    from support.params import stage_params

    from plants_mlops.pipelines.monitoring.nodes import OOD_COLUMN, decide_drift, ood_shares

    reference = pd.DataFrame({OOD_COLUMN: [True] + [False] * 19})  # 5 %, as the threshold
    calm = ood_shares(pd.DataFrame({OOD_COLUMN: [True] * 2 + [False] * 18}), reference)
    risen = ood_shares(pd.DataFrame({OOD_COLUMN: [True] * 8 + [False] * 12}), reference)
    assert ood_shares(pd.DataFrame({"label": ["grass"]}), reference) is None  # no detector
    quiet = {
        "n_current": 20,
        "n_reference": 20,
        "data_drift": {"share_drifted": 0.0, "drift": False, "columns": {}},
        "embeddings": {"method": "model", "score": 0.5, "drift": False},
        "prediction_drift": {},
    }
    params = stage_params("monitoring")
    assert decide_drift({**quiet, "ood": calm}, params)["status"] == "no_drift"
    verdict = decide_drift({**quiet, "ood": risen}, params)
    assert verdict["status"] == "drift" and verdict["ood"]["current_share"] == 0.4
    assert verdict["reasons"] == [
        "out-of-distribution share rose to 0.40 (reference 0.05, allowed rise 0.10)"
    ]
    from plants_mlops.pipelines.monitoring.metrics import verdict_metrics

    gauge = verdict_metrics({**verdict, "at": "2026-12-07T00:00:00+00:00"})
    assert gauge["plants_monitoring_ood_share"]["samples"] == [
        {"labels": {"window": "current"}, "value": 0.4},
        {"labels": {"window": "reference"}, "value": 0.05},
    ]


def test_the_behaviour_step_says_how_often_edited_task_photos_are_flagged(small_data):
    """Test photos under the task's label-preserving edits are still photos of the task:
    the behaviour report gives, per edit, the share of them the detector flags, and the
    model card shows it (the default recipe's detector, whose reference holds the turned
    rows the probe fits)."""
    from support.ood_champion import trained_with_ood
    from support.params import stage_params, task_params

    from plants_mlops.model import card
    from plants_mlops.pipelines.behaviour.nodes import measure_behaviour

    onnx, meta = trained_with_ood(small_data)
    figures = measure_behaviour(
        onnx,
        meta,
        small_data.dataset_index,
        small_data.fmt_images,
        stage_params("behaviour", mlflow={"log_to_run": False}),
        task_params(),
    )
    flags = figures["ood"]["edited_false_flags"]
    assert list(flags) == task_params()["label_preserving_edits"]
    assert all(0.0 <= share <= 1.0 for share in flags.values())
    rows = dict(card._ood_section(meta["ood"], figures).tables[0][1])
    shown = rows["test images flagged under the task's label-preserving edits"]
    assert shown.startswith("mirror ") and f"rotate90 {flags['rotate90']:.3f}" in shown
