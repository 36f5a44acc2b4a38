"""inference.py: the test-time views a stage's probabilities average, the batches padded to a few sizes, and the
penultimate features beside the probabilities from one pass."""

import numpy as np
import pytest

from cifar_dash import inference


class _RecordingModel:
    """Stands in for a Keras model: 'probabilities' read from the top-left pixel, every call recorded."""

    def __init__(self):
        self.calls = []

    def predict_on_batch(self, batch):
        self.calls.append(np.array(batch))
        v = batch[:, 0, 0, 0] / 255.0
        return np.stack([v, 1 - v], axis=1)


def test_tta_modes_average_the_views_airbench_weights():
    rng = np.random.default_rng(0)
    x = rng.integers(0, 256, size=(5, 32, 32, 3)).astype("uint8")
    assert inference.tta_mode(True) == "flip" and inference.tta_mode(False) == "none"
    with pytest.raises(ValueError):
        inference.tta_mode("rotate")
    f = _RecordingModel()
    got = inference.predict_probs(f, x, tta="flip_shift")
    assert len(f.calls) == 6

    def p(b):
        v = b[:, 0, 0, 0].astype("float64") / 255.0
        return np.stack([v, 1 - v], axis=1)

    def mirror(b):
        return (p(b) + p(b[:, :, ::-1])) / 2

    padded = np.pad(x.astype("float32"), ((0, 0), (1, 1), (1, 1), (0, 0)), mode="reflect")
    want = 0.5 * mirror(x) + 0.25 * mirror(padded[:, :32, :32]) + 0.25 * mirror(padded[:, 2:, 2:])
    np.testing.assert_allclose(got, want, rtol=1e-6)
    f = _RecordingModel()
    inference.predict_probs(f, x, tta=True)
    assert len(f.calls) == 2
    levels = inference.tta_levels(_RecordingModel(), x, tta="flip_shift")
    assert set(levels) == {"none", "flip", "flip_shift"}
    np.testing.assert_allclose(levels["none"], p(x), rtol=1e-6)
    np.testing.assert_allclose(levels["flip"], mirror(x), rtol=1e-6)
    np.testing.assert_allclose(levels["flip_shift"], got)


def test_the_plain_view_is_not_run_again_when_the_caller_has_it():
    """``measure`` hands tta_levels the unaugmented probabilities of its feature pass: then only the flipped view
    runs (1 call, not 2), and the levels are the same."""
    x = np.random.default_rng(1).integers(0, 256, size=(4, 32, 32, 3)).astype("uint8")
    full = inference.tta_levels(_RecordingModel(), x, tta="flip")
    f = _RecordingModel()
    given = inference.tta_levels(f, x, tta="flip", plain=full["none"])
    assert len(f.calls) == 1 and np.array_equal(f.calls[0], x[:, :, ::-1].astype("float32"))
    np.testing.assert_allclose(given["flip"], full["flip"], rtol=1e-6)


@pytest.mark.parametrize(("n", "size"), [(1, 1), (5, 8), (33, 64), (256, 256), (300, 300)])
def test_batches_are_padded_to_the_next_power_of_two_up_to_the_cap(n, size):
    """Up to the cap (256) a batch grows to the next power of two, so a handful of sizes is ever traced; a larger
    one stays as it is. The images come first, blank ones after."""
    batch = np.full((n, 2, 2, 3), 7, np.uint8)
    out = inference.padded(batch, 256)
    assert out.shape == (size, 2, 2, 3) and (out[:n] == 7).all() and not out[n:].any()


def test_features_come_with_the_probabilities_of_one_pass():
    import keras

    model = keras.Sequential(
        [keras.Input((32, 32, 3)), keras.layers.Flatten(), keras.layers.Dense(6), keras.layers.Dense(10, "softmax")]
    )
    x = np.random.default_rng(2).integers(0, 256, size=(130, 32, 32, 3)).astype("uint8")
    feats, probs = inference.features_and_probs(model, x, batch_size=64)
    assert feats.shape == (130, 6) and probs.shape == (130, 10)
    np.testing.assert_allclose(probs, model.predict(x.astype("float32"), verbose=0), atol=1e-5)
    flat = x.reshape(130, -1).astype("float32")
    np.testing.assert_allclose(
        feats, flat @ model.layers[1].kernel.numpy() + model.layers[1].bias.numpy(), rtol=1e-4, atol=1e-3
    )
