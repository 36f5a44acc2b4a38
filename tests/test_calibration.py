import numpy as np
import pytest

from cifar_dash import calibration


def test_ece_by_hand():
    # four predictions: confidences 0.95, 0.95 (one right, one wrong) and 0.55, 0.55 (both right)
    probs = np.array([[0.95, 0.05], [0.95, 0.05], [0.55, 0.45], [0.55, 0.45]])
    y = np.array([0, 1, 0, 0])
    cal = calibration.reliability(probs, y, n_bins=10)
    # bin (0.9, 1.0]: acc 0.5 conf 0.95 -> |0.45| * 2/4; bin (0.5, 0.6]: acc 1 conf 0.55 -> 0.45 * 2/4
    assert cal["ece"] == pytest.approx(0.45)
    counts = [b["count"] for b in cal["bins"]]
    assert counts[9] == 2 and counts[5] == 2 and sum(counts) == 4
    assert cal["mean_confidence_wrong"] == pytest.approx(0.95)
    assert cal["mean_confidence_correct"] == pytest.approx((0.95 + 0.55 + 0.55) / 3)


def _sample(n=20_000, true_t=1.0, shown_t=1.0, seed=0):
    """Labels drawn from softmax(z / true_t); probabilities shown as softmax(z / shown_t)."""
    rng = np.random.default_rng(seed)
    z = rng.normal(0, 3, (n, 10))
    p_true = np.exp(z / true_t)
    p_true /= p_true.sum(1, keepdims=True)
    y = (p_true.cumsum(1) > rng.random((n, 1))).argmax(1)
    shown = np.exp(z / shown_t)
    return shown / shown.sum(1, keepdims=True), y


@pytest.mark.parametrize("overconfident_by", [0.4, 1.0, 2.5])
def test_the_fit_recovers_a_known_temperature(overconfident_by):
    """Labels follow softmax(z); the model shows softmax(z * k): the temperature that undoes it is k."""
    probs, y = _sample(shown_t=1 / overconfident_by)
    assert calibration.fit_temperature(probs, y) == pytest.approx(overconfident_by, rel=0.05)


def test_scaling_lowers_the_ece_on_held_out_images():
    probs, y = _sample(n=30_000, shown_t=0.4)
    t = calibration.fit_temperature(probs[:10_000], y[:10_000])
    before = calibration.reliability(probs[10_000:], y[10_000:])["ece"]
    after = calibration.reliability(calibration.scale(probs[10_000:], t), y[10_000:])["ece"]
    assert before > 0.1 and after < 0.02 and after < before / 5


def test_scale_keeps_the_ranking_and_sums_to_one():
    probs, _ = _sample(n=100)
    for t in (0.5, 3.0):
        s = calibration.scale(probs, t)
        assert np.allclose(s.sum(1), 1, atol=1e-5)
        assert (s.argmax(1) == probs.argmax(1)).all()
    assert np.allclose(calibration.scale(probs, 1.0), probs, atol=1e-6)
    # hotter temperatures flatten: the top probability falls
    assert (calibration.scale(probs, 3.0).max(1) <= probs.max(1) + 1e-6).all()


def test_calibrate_on_validation_and_by_cross_fitting():
    val, yv = _sample(n=5000, shown_t=0.5, seed=1)
    test, yt = _sample(n=10_000, shown_t=0.5, seed=2)
    on_val = calibration.calibrate(test, yt, val, yv)
    assert on_val["fit_on"] == "validation" and on_val["n_fit"] == 5000
    assert on_val["temperature"] == pytest.approx(2.0, rel=0.1)
    assert on_val["ece_scaled"] < calibration.reliability(test, yt)["ece"] and on_val["nll_scaled"] < on_val["nll"]
    crossed = calibration.calibrate(test, yt)  # no validation images: two folds of the test set
    assert crossed["fit_on"].startswith("test, two-fold") and len(crossed["fold_temperatures"]) == 2
    # each half was scaled by the other half's temperature: recompute one half independently
    fold = np.random.default_rng(calibration.FOLDS_SEED).permutation(len(yt)) % 2
    t_other = calibration.fit_temperature(test[fold == 1], yt[fold == 1])
    assert t_other == pytest.approx(crossed["fold_temperatures"][0])
    assert crossed["ece_scaled"] < 0.03


def test_temperature_of_reads_only_a_sane_value():
    assert calibration.temperature_of({"calibration": {"temperature": 1.7}}) == 1.7
    assert calibration.temperature_of({"calibration": {"ece": 0.1}}) is None
    assert calibration.temperature_of({"calibration": {"temperature": -1}}) is None
    assert calibration.temperature_of({}) is None


def test_the_ece_floor_is_the_noise_of_a_perfectly_calibrated_model():
    probs, _ = _sample(n=10_000, shown_t=1.0, seed=3)
    floor = calibration.ece_floor(probs)
    # labels truly drawn from these probabilities: their ECE sits around the floor, and the floor shrinks with n
    _, y = _sample(n=10_000, true_t=1.0, shown_t=1.0, seed=3)
    assert 0.002 < floor < 0.02 and abs(calibration.reliability(probs, y)["ece"] - floor) < 0.01
    assert calibration.ece_floor(probs[:1000]) > floor
