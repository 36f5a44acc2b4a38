import dataclasses
import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from cifar_dash import artifacts, evaluate, results, stages, train
from tests.conftest import ROOT

ENV = {**os.environ, "PYTHONPATH": str(ROOT), "TF_CPP_MIN_LOG_LEVEL": "3"}


def _assert_valid_artifacts(folder, n_test, key):
    m = json.loads((folder / "metrics.json").read_text())
    for field in (
        "stage",
        "test_accuracy",
        "n_test",
        "per_class",
        "confusion_matrix",
        "calibration",
        "params",
        "trainable_params",
        "inference",
        "epochs",
        "train_seconds",
        "recipe",
        "keras_version",
        "backend",
        "machine",
        "data_fingerprint",
    ):
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
    held_out = m["recipe"]["validation_size"] > 0
    assert len(hist) == m["epochs"] and {"loss", "accuracy"} <= set(hist[0])
    assert ({"val_loss", "val_accuracy"} <= set(hist[0])) == held_out
    info = json.loads((folder / "train_info.json").read_text())
    assert info["n_validation"] == (max(1, n_test // 10) if held_out else 0)
    return m


BACKBONE_KEYS = [s.key for s in stages.STAGES if s.recipe.backbone]


def _smoke(key, cifar_npz, tmp_path, recipe=None):
    out = tmp_path / key
    train.train(key, epochs=1, limit=24, data_path=cifar_npz, backbone_weights="none", out_dir=out, recipe=recipe)
    m = _assert_valid_artifacts(out, 24, key)
    assert m["epochs"] == len(stages.get(key).recipe.phases)
    # evaluate on its own rewrites the same artifacts from the stored model
    again = evaluate.evaluate(key, out_dir=out, data_path=cifar_npz)
    assert again["test_accuracy"] == pytest.approx(m["test_accuracy"])
    assert results.load_result(key, tmp_path).status == "trained"
    if stages.get(key).recipe.tta:
        assert m["tta_accuracy"][m["tta"]] == pytest.approx(m["test_accuracy"])
    return m


@pytest.mark.parametrize("key", stages.KEYS)
def test_smoke_train_and_evaluate_every_stage(key, cifar_npz, tmp_path, tiny_backbones):
    """Every stage's whole recipe (phases, schedule, augmentation, upsampling, TTA); the ImageNet backbones are a
    tiny stand-in (tests/conftest.py), so the default run stays fast. The real backbones run in the slow test below."""
    m = _smoke(key, cifar_npz, tmp_path)
    if stages.get(key).recipe.backbone:
        assert m["params"] < 100_000  # the stand-in, not ResNet50 / MobileNetV2


@pytest.mark.slow
@pytest.mark.parametrize("key", BACKBONE_KEYS)
def test_smoke_train_and_evaluate_at_full_input_size(key, cifar_npz, tmp_path):
    m = _smoke(key, cifar_npz, tmp_path)
    assert m["recipe"]["backbone_input"] == stages.get(key).recipe.backbone_input > 32


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
    cmd = [
        sys.executable,
        "-m",
        "cifar_dash",
        "train",
        "mlp",
        "--epochs",
        "40",
        "--limit",
        "600",
        "--data",
        str(cifar_npz),
        "--out",
        str(out),
    ]
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


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "Ctrl-C"])
def test_cancel_with_sigterm_or_ctrl_c_keeps_state(sig, cifar_npz, tmp_path):
    out = tmp_path / "mlp"
    env = {**ENV, "CIFAR_DASH_CACHE": str(tmp_path / "cache")}
    cmd = [
        sys.executable,
        "-m",
        "cifar_dash",
        "train",
        "mlp",
        "--epochs",
        "200",
        "--limit",
        "600",
        "--data",
        str(cifar_npz),
        "--out",
        str(out),
    ]
    proc = subprocess.Popen(cmd, env=env, cwd=ROOT, stderr=subprocess.PIPE, text=True)
    progress = artifacts.work_dir("mlp", out) / train.PROGRESS
    deadline = time.time() + 120
    while time.time() < deadline:
        try:
            p = json.loads(progress.read_text())
        except (OSError, ValueError):
            p = {}
        if p.get("state") == "running" and p.get("epoch", 0) >= 3:  # two whole epochs done
            break
        time.sleep(0.05)
    proc.send_signal(sig)
    assert proc.wait(timeout=60) == 130
    assert json.loads(progress.read_text())["state"] == "cancelled"
    state = json.loads((artifacts.work_dir("mlp", out) / train.STATE).read_text())
    assert len(state["history"]) >= 2 and state["epochs_done"] == len(state["history"])  # kept for --resume
    assert not (out / "model.keras").exists()


