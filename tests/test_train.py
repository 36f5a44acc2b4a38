import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from cifar_dash import artifacts, evaluate, results, stages, train
from tests.conftest import ROOT

ENV = {**os.environ, "PYTHONPATH": str(ROOT), "TF_CPP_MIN_LOG_LEVEL": "3"}


def _assert_valid_artifacts(folder, n_test, key):
    m = json.loads((folder / "metrics.json").read_text())
    for field in ("stage", "test_accuracy", "n_test", "per_class", "confusion_matrix", "calibration", "params",
                  "trainable_params", "inference", "epochs", "train_seconds", "recipe", "keras_version", "backend",
                  "machine", "data_fingerprint"):
        assert field in m, field
    assert m["stage"] == key and m["n_test"] == n_test
    cm = np.array(m["confusion_matrix"])
    assert cm.sum() == n_test
    p = artifacts.load_predictions(folder / "test_predictions.npz")
    assert p.probs.shape == (n_test, 10)
    # the stored accuracy is the one the stored predictions give
    assert m["test_accuracy"] == pytest.approx(float((p.predicted == p.labels).mean()))
    assert np.trace(cm) == int((p.predicted == p.labels).sum())
    assert m["inference"]["batch_1_ms"] > 0
    hist = json.loads((folder / "history.json").read_text())["epochs"]
    assert len(hist) == m["epochs"] and {"loss", "accuracy", "val_loss", "val_accuracy"} <= set(hist[0])
    return m


@pytest.mark.parametrize("key", stages.KEYS)
def test_smoke_train_and_evaluate_every_stage(key, cifar_npz, tmp_path):
    out = tmp_path / key
    train.train(key, epochs=1, limit=24, data_path=cifar_npz, backbone_weights="none", out_dir=out)
    m = _assert_valid_artifacts(out, 24, key)
    assert m["epochs"] == len(stages.get(key).recipe.phases)
    # evaluate on its own rewrites the same artifacts from the stored model
    again = evaluate.evaluate(key, out_dir=out, data_path=cifar_npz)
    assert again["test_accuracy"] == pytest.approx(m["test_accuracy"])
    assert results.load_result(key, tmp_path).status == "trained"
    if stages.get(key).recipe.tta:
        assert m["tta_accuracy"][m["tta"]] == pytest.approx(m["test_accuracy"])


def test_mlp_learns_the_synthetic_signal(trained_root):
    m = json.loads((trained_root / "mlp" / "metrics.json").read_text())
    assert m["test_accuracy"] > 0.3  # 10 colour classes; chance is 0.1


def test_progress_file_and_state_after_done(cifar_npz, tmp_path):
    out = tmp_path / "mlp"
    train.train("mlp", epochs=2, limit=100, data_path=cifar_npz, out_dir=out)
    progress = json.loads((artifacts.work_dir("mlp", out) / train.PROGRESS).read_text())
    assert progress["state"] == "done" and progress["epoch"] == 2


def test_failed_run_leaves_last_good_model_intact(cifar_npz, tmp_path):
    out = tmp_path / "mlp"
    train.train("mlp", epochs=1, limit=100, data_path=cifar_npz, out_dir=out)
    before = artifacts.file_sha256(out / "model.keras")
    bad = tmp_path / "bad.npz"
    bad.write_bytes(b"garbage")
    from cifar_dash.data import DataError

    with pytest.raises(DataError):
        train.train("mlp", epochs=1, limit=100, data_path=bad, out_dir=out)
    assert artifacts.file_sha256(out / "model.keras") == before
    assert results.load_result("mlp", tmp_path).status == "trained"
    progress = json.loads((artifacts.work_dir("mlp", out) / train.PROGRESS).read_text())
    assert progress["state"] == "failed" and "bad.npz" in progress["message"]


