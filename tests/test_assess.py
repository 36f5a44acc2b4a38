"""assess.py: one pass over a finished model gives the metrics, the temperature, the feature map and their files,
the same figures the separate steps compute, and nothing is read back from disk."""

import io

import numpy as np
import pytest

from cifar_dash import artifacts, assess, calibration, embedding, inference


def _model():
    import keras

    keras.utils.set_random_seed(0)
    inputs = keras.Input((32, 32, 3))
    x = keras.layers.Rescaling(1 / 255)(inputs)
    x = keras.layers.Conv2D(4, 3, strides=4)(x)
    x = keras.layers.Flatten()(x)
    x = keras.layers.Dense(12, activation="relu")(x)
    return keras.Model(inputs, keras.layers.Dense(10, activation="softmax")(x))


def _images(n, seed):
    rng = np.random.default_rng(seed)
    return rng.integers(0, 256, (n, 32, 32, 3), dtype=np.uint8), rng.integers(0, 10, n)


INFO = {"stage": "cnn", "run_id": "r1", "recipe": {"tta": "flip"}, "test_data_fingerprint": "abc"}


def test_assessment_equals_the_separate_steps_and_writes_every_file(tmp_path):
    model = _model()
    test, val = _images(64, 1), _images(30, 2)
    a, _ = assess.assess(model, INFO, test, val, tmp_path, stream=io.StringIO())
    # the same figures as each step on its own
    probs = inference.predict_probs(model, test[0], tta="flip")
    np.testing.assert_allclose(a.probs, probs, atol=1e-5)
    np.testing.assert_allclose(a.val_probs, inference.predict_probs(model, val[0], tta="flip"), atol=1e-5)
    assert a.metrics["test_accuracy"] == pytest.approx(float((probs.argmax(1) == test[1]).mean()))
    fitted = calibration.calibrate(probs, test[1], a.val_probs, val[1])
    assert a.metrics["calibration"]["temperature"] == pytest.approx(fitted["temperature"], rel=1e-4)
    assert a.metrics["calibration"]["fit_on"] == "validation" and a.metrics["calibration"]["n_fit"] == 30
    assert "ece" in a.metrics["calibration"]  # the raw figures stay beside the scaled ones
    feats, _ = inference.features_and_probs(model, test[0])
    assert a.metrics["separation"]["knn_accuracy"] == pytest.approx(embedding.separation(feats, test[1]))
    assert a.metrics["tta"] == "flip" and a.metrics["run_id"] == "r1" and a.metrics["test_data_fingerprint"] == "abc"
    stored = artifacts.load_predictions(tmp_path / artifacts.PREDICTIONS)
    np.testing.assert_array_equal(stored.labels, test[1])
    np.testing.assert_allclose(stored.probs, a.probs, atol=1e-6)
    assert len(artifacts.load_predictions(tmp_path / artifacts.VAL_PREDICTIONS).labels) == 30
    emb = embedding.load(tmp_path)
    assert emb.xy.shape == (64, 2) and list(emb.indices) == list(range(64))
    assert artifacts.read_json(tmp_path / artifacts.METRICS)["separation"] == a.metrics["separation"]


def test_without_validation_images_the_temperature_is_cross_fit_and_few_images_make_no_map(tmp_path):
    model = _model()
    test = _images(embedding.MIN_IMAGES - 1, 3)
    empty = (np.zeros((0, 32, 32, 3), np.uint8), np.zeros(0, np.int64))
    out = io.StringIO()
    a, emb = assess.assess(model, INFO, test, empty, tmp_path, stream=out)
    assert a.val_probs is None and emb is None and "separation" not in a.metrics
    assert a.metrics["calibration"]["fit_on"].startswith("test, two-fold")
    assert "no feature map" in out.getvalue()
    assert not (tmp_path / artifacts.EMBEDDING).exists() and not (tmp_path / artifacts.VAL_PREDICTIONS).exists()
    assert artifacts.read_json(tmp_path / artifacts.METRICS)["n_test"] == len(test[1])


def test_the_test_images_go_through_the_model_once_for_features_and_the_unaugmented_view(tmp_path, monkeypatch):
    """The feature map's pass gives the unaugmented view's probabilities too: besides the timing calls (one image,
    and at most 256), the test images are run once unaugmented (through the feature model) and once flipped."""
    import keras

    seen = []
    for name in ("predict", "predict_on_batch"):
        original = getattr(keras.Model, name)

        def counted(self, x, *args, _original=original, **kwargs):
            seen.append((self.name, np.asarray(x)[:1].copy(), len(x)))
            return _original(self, x, *args, **kwargs)

        monkeypatch.setattr(keras.Model, name, counted)
    model = _model()
    test = _images(300, 4)
    m, _ = assess.assess(model, INFO, test, _images(30, 5), tmp_path, stream=io.StringIO())
    full = [(n, first) for n, first, k in seen if k >= 300 or (n.endswith("_features") and k > 0)]
    plain = [n for n, first in full if np.array_equal(first[0], test[0][0].astype(np.float32))]
    flipped = [n for n, first in full if np.array_equal(first[0], test[0][0, :, ::-1].astype(np.float32))]
    assert plain and set(plain) == {f"{model.name}_features"}  # the unaugmented view: the feature pass alone
    assert flipped == [model.name]  # the flipped view: one pass of the model itself
    assert sum(k for n, _, k in seen if n.endswith("_features")) == 300
    assert m.features.shape == (300, 12)
