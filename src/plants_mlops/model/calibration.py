"""Temperature scaling: one scalar ``T`` that divides the logits before the softmax.

Fitted on the validation split by minimising the negative log-likelihood, it changes the
probabilities but never the predicted label (argmax of ``z / T`` is argmax of ``z`` for any
``T > 0``). ``T > 1`` softens an over-confident model, ``T < 1`` sharpens an under-confident
one. The serving artifact stores it (``ServingMeta.temperature``) and the serving softmax
applies it, so the API returns calibrated probabilities.
"""

from __future__ import annotations

import numpy as np

from plants_mlops.model.artifact import softmax
from plants_mlops.model.metrics import expected_calibration_error

__all__ = ["calibrate", "fit_temperature", "nll", "softmax"]

# The search range of log T: T in [0.05, 20] covers every sane model.
_LOG_T_RANGE = (np.log(0.05), np.log(20.0))


def nll(logits: np.ndarray, y_true: np.ndarray, temperature: float = 1.0) -> float:
    """Mean negative log-likelihood of the true labels under ``softmax(logits / T)``."""
    z = np.asarray(logits, dtype=np.float64) / temperature
    z = z - z.max(axis=1, keepdims=True)
    log_p = z - np.log(np.exp(z).sum(axis=1, keepdims=True))
    y = np.asarray(y_true)
    return float(-log_p[np.arange(len(y)), y].mean())


def fit_temperature(logits: np.ndarray, y_true: np.ndarray) -> float:
    """The ``T`` minimising the NLL of ``y_true`` (golden-section search on log T; the NLL
    is convex in 1/T, so the search finds the optimum)."""
    logits = np.asarray(logits, dtype=np.float64)
    y = np.asarray(y_true)
    if logits.ndim != 2 or len(logits) != len(y) or len(y) == 0:
        raise ValueError("fit_temperature needs logits [N, C] and N labels, N > 0")
    lo, hi = _LOG_T_RANGE
    ratio = (np.sqrt(5.0) - 1.0) / 2.0
    a, b = hi - ratio * (hi - lo), lo + ratio * (hi - lo)
    fa, fb = nll(logits, y, np.exp(a)), nll(logits, y, np.exp(b))
    for _ in range(80):
        if fa < fb:
            hi, b, fb = b, a, fa
            a = hi - ratio * (hi - lo)
            fa = nll(logits, y, np.exp(a))
        else:
            lo, a, fa = a, b, fb
            b = lo + ratio * (hi - lo)
            fb = nll(logits, y, np.exp(b))
    return float(np.exp((lo + hi) / 2.0))


def calibrate(logits: np.ndarray, y_true: np.ndarray, *, min_gain: float = 0.0) -> dict:
    """Fit ``T`` on (validation) ``logits``/``y_true`` and keep it only when it lowers the
    NLL by more than ``min_gain``; else ``T = 1`` (scaling "does not help").

    Nor is it kept when every validation image is predicted right: the NLL then keeps
    falling as ``T -> 0`` (sharper is always "better" on a separated split), so the fit
    runs to the edge of the search range and says nothing about new images.

    Returns ``{temperature, fitted_temperature, applied, reason, nll_before, nll_after,
    ece_before, ece_after}`` measured on the same data.
    """
    fitted = fit_temperature(logits, y_true)
    before, after = nll(logits, y_true), nll(logits, y_true, fitted)
    lo, hi = np.exp(_LOG_T_RANGE[0]), np.exp(_LOG_T_RANGE[1])
    errors = int((np.asarray(logits).argmax(axis=1) != np.asarray(y_true)).sum())
    if errors == 0 or fitted <= lo * 1.01 or fitted >= hi * 0.99:
        applied, reason = (
            False,
            (
                f"fitted T {fitted:.3g} is at the edge of [{lo:.3g}, {hi:.3g}]: the validation "
                "split is separated (no errors to calibrate on)"
            ),
        )
    elif before - after > min_gain:
        applied, reason = True, f"validation NLL {before:.4f} -> {after:.4f}"
    else:
        applied, reason = False, f"NLL gain {before - after:.4f} <= min_nll_gain {min_gain}"
    temperature = fitted if applied else 1.0
    return {
        "temperature": temperature,
        "fitted_temperature": fitted,
        "applied": bool(applied),
        "reason": reason,
        "nll_before": before,
        "nll_after": nll(logits, y_true, temperature),
        "ece_before": expected_calibration_error(y_true, softmax(logits)),
        "ece_after": expected_calibration_error(y_true, softmax(logits, temperature)),
    }