def test_one_step_under_jax(cifar_npz, tmp_path):
    pytest.importorskip("jax")
    out = tmp_path / "cnn"
    env = {**ENV, "KERAS_BACKEND": "jax", "CIFAR_DASH_CACHE": str(tmp_path / "cache")}
    r = subprocess.run(
        [
            sys.executable,
            "-m",
            "cifar_dash",
            "train",
            "cnn",
            "--epochs",
            "1",
            "--limit",
            "64",
            "--data",
            str(cifar_npz),
            "--out",
            str(out),
        ],
        env=env,
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert r.returncode == 0, r.stderr[-2000:]
    m = json.loads((out / "metrics.json").read_text())
    assert m["backend"] == "jax" and m["n_test"] == 64


def test_missing_backbone_weights_file_is_a_clear_error(cifar_npz, tmp_path):
    from cifar_dash.models import BackboneWeightsError

    with pytest.raises(BackboneWeightsError, match="does not exist"):
        train.train(
            "mobilenetv2_frozen",
            epochs=1,
            limit=24,
            data_path=cifar_npz,
            backbone_weights=str(tmp_path / "nope.h5"),
            out_dir=tmp_path / "m",
        )


def test_mixup_batches_blend_images_and_labels():
    x = np.stack([np.full((32, 32, 3), 0, np.uint8), np.full((32, 32, 3), 200, np.uint8)] * 8)
    y = np.array([0, 1] * 8)
    b = train.Batches(x, y, batch_size=16, mixup_alpha=0.4, seed=3)
    xb, yb = b[0]
    np.testing.assert_allclose(yb.sum(axis=1), 1, rtol=1e-6)
    # pixel value / 200 equals the weight of class 1 in the label, image by image
    np.testing.assert_allclose(xb[:, 0, 0, 0] / 200, yb[:, 1], atol=1e-5)
    assert ((yb > 0) & (yb < 1)).any()


def test_loader_shifts_are_exact_pixels_and_flips_alternate_by_epoch():
    rng = np.random.default_rng(0)
    x = rng.integers(0, 256, size=(40, 32, 32, 3)).astype("uint8")
    y = np.arange(40) % 10
    b = train.Batches(x, y, batch_size=40, seed=5, augment=("flip_alternate", "crop:2"))
    padded = np.pad(x, ((0, 0), (2, 2), (2, 2), (0, 0)), mode="reflect")
    flips = {}
    for epoch in (0, 1, 2):
        b.set_epoch(epoch)
        xb, yb = b[0]
        assert xb.shape == (40, 32, 32, 3) and xb.dtype == np.float32
        order = b._order[:40]
        for k, i in enumerate(order):  # every view is one of the 5 x 5 integer shifts, mirrored or not
            views = [
                (dy, dx, f)
                for dy in range(5)
                for dx in range(5)
                for f in (0, 1)
                if np.array_equal(
                    xb[k], (padded[i, dy : dy + 32, dx : dx + 32][:, ::-1] if f else padded[i, dy : dy + 32, dx : dx + 32])
                )
            ]
            assert views, "not an exact shifted copy"
            flips[(epoch, int(i))] = {f for _, _, f in views}
        np.testing.assert_array_equal(yb.argmax(axis=1), y[order])
    # every second epoch each image is seen the other way round (where the view tells the two apart)
    for i in range(40):
        a, c, e = flips[(0, i)], flips[(1, i)], flips[(2, i)]
        if len(a) == 1 and len(c) == 1 and len(e) == 1:
            assert a != c and a == e
    # the same (seed, epoch, batch) gives the same batch: a resumed run sees what an uninterrupted one would
    b.set_epoch(1)
    again = train.Batches(x, y, batch_size=40, seed=5, augment=("flip_alternate", "crop:2"))
    again.set_epoch(1)
    np.testing.assert_array_equal(b[0][0], again[0][0])
    with pytest.raises(ValueError, match="unknown loader augmentation"):
        train.Batches(x, y, batch_size=8, augment=("rotate",))


def test_speedrun_resume_state_keeps_its_lookahead_optimizer(tmp_path):
    import keras

    from cifar_dash import models
    from cifar_dash.layers import LookaheadSGD

    stage = stages.get("speedrun")
    recipe = stage.recipe
    model = stages.build(stage, recipe, backbone_weights=None)
    x = np.random.default_rng(0).integers(0, 256, size=(16, 32, 32, 3)).astype("uint8")
    y = np.eye(10, dtype="float32")[np.arange(16) % 10]
    models.init_from_data(model, x)
    train.compile_for_phase(model, recipe, recipe.phases[0], steps_per_epoch=49)
    opt = model.optimizer
    assert isinstance(opt, LookaheadSGD) and opt.start_step == 3 * 49 and opt.total_steps == 10 * 49
    model.fit(x.astype("float32"), y, batch_size=8, epochs=1, verbose=0)
    model.save(tmp_path / "m.keras")
    again = artifacts.load_model_compiled(tmp_path / "m.keras")
    assert isinstance(again.optimizer, LookaheadSGD)
    assert again.optimizer.get_config() == opt.get_config()
    assert int(keras.ops.convert_to_numpy(again.optimizer.iterations)) == 2
    again.fit(x.astype("float32"), y, batch_size=8, epochs=1, verbose=0)
    assert int(keras.ops.convert_to_numpy(again.optimizer.iterations)) == 4


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

    r = results.StageResult(
        stages.get("resnet50v2"),
        "trained",
        metrics={"backbone": "resnet50", "epochs": 5, "test_accuracy": 0.9},
        train_info={"mixed_precision": True},
    )
    assert analysis.backbone_label(r) == "resnet50 (stand-in for resnet50v2)"
    notes = report.deviations(r)
    assert "resnet50 backbone instead of resnet50v2" in notes and "bfloat16 compute" in notes
    same = results.StageResult(stages.get("resnet50v2"), "trained", metrics={"backbone": "resnet50v2", "epochs": 5})
    assert analysis.backbone_label(same) == "resnet50v2" and report.deviations(same) == []
    continued = results.StageResult(
        stages.get("resnet50v2_sota"),
        "trained",
        metrics={"backbone": "resnet50v2", "epochs": 2},
        train_info={
            "mixed_precision": False,
            "train_runtime": {"machine": "CPU: B"},
            "continued_from": {"epochs": 1, "mixed_precision": True, "train_runtime": {"machine": "CPU: A"}},
        },
    )
    assert report.deviations(continued) == [
        "2 of the recipe's 5 epochs",
        "bfloat16 compute in epoch 1",
        "epoch 2 continued from a 1-epoch run (optimizer restarted)",
        "epoch 1 trained on CPU: A",
    ]
    # continued twice, each run on its own machine and precision (train_info nests the runs, oldest innermost)
    twice = results.StageResult(
        stages.get("resnet50v2_sota"),
        "trained",
        metrics={"backbone": "resnet50v2", "epochs": 4},
        train_info={
            "mixed_precision": True,
            "train_runtime": {"machine": "CPU: C"},
            "continued_from": {
                "epochs": 2,
                "mixed_precision": False,
                "test_accuracy": 0.9255,
                "train_runtime": {"machine": "CPU: B"},
                "continued_from": {
                    "epochs": 1,
                    "mixed_precision": True,
                    "test_accuracy": 0.9271,
                    "train_runtime": {"machine": "CPU: A"},
                },
            },
        },
    )
    assert [(s["first"], s["last"]) for s in report.lineage(twice.train_info, 4)] == [(1, 1), (2, 2), (3, 4)]
    assert report.deviations(twice) == [
        "4 of the recipe's 5 epochs",
        "bfloat16 compute in epoch 1, epochs 3-4",
        "epoch 2 continued from a 1-epoch run that measured 92.71% (optimizer restarted)",
        "epochs 3-4 continued from a 2-epoch run that measured 92.55% (optimizer restarted)",
        "epoch 1 trained on CPU: A",
        "epoch 2 trained on CPU: B",
    ]
    # a third continuation in bfloat16 right after one: the precision note joins adjacent spans
    thrice = {
        "mixed_precision": True,
        "train_runtime": {"machine": "CPU: C"},
        "continued_from": {**twice.train_info, "epochs": 4, "test_accuracy": 0.93},
    }
    r3 = results.StageResult(
        stages.get("resnet50v2_sota"), "trained", metrics={"backbone": "resnet50v2", "epochs": 5}, train_info=thrice
    )
    assert [(s["first"], s["last"]) for s in report.lineage(thrice, 5)] == [(1, 1), (2, 2), (3, 4), (5, 5)]
    assert report.deviations(r3)[:2] == [
        "bfloat16 compute in epoch 1, epochs 3-5",
        "epoch 2 continued from a 1-epoch run that measured 92.71% (optimizer restarted)",
    ]
    assert report.deviations(r3)[3] == "epoch 5 continued from a 4-epoch run that measured 93.00% (optimizer restarted)"
    from cifar_dash import figures

    history = [{"epoch": e, "phase": "finetune", "accuracy": 0.8, "val_accuracy": 0.9} for e in (1, 2, 3, 4)]
    fig = figures.training_curves(history, "accuracy", report.lineage(twice.train_info, 4))
    assert [(s.x0, s.line.dash) for s in fig.layout.shapes] == [(1.5, "dash"), (2.5, "dash")]
    assert [a.text for a in fig.layout.annotations] == ["continued", "continued, bfloat16"]


def test_a_checkpoint_from_an_earlier_recipe_says_so():
    from cifar_dash import report

    stage = stages.get("speedrun")
    stored = json.loads(json.dumps(stage.recipe.to_dict()))
    assert report.recipe_changes(stored, stage.recipe) == []
    stored.update(seed=3, validation_size=5000, lookahead=None)  # the seed is per run, not a recipe change
    for k in ("loader_augmentation", "norm_bias_lr_scale"):
        del stored[k]  # fields added later count as their defaults, which the current recipe does not use
    assert report.recipe_changes(stored, stage.recipe) == [
        "loader_augmentation",
        "validation_size",
        "lookahead",
        "norm_bias_lr_scale",
    ]
    r = results.StageResult(stage, "trained", metrics={"epochs": 10, "recipe": stored}, train_info={})
    assert any(n.startswith("an earlier recipe (differs in loader_augmentation") for n in report.deviations(r))


def _plateau_mlp_recipe():

    return dataclasses.replace(
        stages.get("mlp").recipe, lr_schedule="reduce_on_plateau", plateau_factor=0.5, plateau_patience=1
    )


def test_plateau_replay_matches_keras_on_a_real_run(cifar_npz, tmp_path):
    out = tmp_path / "mlp"
    recipe = _plateau_mlp_recipe()
    # 20 validation images: ties in validation accuracy are common, so the rate is halved several times
    train.train("mlp", epochs=8, limit=200, data_path=cifar_npz, out_dir=out, recipe=recipe, evaluate=False)
    hist = json.loads((out / "history.json").read_text())["epochs"]
    rates = [h["learning_rate"] for h in hist]
    assert min(rates) < rates[0]  # the schedule did act, so the replay is checked against real halvings
    for k in range(1, len(hist)):
        best, wait, lr = train.plateau_replay(hist[:k], 1e-3, 0.5, 1)
        assert lr == pytest.approx(rates[k], rel=1e-6), k
        assert best == max(h["val_accuracy"] for h in hist[:k])
    assert train.plateau_replay([], 1e-3, 0.5, 1) == (None, 0, 1e-3)
    rows = [{"val_accuracy": a, "learning_rate": r} for a, r in [(0.5, 1e-3), (0.6, 1e-3), (0.6, 1e-3)]]
    assert train.plateau_replay(rows, 1e-3, 0.5, 1) == (0.6, 0, 5e-4)
    assert train.plateau_replay(rows, 1e-3, 0.5, 2)[:2] == (0.6, 1)


def test_continue_from_adds_epochs_to_a_published_run(cifar_npz, tmp_path):
    out = tmp_path / "mlp"
    recipe = _plateau_mlp_recipe()
    train.train("mlp", epochs=2, limit=200, data_path=cifar_npz, out_dir=out, recipe=recipe)
    first_info = json.loads((out / "train_info.json").read_text())
    first_hist = json.loads((out / "history.json").read_text())["epochs"]
    first_model = artifacts.file_sha256(out / "model.keras")
    first_accuracy = json.loads((out / "metrics.json").read_text())["test_accuracy"]

    train.train("mlp", epochs=4, limit=200, data_path=cifar_npz, out_dir=out, recipe=recipe, continue_from=out)
    info = json.loads((out / "train_info.json").read_text())
    hist = json.loads((out / "history.json").read_text())["epochs"]
    m = _assert_valid_artifacts(out, 200, "mlp")
    assert m["epochs"] == 4 and [h["epoch"] for h in hist] == [1, 2, 3, 4]
    assert hist[:2] == first_hist  # the first run's epochs are kept as they were
    prior = info["continued_from"]
    assert prior["run_id"] == first_info["run_id"] != info["run_id"] and prior["epochs"] == 2
    assert info["train_seconds"] == pytest.approx(
        first_info["train_seconds"] + sum(h["seconds"] for h in hist[2:]), abs=0.05
    )
    assert info["started"] == first_info["started"]
    assert hist[2]["learning_rate"] == pytest.approx(train.plateau_replay(first_hist, 1e-3, 0.5, 1)[2])
    assert artifacts.file_sha256(out / "model.keras") != first_model
    from cifar_dash import report

    r = results.load_result("mlp", tmp_path)
    assert prior["test_accuracy"] == first_accuracy  # what the published run measured stays on record
    assert (
        f"epochs 3-4 continued from a 2-epoch run that measured {first_accuracy:.2%} (optimizer restarted)"
        in report.deviations(r)
    )

    # continued again: the chain of runs is kept, so every epoch still says which run trained it
    second_accuracy = json.loads((out / "metrics.json").read_text())["test_accuracy"]
    train.train(
        "mlp", epochs=5, limit=200, data_path=cifar_npz, out_dir=out, recipe=recipe, continue_from=out, mixed_precision=True
    )
    third = json.loads((out / "train_info.json").read_text())
    assert third["continued_from"]["run_id"] == info["run_id"] and third["continued_from"]["epochs"] == 4
    assert third["continued_from"]["continued_from"] == prior  # the first link, as the second run recorded it
    notes = report.deviations(results.load_result("mlp", tmp_path))
    start = notes.index("bfloat16 compute in epoch 5")
    assert notes[start : start + 3] == [
        "bfloat16 compute in epoch 5",
        f"epochs 3-4 continued from a 2-epoch run that measured {first_accuracy:.2%} (optimizer restarted)",
        f"epoch 5 continued from a 4-epoch run that measured {second_accuracy:.2%} (optimizer restarted)",
    ]


def test_continue_from_refuses_what_is_not_the_same_run_cut_short(cifar_npz, tmp_path):
    out = tmp_path / "mlp"
    recipe = _plateau_mlp_recipe()
    train.train("mlp", epochs=2, limit=200, data_path=cifar_npz, out_dir=out, recipe=recipe, evaluate=False)
    before = artifacts.file_sha256(out / "model.keras")
    cases = [
        (dict(epochs=2), "a continuation needs more than 2, not 2"),  # nothing to add
        (dict(epochs=3, seed=5), "other settings (seed)"),
        (dict(epochs=3, limit=100), "limit 200, not 100"),
        (dict(epochs=3, recipe=stages.get("mlp").recipe), "other settings (lr_schedule"),
    ]
    for kwargs, message in cases:
        kw = {"limit": 200, "recipe": recipe, **kwargs}
        with pytest.raises(train.ContinueError, match=re.escape(message)):
            train.train("mlp", data_path=cifar_npz, out_dir=out, continue_from=out, **kw)
    with pytest.raises(train.ContinueError, match="holds stage 'mlp', not 'cnn'"):
        train.train("cnn", epochs=3, limit=200, data_path=cifar_npz, out_dir=tmp_path / "cnn", continue_from=out)
    with pytest.raises(train.ContinueError, match="no finished run"):
        train.train(
            "mlp",
            epochs=3,
            limit=200,
            data_path=cifar_npz,
            out_dir=tmp_path / "x",
            recipe=recipe,
            continue_from=tmp_path / "nothing",
        )
    # a one-cycle recipe's rate spans the whole run: extending it would not be the recipe
    train.train("vgg_aug", epochs=1, limit=24, data_path=cifar_npz, out_dir=tmp_path / "vgg", evaluate=False)
    with pytest.raises(train.ContinueError, match="cannot be extended"):
        train.train(
            "vgg_aug", epochs=2, limit=24, data_path=cifar_npz, out_dir=tmp_path / "vgg", continue_from=tmp_path / "vgg"
        )
    assert artifacts.file_sha256(out / "model.keras") == before


def test_a_two_phase_run_is_continued_in_its_last_phase(cifar_npz, tmp_path, tiny_backbones):
    """mobilenetv2_finetune (head, then fine-tuning): one epoch count per phase; a continuation adds fine-tuning
    epochs to the published run and refuses to touch a finished earlier phase."""
    out = tmp_path / "mobilenetv2_finetune"
    kw = dict(limit=24, data_path=cifar_npz, out_dir=out, backbone_weights="none")
    train.train("mobilenetv2_finetune", epochs=(1, 1), evaluate=False, **kw)
    first = json.loads((out / "train_info.json").read_text())
    assert [p["epochs"] for p in first["recipe"]["phases"]] == [1, 1]
    with pytest.raises(train.ContinueError, match=re.escape("not 2,2 (e.g. 1,2)")):
        train.train("mobilenetv2_finetune", epochs=2, continue_from=out, **kw)
    train.train("mobilenetv2_finetune", epochs=(1, 2), continue_from=out, **kw)
    info = json.loads((out / "train_info.json").read_text())
    hist = json.loads((out / "history.json").read_text())["epochs"]
    assert [p["epochs"] for p in info["recipe"]["phases"]] == [1, 2] and len(hist) == 3
    assert info["continued_from"]["run_id"] == first["run_id"]
    assert [h["phase"] for h in hist] == ["head", "finetune", "finetune"]


def test_resume_mid_epoch_after_cancel_matches_an_uninterrupted_run(cifar_npz, tmp_path, monkeypatch):
    """A run cancelled part way through an epoch saves that epoch so far; --resume finishes it on the same batches,
    so the MLP (no dropout, no random layers) ends with the same history and weights as a run never stopped."""
    import io

    kwargs = dict(epochs=3, limit=600, data_path=cifar_npz, evaluate=False)  # 540 training images: 5 steps an epoch
    ref_log = io.StringIO()
    train.train("mlp", out_dir=tmp_path / "a", stream=ref_log, **kwargs)
    ref = json.loads((tmp_path / "a" / "history.json").read_text())["epochs"]

    out = tmp_path / "b"
    original = train.Batches.__getitem__
    fired = []

    def getitem(self, i):
        if self.epoch == 1 and i == 2 and not fired:
            fired.append(i)
            signal.raise_signal(signal.SIGTERM)  # what the dashboard's Cancel sends
        return original(self, i)

    monkeypatch.setattr(train.Batches, "__getitem__", getitem)
    with pytest.raises(train.Cancelled):
        train.train("mlp", out_dir=out, save_every=3600, **kwargs)
    monkeypatch.setattr(train.Batches, "__getitem__", original)
    state = json.loads((artifacts.work_dir("mlp", out) / train.STATE).read_text())
    assert state["epochs_done"] == 1 and state["partial"]["epoch"] == 1 and 0 < state["partial"]["step"] < 5
    progress = json.loads((artifacts.work_dir("mlp", out) / train.PROGRESS).read_text())
    assert progress["state"] == "cancelled" and "epoch so far is saved" in progress["message"]

    log = io.StringIO()
    train.train("mlp", out_dir=out, resume=True, stream=log, **kwargs)
    assert f"resuming mlp in epoch 2 at step {state['partial']['step']}/5" in log.getvalue()

    def epoch_line(text, n):  # the printed epoch summary shows the whole epoch's means, as the history row does
        line = next(x for x in text.splitlines() if x.startswith(f"epoch {n}/3"))
        return [float(v) for v in re.findall(r"(?:loss|acc) ([0-9.]+)", line)]

    assert epoch_line(log.getvalue(), 2) == pytest.approx(epoch_line(ref_log.getvalue(), 2), rel=1e-3, abs=1e-4)
    hist = json.loads((out / "history.json").read_text())["epochs"]
    assert [h["epoch"] for h in hist] == [1, 2, 3]
    for a, b in zip(ref, hist):
        for k in ("loss", "accuracy", "val_loss", "val_accuracy"):
            assert b[k] == pytest.approx(a[k], rel=1e-4, abs=1e-6), (a["epoch"], k)
    assert hist[1]["seconds"] >= state["partial"]["seconds"]
    wa = artifacts.load_model(tmp_path / "a" / "model.keras").get_weights()
    wb = artifacts.load_model(out / "model.keras").get_weights()
    assert all(np.allclose(x, y, rtol=1e-4, atol=1e-6) for x, y in zip(wa, wb))
    assert "partial" not in json.loads((out / "train_info.json").read_text())


def _cancelled_as_epoch_ends(monkeypatch, at_epoch, stage, **kwargs):
    """Train ``stage`` with a SIGTERM (the dashboard's Cancel) arriving as epoch ``at_epoch`` (0-based) ends."""
    original = train.EpochCheckpoint.on_epoch_end

    def on_epoch_end(self, epoch, logs=None):
        if epoch == at_epoch:
            signal.raise_signal(signal.SIGTERM)
        return original(self, epoch, logs)

    monkeypatch.setattr(train.EpochCheckpoint, "on_epoch_end", on_epoch_end)
    handlers = {s: signal.getsignal(s) for s in train.CancelOnSignal.SIGNALS}
    with pytest.raises(train.Cancelled):
        train.train(stage, **kwargs)
    assert {s: signal.getsignal(s) for s in handlers} == handlers  # the caller's handlers are back
    monkeypatch.setattr(train.EpochCheckpoint, "on_epoch_end", original)


@pytest.mark.parametrize("when", ["last batch", "validation"])
def test_a_cancel_in_an_epochs_last_batch_or_validation_saves_that_epoch(when, cifar_npz, tmp_path, monkeypatch):
    """A cancel that arrives during an epoch's last batch or its validation lets the epoch finish and keeps it
    (a mid-epoch save is never made of the last batch), then stops before the next epoch."""
    kwargs = dict(epochs=3, limit=600, data_path=cifar_npz, evaluate=False)  # 5 steps an epoch
    original = train.Progress.on_train_batch_end

    def on_train_batch_end(self, batch, logs=None):  # as batch 4 of 5 ends: the signal lands in the last batch
        if when == "last batch" and self.epoch == 0 and batch == 3:
            signal.raise_signal(signal.SIGTERM)
        return original(self, batch, logs)

    def on_test_begin(self, logs=None):  # before the first validation batch
        if when == "validation" and self.epoch == 0:
            signal.raise_signal(signal.SIGTERM)

    monkeypatch.setattr(train.Progress, "on_train_batch_end", on_train_batch_end)
    monkeypatch.setattr(train.Progress, "on_test_begin", on_test_begin)
    out = tmp_path / "mlp"
    with pytest.raises(train.Cancelled):
        train.train("mlp", out_dir=out, save_every=3600, **kwargs)
    state = json.loads((artifacts.work_dir("mlp", out) / train.STATE).read_text())
    assert state["epochs_done"] == 1 and "partial" not in state and len(state["history"]) == 1
    assert "val_accuracy" in state["history"][0]


def test_a_cancel_after_an_epochs_last_batch_saves_that_epoch(cifar_npz, tmp_path, monkeypatch):
    """A cancel that arrives once the epoch's batches and validation are done (here: as its end begins) keeps that
    epoch and stops before the next; the state stays consistent (no part of a later epoch on top of a missing one),
    and --resume goes on from the next epoch to the uninterrupted run's history."""
    kwargs = dict(epochs=3, limit=600, data_path=cifar_npz, evaluate=False)
    train.train("mlp", out_dir=tmp_path / "a", **kwargs)
    ref = json.loads((tmp_path / "a" / "history.json").read_text())["epochs"]

    out = tmp_path / "b"
    _cancelled_as_epoch_ends(monkeypatch, 1, "mlp", out_dir=out, save_every=3600, **kwargs)
    state = json.loads((artifacts.work_dir("mlp", out) / train.STATE).read_text())
    assert state["epochs_done"] == 2 and "partial" not in state and len(state["history"]) == 2
    train.train("mlp", out_dir=out, resume=True, **kwargs)
    hist = json.loads((out / "history.json").read_text())["epochs"]
    assert [h["epoch"] for h in hist] == [1, 2, 3]
    for a, b in zip(ref, hist):
        assert b["val_accuracy"] == pytest.approx(a["val_accuracy"], abs=1e-6)
        assert b["loss"] == pytest.approx(a["loss"], rel=1e-4)


def test_a_resumed_continuation_records_the_published_runs_accuracy(cifar_npz, tmp_path, monkeypatch):
    """A continuation stopped and resumed (here: with its state written before continued_from had test_accuracy)
    still records what the run it continued measured: the record is re-read from that run on resume."""
    out = tmp_path / "mlp"
    kwargs = dict(limit=300, data_path=cifar_npz, out_dir=out)
    train.train("mlp", epochs=1, **kwargs)
    first = json.loads((out / "metrics.json").read_text())
    _cancelled_as_epoch_ends(monkeypatch, 1, "mlp", epochs=3, continue_from=out, save_every=3600, **kwargs)
    state_file = artifacts.work_dir("mlp", out) / train.STATE
    state = json.loads(state_file.read_text())
    assert state["epochs_done"] == 2 and state["continued_from"]["test_accuracy"] == first["test_accuracy"]
    del state["continued_from"]["test_accuracy"]  # as an older version wrote it
    state_file.write_text(json.dumps(state))
    train.train("mlp", epochs=3, continue_from=out, resume=True, **kwargs)
    info = json.loads((out / "train_info.json").read_text())
    assert info["continued_from"]["run_id"] == first["run_id"]
    assert info["continued_from"]["test_accuracy"] == first["test_accuracy"]
    assert json.loads((out / "metrics.json").read_text())["epochs"] == 3
    stale = json.loads((out / "metrics.json").read_text()) | {"run_id": "an earlier run"}
    (out / "metrics.json").write_text(json.dumps(stale))  # an evaluation of another model says nothing of this one
    prior = train.read_continuation(out, "mlp", stages.recipe_for(stages.get("mlp"), 4), 300, info["train_data_fingerprint"])
    assert prior["run_id"] == info["run_id"] and prior["test_accuracy"] is None


def test_step_checkpoints_bound_what_a_crash_loses(cifar_npz, tmp_path, monkeypatch):
    out = tmp_path / "mlp"
    original = train.Batches.__getitem__

    def getitem(self, i):
        if self.epoch == 1 and i == 3:
            raise MemoryError("simulated crash")
        return original(self, i)

    monkeypatch.setattr(train.Batches, "__getitem__", getitem)
    with pytest.raises(Exception, match="simulated crash"):  # save_every tiny: a checkpoint after every step
        train.train("mlp", epochs=3, limit=600, data_path=cifar_npz, out_dir=out, evaluate=False, save_every=1e-9)
    state = json.loads((artifacts.work_dir("mlp", out) / train.STATE).read_text())
    assert state["epochs_done"] == 1 and state["partial"]["epoch"] == 1 and 1 <= state["partial"]["step"] <= 3
    assert set(state["partial"]["metrics"]) >= {"loss", "accuracy"}
    monkeypatch.setattr(train.Batches, "__getitem__", original)
    train.train("mlp", epochs=3, limit=600, data_path=cifar_npz, out_dir=out, evaluate=False, resume=True)
    assert [h["epoch"] for h in json.loads((out / "history.json").read_text())["epochs"]] == [1, 2, 3]


def test_merge_means_weights_by_images():
    assert train.merge_means({"loss": 1.0}, 100, {"loss": 4.0}, 300) == {"loss": 3.25}
    assert train.images_before(3, 128, 540) == 384 and train.images_before(5, 128, 540) == 540


def _fake_live_run(work, state="running"):
    """A live process that progress.json names as training into ``work`` (as a terminal's run would)."""
    proc = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"])
    work.mkdir(parents=True, exist_ok=True)
    (work / train.PROGRESS).write_text(
        json.dumps(
            {
                "stage": "mlp",
                "state": state,
                "pid": proc.pid,
                "epoch": 2,
                "epochs": 5,
                "step": 3,
                "steps": 10,
                "updated": time.time(),
            }
        )
    )
    return proc


def test_a_second_run_into_the_same_folder_is_refused(cifar_npz, tmp_path):
    out = tmp_path / "mlp"
    work = artifacts.work_dir("mlp", out)
    proc = _fake_live_run(work)
    try:
        before = (work / train.PROGRESS).read_text()
        with pytest.raises(train.AlreadyTraining, match=f"already training into .* \\(pid {proc.pid}, running\\)"):
            train.train("mlp", epochs=1, limit=100, data_path=cifar_npz, out_dir=out)
        assert (work / train.PROGRESS).read_text() == before  # the other run's progress is left alone
    finally:
        proc.kill()
        proc.wait()
    assert train.live_run(work) is None  # its process is gone: a new run may start
    assert not any(train.pid_alive(p) for p in (0, -1, None, "x"))
    train.train("mlp", epochs=1, limit=100, data_path=cifar_npz, out_dir=out, evaluate=False)
    assert json.loads((work / train.PROGRESS).read_text())["state"] == "done"


def test_a_failed_publication_keeps_the_finished_run_and_the_published_one(cifar_npz, tmp_path, monkeypatch):
    import errno

    out = tmp_path / "mlp"
    train.train("mlp", epochs=1, limit=300, data_path=cifar_npz, out_dir=out)
    before = {p.name: p.read_bytes() for p in out.iterdir() if p.is_file()}
    real = os.replace

    def cross_device(src, dst):
        if Path(dst).parent == out:
            raise OSError(errno.EXDEV, "Invalid cross-device link")
        return real(src, dst)

    monkeypatch.setattr(train.os, "replace", cross_device)
    with pytest.raises(train.PublishError, match="could not be published") as e:
        train.train("mlp", epochs=1, limit=300, data_path=cifar_npz, out_dir=out)
    staged = Path(str(e.value).rsplit("kept in ", 1)[1])
    assert staged.parent == out and {"model.keras", "metrics.json", "history.json"} <= {p.name for p in staged.iterdir()}
    assert {p.name: p.read_bytes() for p in out.iterdir() if p.is_file()} == before  # the published run is intact
    monkeypatch.setattr(train.os, "replace", real)
    from cifar_dash import results

    monkeypatch.setenv("CIFAR_DASH_CHECKPOINTS", str(tmp_path))
    assert results.load_result("mlp").status == "trained"  # the staging folder does not confuse readers


def test_progress_keeps_a_bounded_per_step_trace(tmp_path, monkeypatch):
    from cifar_dash import figures

    p = train.Progress(tmp_path / "progress.json", "mlp", total_epochs=2, steps=1000, stream=open(os.devnull, "w"))
    monkeypatch.setattr(train.time, "time", iter(range(0, 10**6)).__next__)  # one second per call: every step writes
    for epoch in range(2):
        p.on_epoch_begin(epoch)
        for step in range(1000):
            p.on_train_batch_end(step, {"loss": 2.0 - epoch - step / 1000, "accuracy": 0.1 + epoch * 0.4})
    trace = json.loads((tmp_path / "progress.json").read_text())["trace"]
    assert len(trace) <= train.Progress.TRACE and trace[-1][0] == 2.0
    xs = [r[0] for r in trace]
    assert xs == sorted(xs) and xs[0] < 0.05  # the whole run's shape, from its first steps
    fig = figures.step_curve(trace)
    assert [d.name for d in fig.data] == ["loss", "accuracy"] and len(fig.data[0].x) == len(trace)
