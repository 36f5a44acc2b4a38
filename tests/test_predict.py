"""predict.py's stored answers for test images and the prediction cache that holds them."""

import numpy as np
import pytest

from cifar_dash import artifacts, predict


def _preds():
    rng = np.random.default_rng(0)
    probs = rng.dirichlet(np.ones(10), 5).astype(np.float32)
    return artifacts.Predictions(probs, np.arange(5) % 10, np.array([7, 3, 11, 0, 42]))


def test_stored_test_probs_are_the_rows_of_those_test_indices():
    p = _preds()
    got = predict.stored_test_probs(p, {"test_data_fingerprint": "abc"}, "abc", [42, 7])
    assert np.array_equal(got, p.probs[[4, 0]])


@pytest.mark.parametrize(
    "metrics, fingerprint, indices",
    [
        ({"test_data_fingerprint": "abc"}, "other", [7]),  # evaluated on another test set
        ({}, "abc", [7]),  # evaluated before fingerprints were recorded
        ({"test_data_fingerprint": "abc"}, None, [7]),  # the shown images' set is unknown
        ({"test_data_fingerprint": "abc"}, "abc", [7, 8]),  # 8 is not stored
    ],
)
def test_no_stored_answer_unless_same_test_set_and_every_index_stored(metrics, fingerprint, indices):
    assert predict.stored_test_probs(_preds(), metrics, fingerprint, indices) is None
    assert predict.stored_test_probs(None, {"test_data_fingerprint": "abc"}, "abc", [7]) is None


def test_a_seeded_cache_answers_without_loading_the_model():
    cache = predict.PredictionCache()
    images = np.random.default_rng(1).integers(0, 256, (3, 32, 32, 3), dtype=np.uint8)
    probs = np.random.default_rng(2).dirichlet(np.ones(10), 3).astype(np.float32)

    def load():
        raise AssertionError("the model was loaded")

    cache.seed("mlp", "v1", images, probs)
    assert np.array_equal(cache.probs("mlp", "v1", images[::-1], load), probs[::-1])
    assert cache.predicted == {}
    with pytest.raises(AssertionError, match="loaded"):  # another model version is not answered from the seed
        cache.probs("mlp", "v2", images, load)
