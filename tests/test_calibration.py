"""Calibration: expected calibration error, temperature scaling fitted on validation, and
the serving artifact applying the stored temperature (so the API's probabilities are the
calibrated ones). Real ONNX graphs through ONNX Runtime; hand-computed expectations."""

from __future__ import annotations

import numpy as np
import pytest
from support import model_data
from support.champion import build_tiny_cnn, export_onnx, serving_meta

from plants_mlops.model import artifact
from plants_mlops.model.calibration import calibrate, fit_temperature, nll
from plants_mlops.model.metrics import expected_calibration_error
from plants_mlops.pipelines.evaluation.nodes import evaluate_candidate
from plants_mlops.pipelines.training.nodes import log_training_run, train_model


def test_ece_matches_a_hand_computed_example():
    # Equal-width bins of the top-class confidence: 0.9, 0.9, 0.8 and 0.6.
    proba = np.array([[0.9, 0.1], [0.1, 0.9], [0.8, 0.2], [0.4, 0.6]])
    y = np.array([0, 0, 0, 1])  # the second is wrong (predicted 1, true 0)
    # bin (0.8,0.9]: conf 0.9, 0.9, acc 1/2 -> |0.5 - 0.9| * 2/4 = 0.2
    # bin (0.7,0.8]: conf 0.8, acc 1      -> |1 - 0.8| * 1/4 = 0.05
    # bin (0.5,0.6]: conf 0.6, acc 1      -> |1 - 0.6| * 1/4 = 0.1
    assert expected_calibration_error(y, proba, n_bins=10) == pytest.approx(0.35)
    perfect = np.array([[1.0, 0.0], [0.0, 1.0]])
    assert expected_calibration_error(np.array([0, 1]), perfect) == 0.0
    with pytest.raises(ValueError, match="at least one"):
        expected_calibration_error(np.array([]), np.zeros((0, 2)))


def _overconfident(seed: int = 0, n: int = 400, scale: float = 6.0):
    """Logits of a model right 80 % of the time but ~99 % sure: T > 1 should soften it."""
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 2, n)
    right = rng.random(n) < 0.8
    predicted = np.where(right, y, 1 - y)
    logits = np.zeros((n, 2))
    logits[np.arange(n), predicted] = scale + rng.normal(0, 0.5, n)
    return logits, y


def test_temperature_scaling_softens_an_overconfident_model_without_changing_labels():
    logits, y = _overconfident()
    t = fit_temperature(logits, y)
    assert t > 2.0
    # The fitted T is the NLL minimum: both neighbours are worse.
    assert nll(logits, y, t) < min(nll(logits, y, t * 0.9), nll(logits, y, t * 1.1))
    out = calibrate(logits, y)
    assert out["applied"] and out["temperature"] == pytest.approx(t)
    assert out["nll_after"] < out["nll_before"]
    assert out["ece_after"] < out["ece_before"] / 2
    calibrated = artifact.softmax(logits, out["temperature"])
    assert (calibrated.argmax(1) == artifact.softmax(logits).argmax(1)).all()


def test_a_temperature_that_does_not_help_enough_is_not_applied():
    logits, y = _overconfident()
    out = calibrate(logits, y, min_gain=10.0)  # no NLL gain of 10 nats exists
    assert not out["applied"] and out["temperature"] == 1.0
    assert out["fitted_temperature"] > 2.0
    assert out["nll_after"] == pytest.approx(out["nll_before"])
    with pytest.raises(ValueError, match="logits"):
        fit_temperature(np.zeros((3, 2)), np.zeros(2, dtype=int))


@pytest.fixture(scope="module")
def tiny_onnx(tmp_path_factory) -> bytes:
    path = tmp_path_factory.mktemp("onnx") / "model.onnx"
    export_onnx(build_tiny_cnn(seed=1), path, 64)
    return path.read_bytes()


def test_the_serving_artifact_applies_the_stored_temperature(tiny_onnx):
    meta = serving_meta(64, None, 160)
    assert "temperature" not in meta  # an artifact from before calibration
    plain = artifact.ServingArtifact.from_bytes(tiny_onnx, meta)
    assert plain.meta.temperature == 1.0
    scaled = artifact.ServingArtifact.from_bytes(tiny_onnx, {**meta, "temperature": 2.5})
    x = np.random.default_rng(0).normal(size=(4, 3, 64, 64)).astype(np.float32)
    a, b = plain.run(x), scaled.run(x)
    np.testing.assert_array_equal(a.logits, b.logits)
    np.testing.assert_allclose(a.probabilities, artifact.softmax(a.logits))
    np.testing.assert_allclose(b.probabilities, artifact.softmax(a.logits / 2.5))
    np.testing.assert_allclose(b.probabilities.sum(1), 1.0)
    assert (b.probabilities.argmax(1) == a.probabilities.argmax(1)).all()
    for bad in (0, -1.0, "hot"):
        with pytest.raises(artifact.ModelLoadError, match="temperature"):
            artifact.ServingArtifact.from_bytes(tiny_onnx, {**meta, "temperature": bad})


def test_training_fits_the_temperature_on_val_and_evaluation_reports_ece(small_data):
    params = model_data.small_cnn_params(epochs=2, seed=3)
    ckpt, history = train_model(
        small_data.dataset_index, small_data.fmt_images, params, small_data.dataset_fingerprint
    )
    cal = history["calibration"]
    assert cal["temperature"] == (cal["fitted_temperature"] if cal["applied"] else 1.0)
    assert cal["nll_after"] <= cal["nll_before"]
    from plants_mlops.pipelines.training.nodes import export_serving_model

    onnx = export_serving_model(ckpt, params)
    meta, report, _ = log_training_run(
        ckpt,
        onnx,
        history,
        small_data.dataset_index,
        small_data.fmt_images,
        small_data.dataset_fingerprint,
        params,
    )
    assert meta["temperature"] == cal["temperature"]
    assert report["calibration"]["temperature"] == cal["temperature"]
    subset = {"max_images_per_split": None, "seed": 0}
    m = evaluate_candidate(onnx, meta, small_data.dataset_index, small_data.fmt_images, subset)
    assert m["temperature"] == cal["temperature"]
    assert 0.0 <= m["ece"] <= 1.0 and 0.0 <= m["ece_uncalibrated"] <= 1.0
    if cal["temperature"] == 1.0:
        assert m["ece"] == m["ece_uncalibrated"]

    disabled = model_data.small_cnn_params(
        epochs=2, seed=3, calibration={"enabled": False, "min_nll_gain": 0.0}
    )
    _, history_off = train_model(
        small_data.dataset_index, small_data.fmt_images, disabled, small_data.dataset_fingerprint
    )
    assert history_off["calibration"] == {"temperature": 1.0, "applied": False}


def test_a_separated_validation_split_gives_no_temperature():
    # Every image right and confident: the NLL falls forever as T -> 0; nothing to fit.
    logits = np.array([[4.0, -4.0], [-3.0, 3.0], [5.0, 0.0], [0.0, 2.0]])
    y = np.array([0, 1, 0, 1])
    out = calibrate(logits, y)
    assert out["fitted_temperature"] < 0.06
    assert not out["applied"] and out["temperature"] == 1.0
    assert "separated" in out["reason"]
