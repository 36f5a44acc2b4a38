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


def _images(n, seed=0):
    return np.random.default_rng(seed).integers(0, 256, (n, 32, 32, 3), dtype=np.uint8)


def _fake_stage(probs):
    """A LoadedStage stand-in whose model call is ``probs(images)``."""

    class Stage:
        tta = "none"
        model = None

    stage = Stage()
    predict_was = predict.predict

    def fake_predict(loaded, x):
        return probs(x) if loaded is stage else predict_was(loaded, x)

    return stage, fake_predict


def test_the_model_calls_of_two_stages_run_at_once(monkeypatch):
    """Each stage's call waits for the other's to start: it passes only if the cache runs them side by side (it held
    one lock over every model call before)."""
    import threading

    both = threading.Barrier(2, timeout=10)

    def run(x):
        both.wait()  # BrokenBarrierError after 10 s if the other stage's call cannot start meanwhile
        return np.full((len(x), 10), 0.1, np.float32)

    stage, fake = _fake_stage(run)
    monkeypatch.setattr(predict, "predict", fake)
    cache = predict.PredictionCache()
    out = {}
    threads = [
        threading.Thread(target=lambda k=k: out.setdefault(k, cache.probs(k, "v1", _images(2), lambda: stage)))
        for k in ("a", "b")
    ]
    for th in threads:
        th.start()
    for th in threads:
        th.join(20)
    assert sorted(out) == ["a", "b"] and cache.predicted == {"a": 2, "b": 2}


def test_one_stage_asked_from_two_threads_runs_its_model_once(monkeypatch):
    import threading
    import time

    calls = []

    def run(x):
        calls.append(len(x))
        time.sleep(0.3)  # the second caller arrives while this call runs
        return np.random.default_rng(len(calls)).dirichlet(np.ones(10), len(x)).astype(np.float32)

    stage, fake = _fake_stage(run)
    monkeypatch.setattr(predict, "predict", fake)
    cache = predict.PredictionCache()
    got = []
    threads = [threading.Thread(target=lambda: got.append(cache.probs("a", "v1", _images(3), lambda: stage)))]
    threads.append(threading.Thread(target=lambda: got.append(cache.probs("a", "v1", _images(3), lambda: stage))))
    for th in threads:
        th.start()
    for th in threads:
        th.join(20)
    assert calls == [3] and cache.predicted == {"a": 3}
    assert len(got) == 2 and np.array_equal(got[0], got[1])


def test_pipelined_loads_in_this_thread_in_order_while_earlier_tasks_compute():
    import threading

    here = threading.get_ident()
    loads, first_done = [], threading.Event()

    def load(task):
        assert threading.get_ident() == here
        loads.append(task)
        if task == "second":  # waits for the first task's compute: it must run meanwhile, on another thread
            assert first_done.wait(10), "the first task did not compute while the second loaded"
        if task == "broken":
            raise OSError("model file damaged")
        return task.upper()

    def compute(task, loaded):
        assert threading.get_ident() != here
        if task == "first":
            first_done.set()
        if task == "fails":
            raise ValueError("bad input")
        return loaded + "!"

    out = list(predict.pipelined(["first", "second", "broken", "fails"], load, compute, workers=2))
    assert loads == ["first", "second", "broken", "fails"]
    assert out[0] == ("first", "FIRST!")  # answered before the later loads finished
    got = dict(out)
    assert got["second"] == "SECOND!" and isinstance(got["broken"], OSError) and isinstance(got["fails"], ValueError)
    assert len(out) == 4
