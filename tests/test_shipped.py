"""The committed checkpoints reproduce their own metrics.json: each shipped model, loaded as the dashboard loads it,
predicts a sample of the real CIFAR-10 test images as its stored test_predictions.npz says."""

import json
import os
from pathlib import Path

import numpy as np
import pytest

from cifar_dash import data, predict, results, stages
from tests.conftest import ROOT

SHIPPED = ROOT / "checkpoints"
REAL = Path(os.environ.get("CIFAR10_PATH") or ROOT.parent / "shared" / "data" / "cifar10.npz")
SAMPLE = {"resnet50v2": 48, "resnet50v2_sota": 48}  # 160x160 backbones: a smaller sample on a 2-core CPU


@pytest.fixture(scope="module")
def real_test_set():
    if not REAL.exists():
        pytest.skip(f"real CIFAR-10 not at {REAL} (set CIFAR10_PATH)")
    d = data.load(str(REAL))
    return d


HEAVY = {"mobilenetv2_frozen", "mobilenetv2_finetune", "resnet50v2", "resnet50v2_sota", "speedrun"}  # 4-8 s each


@pytest.mark.parametrize("key", [pytest.param(k, marks=pytest.mark.slow) if k in HEAVY else k for k in stages.KEYS])
def test_a_shipped_model_reproduces_its_stored_predictions(key, real_test_set, monkeypatch):
    monkeypatch.setenv("CIFAR_DASH_CHECKPOINTS", str(SHIPPED))
    r = results.load_result(key)
    assert r.status == "trained", r.error
    m = r.metrics
    assert m["data_fingerprint"] == real_test_set.fingerprints()["all"]  # the data set it was trained and evaluated on
    stored = results.predictions(key)
    n = SAMPLE.get(key, 256)
    idx = stored.indices[:n]
    probs = predict.predict(predict.load_stage(key), real_test_set.x_test[idx])
    # same model, same images: the same answers (bfloat16-free float32 inference; tiny float differences allowed)
    assert np.abs(probs - stored.probs[:n]).max() < 2e-3
    assert (probs.argmax(1) == stored.predicted[:n]).all()
    # and the stored predictions are the ones metrics.json was computed from
    assert m["test_accuracy"] == pytest.approx(float((stored.predicted == stored.labels).mean()))
    assert (stored.labels == real_test_set.y_test[stored.indices]).all()
    assert json.loads((SHIPPED / key / "metrics.json").read_text())["n_test"] == len(stored.labels) == 10_000
