"""Calibration of predicted probabilities: Brier score, ECE, reliability table, temperature scaling.

Temperature is fitted on validation predictions only and then applied to test predictions.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
from scipy import optimize, special
from scipy import stats as sps
from sklearn import metrics as skm

# Probabilities are clipped to [_EPS, 1] before taking logs: a stored probability of exactly
# 0 (float32 softmax underflow) would otherwise give -inf logits and a NaN NLL.
_EPS = 1e-12

# log T is searched in [log 1/100, log 100]: far beyond any temperature seen in practice
# (typically 1-3 for over-confident CNNs), and bounded so a separable validation set cannot
# send T to 0.
_LOG_T_BOUNDS = (np.log(1e-2), np.log(1e2))


def _proba(proba) -> tuple[np.ndarray, bool]:
    """(n, k) probabilities; a 1-D input is the binary P(class index 1). Also: was it 1-D."""
    p = np.asarray(proba, dtype=np.float64)
    one_d = p.ndim == 1
    if one_d:
        p = np.column_stack([1.0 - p, p])
    if p.ndim != 2 or p.shape[1] < 2:
        raise ValueError(f"proba has shape {np.shape(proba)}; expected (n, k >= 2) or (n,) for binary")
    return p, one_d


def _labels(y, n: int, k: int) -> np.ndarray:
    y = np.asarray(y, dtype=int)
    if y.shape != (n,):
        raise ValueError(f"y has shape {y.shape} for {n} predictions")
    if n and (y.min() < 0 or y.max() >= k):
        raise ValueError(f"labels must be class indices 0..{k - 1}")
    return y


def brier(y, proba) -> float:
    """Brier score: mean over samples of the squared distance to the one-hot label.

    Multi-class: sum over classes, in [0, 2]. Binary (a 1-D P(class 1) or two columns):
    the usual mean (p1 - y)^2, in [0, 1] -- half the two-column sum. That is sklearn's
    brier_score_loss(scale_by_half="auto"), which this calls.
    """
    p, _ = _proba(proba)
    y = _labels(y, len(p), p.shape[1])
    return float(skm.brier_score_loss(y, p, labels=list(range(p.shape[1]))))


def reliability_table(y, proba, n_bins: int = 15, strategy: str = "uniform") -> pd.DataFrame:
    """Per bin of top-class confidence: lower, upper, count, confidence (mean), accuracy, gap.

    Confidence is the maximum probability of each sample; accuracy the fraction whose
    argmax is the label. strategy="uniform": n_bins equal-width bins over [0, 1]
    (scipy.stats.binned_statistic: [a, b) except the last, [a, 1]); empty bins are kept
    with count 0 and NaN means, so a reliability diagram has fixed x positions.
    strategy="quantile": edges at confidence quantiles (about equal counts; tied edges
    merged, so there may be fewer bins). gap = accuracy - confidence (negative: over-confident).
    """
    p, _ = _proba(proba)
    y = _labels(y, len(p), p.shape[1])
    if not len(y):
        raise ValueError("no predictions")
    if n_bins < 1:
        raise ValueError(f"n_bins must be >= 1, got {n_bins}")
    conf = p.max(axis=1)
    correct = (p.argmax(axis=1) == y).astype(float)
    if strategy == "uniform":
        edges = np.linspace(0.0, 1.0, n_bins + 1)
    elif strategy == "quantile":
        edges = np.unique(np.quantile(conf, np.linspace(0.0, 1.0, n_bins + 1)))
        if len(edges) == 1:  # every confidence equal: one bin around it
            edges = np.array([edges[0], edges[0] + 1e-12]) if edges[0] < 1 else np.array([1 - 1e-12, 1.0])
    else:
        raise ValueError(f"strategy must be 'uniform' or 'quantile', got {strategy!r}")
    count, _, _ = sps.binned_statistic(conf, conf, statistic="count", bins=edges)
    (mean_conf, accuracy), _, _ = sps.binned_statistic(conf, [conf, correct], statistic="mean", bins=edges)
    return pd.DataFrame(
        {
            "lower": edges[:-1],
            "upper": edges[1:],
            "count": count.astype(int),
            "confidence": mean_conf,
            "accuracy": accuracy,
            "gap": accuracy - mean_conf,
        }
    )


def expected_calibration_error(y, proba, n_bins: int = 15, strategy: str = "uniform") -> float:
    """ECE on the top-class confidence: sum over bins of count/n * |accuracy - confidence|.

    Binning as in `reliability_table` (default: 15 equal-width bins over [0, 1] on the
    maximum probability; empty bins contribute nothing), weighted by bin count (Guo et
    al. 2017, "On calibration of modern neural networks").
    """
    t = reliability_table(y, proba, n_bins=n_bins, strategy=strategy)
    filled = t["count"] > 0
    w = t.loc[filled, "count"] / t["count"].sum()
    return float((w * (t.loc[filled, "accuracy"] - t.loc[filled, "confidence"]).abs()).sum())


def _logits(scores, logits: bool) -> tuple[np.ndarray, bool]:
    """Logits (n, k) from logits or probabilities; log p is a logit up to a per-row constant."""
    if logits:
        z = np.asarray(scores, dtype=np.float64)
        one_d = z.ndim == 1
        if one_d:  # binary logit of class 1: the two-column logits (0, z)
            z = np.column_stack([np.zeros_like(z), z])
        return z, one_d
    p, one_d = _proba(scores)
    return np.log(np.clip(p, _EPS, 1.0)), one_d


def _nll(z: np.ndarray, y: np.ndarray, t: float) -> float:
    logp = special.log_softmax(z / t, axis=1)
    return float(-logp[np.arange(len(y)), y].mean())


def fit_temperature(scores, y, *, logits: bool = False) -> float:
    """Temperature T > 0 minimising the negative log-likelihood of softmax(z / T) on `y`.

    Fit on the validation split only, never on the test predictions it will be reported
    on. scores: probabilities (default; log p is used as the logits, which softmax treats
    identically) or, with logits=True, logits; (n, k) or 1-D binary (P(class 1) / its
    logit -- temperature scaling of a sigmoid). T > 1 softens an over-confident model,
    T < 1 sharpens an under-confident one. Bounded 1-D search over log T
    (scipy.optimize.minimize_scalar), T in [0.01, 100].
    """
    z, _ = _logits(scores, logits)
    y = _labels(y, len(z), z.shape[1])
    if not len(y):
        raise ValueError("no validation predictions to fit a temperature on")
    res = optimize.minimize_scalar(
        lambda log_t: _nll(z, y, float(np.exp(log_t))), bounds=_LOG_T_BOUNDS, method="bounded",
        options={"xatol": 1e-6},
    )
    return float(np.exp(res.x))


def apply_temperature(scores, temperature: float, *, logits: bool = False) -> np.ndarray:
    """softmax(log p / T) (or softmax(z / T) with logits=True): temperature-scaled probabilities.

    Same shape as the input: a 1-D binary P(class 1) gives the scaled P(class 1), i.e.
    sigmoid(logit(p) / T). T comes from `fit_temperature` on validation predictions.
    The argmax is unchanged, so accuracy is too; only confidence moves.
    """
    if not temperature > 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")
    z, one_d = _logits(scores, logits)
    p = special.softmax(z / temperature, axis=1)
    return p[:, 1] if one_d else p


def binning(n_bins: int) -> str:
    """The words metrics.json gives for how the ECE was binned (`calibration.binning`)."""
    return (f"{n_bins} equal-width bins of the top-class probability over [0, 1] (the last one closed); "
            "ECE = sum over bins of (images in bin / images) * |accuracy - mean top-class probability| "
            "(Guo et al. 2017); empty bins add nothing")