def test_resume_after_kill(cifar_npz, tmp_path):
    out = tmp_path / "mlp"
    env = {**ENV, "CIFAR_DASH_CACHE": str(tmp_path / "cache")}
    cmd = [sys.executable, "-m", "cifar_dash", "train", "mlp", "--epochs", "40", "--limit", "600",
           "--data", str(cifar_npz), "--out", str(out)]
    proc = subprocess.Popen(cmd, env=env, cwd=ROOT, stderr=subprocess.DEVNULL, stdout=subprocess.DEVNULL)
    state_file = artifacts.work_dir("mlp", out) / train.STATE
    deadline = time.time() + 120
    while time.time() < deadline:
        if state_file.exists() and json.loads(state_file.read_text())["epochs_done"] >= 2:
            break
        time.sleep(0.1)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    done_before = json.loads(state_file.read_text())["epochs_done"]
    assert 2 <= done_before < 40 and not (out / "model.keras").exists()
    r = subprocess.run(cmd + ["--resume"], env=env, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    assert f"resuming mlp after epoch {done_before}" in r.stderr
    hist = json.loads((out / "history.json").read_text())["epochs"]
    assert [h["epoch"] for h in hist] == list(range(1, 41))


def test_cancel_with_sigterm_keeps_state(cifar_npz, tmp_path):
    out = tmp_path / "mlp"
    env = {**ENV, "CIFAR_DASH_CACHE": str(tmp_path / "cache")}
    cmd = [sys.executable, "-m", "cifar_dash", "train", "mlp", "--epochs", "200", "--limit", "600",
           "--data", str(cifar_npz), "--out", str(out)]
    proc = subprocess.Popen(cmd, env=env, cwd=ROOT, stderr=subprocess.PIPE, text=True)
    progress = artifacts.work_dir("mlp", out) / train.PROGRESS
    deadline = time.time() + 120
    while time.time() < deadline:
        if progress.exists() and json.loads(progress.read_text()).get("state") == "running":
            break
        time.sleep(0.1)
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=60) == 130
    assert json.loads(progress.read_text())["state"] == "cancelled"
    assert not (out / "model.keras").exists()


def test_one_step_under_jax(cifar_npz, tmp_path):
    pytest.importorskip("jax")
    out = tmp_path / "cnn"
    env = {**ENV, "KERAS_BACKEND": "jax", "CIFAR_DASH_CACHE": str(tmp_path / "cache")}
    r = subprocess.run([sys.executable, "-m", "cifar_dash", "train", "cnn", "--epochs", "1", "--limit", "64",
                        "--data", str(cifar_npz), "--out", str(out)], env=env, cwd=ROOT, capture_output=True,
                       text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    m = json.loads((out / "metrics.json").read_text())
    assert m["backend"] == "jax" and m["n_test"] == 64


def test_missing_backbone_weights_file_is_a_clear_error(cifar_npz, tmp_path):
    from cifar_dash.models import BackboneWeightsError

    with pytest.raises(BackboneWeightsError, match="does not exist"):
        train.train("mobilenetv2_frozen", epochs=1, limit=24, data_path=cifar_npz,
                    backbone_weights=str(tmp_path / "nope.h5"), out_dir=tmp_path / "m")


def test_mixup_batches_blend_images_and_labels():
    x = np.stack([np.full((32, 32, 3), 0, np.uint8), np.full((32, 32, 3), 200, np.uint8)] * 8)
    y = np.array([0, 1] * 8)
    b = train.Batches(x, y, batch_size=16, mixup_alpha=0.4, seed=3)
    xb, yb = b[0]
    np.testing.assert_allclose(yb.sum(axis=1), 1, rtol=1e-6)
    # pixel value / 200 equals the weight of class 1 in the label, image by image
    np.testing.assert_allclose(xb[:, 0, 0, 0] / 200, yb[:, 1], atol=1e-5)
    assert ((yb > 0) & (yb < 1)).any()


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
    assert evaluate.tta_mode(True) == "flip" and evaluate.tta_mode(False) == "none"
    with pytest.raises(ValueError):
        evaluate.tta_mode("rotate")
    f = _RecordingModel()
    got = evaluate.predict_probs(f, x, tta="flip_shift")
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
    evaluate.predict_probs(f, x, tta=True)
    assert len(f.calls) == 2
    levels = evaluate.tta_levels(_RecordingModel(), x, tta="flip_shift")
    assert set(levels) == {"none", "flip", "flip_shift"}
    np.testing.assert_allclose(levels["none"], p(x), rtol=1e-6)
    np.testing.assert_allclose(levels["flip"], mirror(x), rtol=1e-6)
    np.testing.assert_allclose(levels["flip_shift"], got)


def test_backbone_stand_in_and_bfloat16_are_said_plainly():
    from cifar_dash import analysis, report

    r = results.StageResult(stages.get("resnet50v2"), "trained",
                            metrics={"backbone": "resnet50", "epochs": 5, "test_accuracy": 0.9},
                            train_info={"mixed_precision": True})
    assert analysis.backbone_label(r) == "resnet50 (stand-in for resnet50v2)"
    notes = report.deviations(r)
    assert "resnet50 backbone instead of resnet50v2" in notes and "bfloat16 compute" in notes
    same = results.StageResult(stages.get("resnet50v2"), "trained", metrics={"backbone": "resnet50v2", "epochs": 5})
    assert analysis.backbone_label(same) == "resnet50v2" and report.deviations(same) == []
