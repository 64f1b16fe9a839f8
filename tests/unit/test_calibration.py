import numpy as np
import pytest
from scipy import special

from hemaflow.evaluate import calibration as cal


def test_brier_by_hand():
    y = np.array([0, 1, 1])
    p1 = np.array([0.2, 0.6, 0.9])
    expected = (0.2**2 + 0.4**2 + 0.1**2) / 3  # mean (p1 - y)^2 = 0.07
    assert cal.brier(y, p1) == pytest.approx(expected)
    assert cal.brier(y, np.column_stack([1 - p1, p1])) == pytest.approx(expected)  # two columns: same scale
    # multi-class: mean over samples of the squared distance to the one-hot label
    y3 = np.array([0, 2])
    p3 = np.array([[0.5, 0.5, 0.0], [0.1, 0.1, 0.8]])
    assert cal.brier(y3, p3) == pytest.approx(((0.25 + 0.25) + (0.01 + 0.01 + 0.04)) / 2)
    assert cal.brier([0, 1], np.eye(2)) == 0.0


def test_ece_and_reliability_table_by_hand():
    # bin (0.9, 1.0]: confidences 0.95, 0.95, one right one wrong -> |0.5 - 0.95| = 0.45
    # bin (0.6, 0.7]: confidences 0.65, 0.65, both right -> |1 - 0.65| = 0.35
    y = np.array([1, 1, 0, 0])
    p1 = np.array([0.95, 0.05, 0.35, 0.35])  # predictions 1, 0, 0, 0; confidences .95 .95 .65 .65
    assert cal.expected_calibration_error(y, p1, n_bins=10) == pytest.approx(0.5 * 0.45 + 0.5 * 0.35)
    t = cal.reliability_table(y, p1, n_bins=10)
    assert len(t) == 10 and t["count"].sum() == 4
    assert list(t["count"]) == [0, 0, 0, 0, 0, 0, 2, 0, 0, 2]
    assert t.loc[9, "accuracy"] == pytest.approx(0.5) and t.loc[9, "confidence"] == pytest.approx(0.95)
    assert t.loc[6, "gap"] == pytest.approx(0.35)
    assert t.loc[0, "lower"] == 0.0 and t.loc[9, "upper"] == 1.0
    assert np.isnan(t.loc[0, "accuracy"])  # empty bins kept, undefined
    # a confidence of exactly 1 lands in the last bin
    assert cal.reliability_table([0], [[1.0, 0.0]], n_bins=5)["count"].iloc[-1] == 1
    q = cal.reliability_table(y, p1, n_bins=2, strategy="quantile")
    assert q["count"].sum() == 4
    assert cal.expected_calibration_error(y, p1, n_bins=2, strategy="quantile") == pytest.approx(0.4)


def calibrated_sample(rng, n, k=4, sharpness=1.0):
    """Labels drawn from softmax(z); returns the true logits z and the labels."""
    z = sharpness * rng.normal(size=(n, k)) * 1.5
    p = special.softmax(z, axis=1)
    y = (rng.random(n)[:, None] > np.cumsum(p, axis=1)).sum(axis=1)
    return z, np.minimum(y, k - 1)


def test_perfectly_calibrated_model_has_ece_near_zero():
    z, y = calibrated_sample(np.random.default_rng(0), 100_000)
    p = special.softmax(z, axis=1)
    assert cal.expected_calibration_error(y, p) < 0.01
    # the same model made over-confident is clearly miscalibrated
    assert cal.expected_calibration_error(y, special.softmax(3 * z, axis=1)) > 0.1


def test_temperature_scaling_fixes_an_over_confident_model_on_held_out_data():
    z, y = calibrated_sample(np.random.default_rng(1), 20_000)
    over = special.softmax(3.0 * z, axis=1)  # logits 3x too large: over-confident
    val, test = slice(0, 10_000), slice(10_000, None)
    t = cal.fit_temperature(over[val], y[val])  # validation half only
    assert t > 1
    assert t == pytest.approx(3.0, rel=0.1)
    scaled = cal.apply_temperature(over[test], t)
    before = cal.expected_calibration_error(y[test], over[test])
    after = cal.expected_calibration_error(y[test], scaled)
    assert after < before / 3 and after < 0.03
    assert cal.brier(y[test], scaled) < cal.brier(y[test], over[test])
    np.testing.assert_array_equal(scaled.argmax(axis=1), over[test].argmax(axis=1))  # accuracy unchanged
    np.testing.assert_allclose(scaled.sum(axis=1), 1.0)


def test_under_confident_model_gets_temperature_below_one():
    z, y = calibrated_sample(np.random.default_rng(2), 10_000)
    assert cal.fit_temperature(special.softmax(0.5 * z, axis=1), y) == pytest.approx(0.5, rel=0.1)


def test_fit_temperature_from_logits_matches_from_probabilities():
    z, y = calibrated_sample(np.random.default_rng(3), 5_000)
    from_logits = cal.fit_temperature(2 * z, y, logits=True)
    from_proba = cal.fit_temperature(special.softmax(2 * z, axis=1), y)
    assert from_logits == pytest.approx(from_proba, rel=1e-4)
    np.testing.assert_allclose(
        cal.apply_temperature(2 * z, from_logits, logits=True),
        cal.apply_temperature(special.softmax(2 * z, axis=1), from_logits),
        atol=1e-9,
    )


def test_binary_sigmoid_output():
    rng = np.random.default_rng(4)
    logit = rng.normal(0, 2, 5_000)
    y = (rng.random(logit.size) < special.expit(logit)).astype(int)
    p1 = special.expit(2.5 * logit)  # over-confident sigmoid
    t = cal.fit_temperature(p1, y)
    assert t == pytest.approx(2.5, rel=0.15)
    scaled = cal.apply_temperature(p1, t)
    assert scaled.shape == p1.shape
    np.testing.assert_allclose(scaled, special.expit(special.logit(p1) / t), rtol=1e-9)
    np.testing.assert_allclose(cal.apply_temperature(np.column_stack([1 - p1, p1]), t)[:, 1], scaled, rtol=1e-9)
    assert cal.fit_temperature(np.column_stack([1 - p1, p1]), y) == pytest.approx(t, rel=1e-4)


def test_temperature_one_is_identity_and_bad_input_is_refused():
    p = np.array([[0.7, 0.2, 0.1], [0.1, 0.1, 0.8]])
    np.testing.assert_allclose(cal.apply_temperature(p, 1.0), p)
    with pytest.raises(ValueError):
        cal.apply_temperature(p, 0.0)
    with pytest.raises(ValueError):
        cal.fit_temperature(p, [0, 3])
    with pytest.raises(ValueError):
        cal.expected_calibration_error([0, 1], p, strategy="log")
