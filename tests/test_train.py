import dataclasses
import io
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

from cifar_dash import (
    artifacts,
    assess,
    batches,
    callbacks,
    compiling,
    continuation,
    evaluate,
    failures,
    plateau,
    publish,
    results,
    runlog,
    runplan,
    runs,
    stages,
    train,
)
from tests.conftest import ROOT

ENV = {**os.environ, "PYTHONPATH": str(ROOT), "TF_CPP_MIN_LOG_LEVEL": "3"}


def _only_run(out) -> Path:
    (folder,) = [d for d in (Path(out) / "runs").iterdir() if not d.name.startswith(".")]
    return folder


def _assert_valid_artifacts(folder, n_test, key):
    """A finished run folder: evaluation in metrics.json, training in train_info.json, the two joined by run id."""
    m = json.loads((folder / "metrics.json").read_text())
    for field in ("stage", "run_id", "test_accuracy", "n_test", "per_class", "confusion_matrix", "calibration"):
        assert field in m, field
    for field in ("params", "inference", "keras_version", "backend", "machine", "test_data_fingerprint"):
        assert field in m, field
    assert not set(results.TRAIN_FACTS) & set(m)  # training facts live in train_info.json only
    info = json.loads((folder / "train_info.json").read_text())
    assert info["run_id"] == m["run_id"] == folder.name and info["finished"] >= info["started"]
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
    held_out = info["recipe"]["validation_size"] > 0
    assert len(hist) == info["epochs"] and {"loss", "accuracy", "seconds", "phase", "learning_rate"} <= set(hist[0])
    assert ({"val_loss", "val_accuracy"} <= set(hist[0])) == held_out
    assert info["n_validation"] == (max(1, n_test // 10) if held_out else 0)
    joined = results.load_folder(key, folder)
    assert joined.status == "trained" and joined.metrics["epochs"] == info["epochs"]
    return joined.metrics


BACKBONE_KEYS = [s.key for s in stages.STAGES if s.recipe.backbone]


def _smoke(key, cifar_npz, tmp_path, recipe=None):
    out = tmp_path / key
    folder = train.train(key, epochs=1, limit=24, data_path=cifar_npz, backbone_weights="none", out_dir=out, recipe=recipe)
    m = _assert_valid_artifacts(folder, 24, key)
    assert m["epochs"] == len(stages.get(key).recipe.phases)
    assert not (out / "model.keras").exists()  # nothing published
    # evaluate on its own rewrites the same artifacts from the stored model
    again = evaluate.evaluate(key, out_dir=folder, data_path=cifar_npz)
    assert again["test_accuracy"] == pytest.approx(m["test_accuracy"])
    if stages.get(key).recipe.tta:
        assert m["tta_accuracy"][m["tta"]] == pytest.approx(m["test_accuracy"])
    assert not (folder / "backup").exists() and not list(folder.glob("phase-*"))
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


def test_a_run_never_changes_the_published_files(cifar_npz, tmp_path):
    """Byte for byte: training (finished, refused or failed) writes only its own run folder."""
    from tests.conftest import train_and_publish

    out = tmp_path / "mlp"
    train_and_publish("mlp", out, epochs=2, limit=100, data_path=cifar_npz)
    before = {p.name: p.read_bytes() for p in out.iterdir() if p.is_file()}
    folder = train.train("mlp", epochs=1, limit=100, data_path=cifar_npz, out_dir=out)
    progress = json.loads((folder / "progress.json").read_text())
    assert progress["state"] == "done" and progress["epoch"] == 1 and progress["run_id"] == folder.name
    bad = tmp_path / "bad.npz"
    bad.write_bytes(b"garbage")
    from cifar_dash.data import DataError

    with pytest.raises(DataError):
        train.train("mlp", epochs=1, limit=100, data_path=bad, out_dir=out)
    assert {p.name: p.read_bytes() for p in out.iterdir() if p.is_file()} == before
    listed = runs.list_runs("mlp", where=out)  # the run refused for its data left no folder
    assert [r.state for r in listed] == ["finished", "finished"] and sum(r.published for r in listed) == 1


def _cli(out, cifar_npz, epochs, *extra):
    return [
        sys.executable, "-m", "cifar_dash", "train", "mlp", "--epochs", str(epochs), "--limit", "600",
        "--data", str(cifar_npz), "--out", str(out), *extra,
    ]  # fmt: skip


def _wait_for(predicate, timeout=120):
    deadline = time.time() + timeout
    while time.time() < deadline:
        if predicate():
            return True
        time.sleep(0.05)
    return False


def test_resume_after_kill_minus_9_through_backup_and_restore(cifar_npz, tmp_path):
    """kill -9 mid-run: Keras' BackupAndRestore brings the run back at its last backed-up epoch; the log keeps each
    epoch once and the finished run's history has every epoch."""
    out = tmp_path / "mlp"
    env = {**ENV, "CIFAR_DASH_CACHE": str(tmp_path / "cache")}
    proc = subprocess.Popen(_cli(out, cifar_npz, 20), env=env, cwd=ROOT, stderr=subprocess.DEVNULL)

    def two_epochs_logged():
        try:  # the runs/ folder appears a moment before the run's own folder in it
            return len(runlog.read_log(_only_run(out))) >= 2
        except (OSError, ValueError):
            return False

    assert _wait_for(two_epochs_logged)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    folder = _only_run(out)
    run = runs.read_run("mlp", folder)
    assert run.state == "interrupted" and run.resumable and 2 <= run.epochs_done < 20
    assert (folder / "backup" / "phase-0").is_dir() and not (out / "model.keras").exists()
    r = subprocess.run(
        [sys.executable, "-m", "cifar_dash", "train", "mlp", "--out", str(out), "--resume"],
        env=env, cwd=ROOT, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert r.returncode == 0, r.stderr[-2000:]
    assert f"resuming mlp run {folder.name}" in r.stderr  # the settings come from the run's own record
    hist = json.loads((folder / "history.json").read_text())["epochs"]
    assert [h["epoch"] for h in hist] == list(range(1, 21))
    assert runs.read_run("mlp", folder).state == "finished" and not (folder / "backup").exists()


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "Ctrl-C"])
def test_cancel_with_sigterm_or_ctrl_c_keeps_the_run_resumable(sig, cifar_npz, tmp_path):
    out = tmp_path / "mlp"
    env = {**ENV, "CIFAR_DASH_CACHE": str(tmp_path / "cache")}
    proc = subprocess.Popen(_cli(out, cifar_npz, 200), env=env, cwd=ROOT, stderr=subprocess.PIPE, text=True)

    def two_epochs():
        try:
            return runs.read_progress(_only_run(out)).get("epoch", 0) >= 3
        except (OSError, ValueError):
            return False

    assert _wait_for(two_epochs)
    proc.send_signal(sig)
    assert proc.wait(timeout=60) == 130
    run = runs.read_run("mlp", _only_run(out))
    assert run.progress["state"] == "cancelled" and run.state == "interrupted" and run.epochs_done >= 2
    assert not (out / "model.keras").exists()


def test_a_cancel_loses_at_most_the_steps_since_the_last_backup(cifar_npz, tmp_path, monkeypatch):
    """Cancelled part way through epoch 2 with a backup every step: resume starts epoch 2 again from the weights
    backed up at its last step (Keras restores epochs, not steps) and finishes with every epoch logged once."""
    kwargs = dict(epochs=3, limit=600, data_path=cifar_npz, evaluate=False)  # 540 training images: 5 steps an epoch
    out = tmp_path / "mlp"
    original = callbacks.Progress.on_train_batch_end
    fired = []

    def on_train_batch_end(self, batch, logs=None):
        original(self, batch, logs)
        if self.epoch == 1 and batch == 1 and not fired:
            fired.append(batch)
            signal.raise_signal(signal.SIGTERM)  # what the dashboard's Cancel sends

    monkeypatch.setattr(callbacks.Progress, "on_train_batch_end", on_train_batch_end)
    handlers = {s: signal.getsignal(s) for s in callbacks.CancelOnSignal.SIGNALS}
    with pytest.raises(train.Cancelled):
        train.train("mlp", out_dir=out, save_every=1, **kwargs)
    assert {s: signal.getsignal(s) for s in handlers} == handlers  # the caller's handlers are back
    monkeypatch.setattr(callbacks.Progress, "on_train_batch_end", original)
    folder = _only_run(out)
    meta = json.loads((folder / "backup" / "phase-0" / "training_metadata.json").read_text())
    assert meta["epoch"] == 1  # resume restarts epoch 2 (from the weights of its last backed-up step)
    assert runs.read_progress(folder)["state"] == "cancelled"
    train.train("mlp", out_dir=out, resume=folder.name, data_path=cifar_npz)
    hist = json.loads((folder / "history.json").read_text())["epochs"]
    assert [h["epoch"] for h in hist] == [1, 2, 3]


def test_a_resumed_plateau_run_halves_its_rate_as_an_uninterrupted_one(cifar_npz, tmp_path, monkeypatch):
    """The plateau rule's memory is not in Keras' backup; it is rebuilt from the run's log, so a run cancelled
    after epoch 3 and resumed ends with the same rates and weights as one never stopped."""
    recipe = _plateau_mlp_recipe()
    kwargs = dict(epochs=6, limit=200, data_path=cifar_npz, evaluate=False, recipe=recipe)
    ref = train.train("mlp", out_dir=tmp_path / "a", **kwargs)
    ref_hist = json.loads((ref / "history.json").read_text())["epochs"]
    assert len({h["learning_rate"] for h in ref_hist}) > 1  # the schedule acted

    original = callbacks.Progress.on_epoch_end

    def on_epoch_end(self, epoch, logs=None):
        original(self, epoch, logs)
        if epoch == 2:
            signal.raise_signal(signal.SIGTERM)

    monkeypatch.setattr(callbacks.Progress, "on_epoch_end", on_epoch_end)
    with pytest.raises(train.Cancelled):
        train.train("mlp", out_dir=tmp_path / "b", **kwargs)
    monkeypatch.setattr(callbacks.Progress, "on_epoch_end", original)
    folder = train.train("mlp", out_dir=tmp_path / "b", resume=True, data_path=cifar_npz)
    hist = json.loads((folder / "history.json").read_text())["epochs"]
    assert [h["learning_rate"] for h in hist] == pytest.approx([h["learning_rate"] for h in ref_hist])
    for a, b in zip(ref_hist, hist):
        assert b["val_accuracy"] == pytest.approx(a["val_accuracy"], abs=1e-6)
        assert b["loss"] == pytest.approx(a["loss"], rel=1e-4)
    wa = artifacts.load_model(ref / "model.keras").get_weights()
    wb = artifacts.load_model(folder / "model.keras").get_weights()
    assert all(np.allclose(x, y, rtol=1e-4, atol=1e-6) for x, y in zip(wa, wb))


def test_a_run_killed_during_evaluation_is_evaluated_on_resume(cifar_npz, tmp_path, monkeypatch):
    out = tmp_path / "mlp"

    def crash(*args, **kwargs):
        raise MemoryError("simulated crash while evaluating")

    real = assess.assess
    monkeypatch.setattr(assess, "assess", crash)
    with pytest.raises(MemoryError) as caught:
        train.train("mlp", epochs=2, limit=200, data_path=cifar_npz, out_dir=out)
    monkeypatch.setattr(assess, "assess", real)
    folder = _only_run(out)
    assert isinstance(caught.value, failures.OutOfMemory)  # out of memory: what to do, not only what happened
    assert "out of the machine's memory while evaluating" in str(caught.value)
    assert f"`python -m cifar_dash train mlp --resume {folder.name}` evaluates it" in str(caught.value)
    run = runs.read_run("mlp", folder)
    assert run.state == "interrupted" and "not evaluated" in run.problem
    with pytest.raises(runs.RunError, match="only a finished run can be promoted"):
        publish.promote("mlp", folder.name, where=out)
    train.train("mlp", out_dir=out, resume=True, data_path=cifar_npz)
    _assert_valid_artifacts(folder, 200, "mlp")


def test_resuming_a_live_run_is_refused_and_two_runs_of_a_stage_may_train_at_once(cifar_npz, tmp_path):
    out = tmp_path / "mlp"
    folder = out / "runs" / "20260101-000000-abcd"
    proc = _fake_live_run(folder)
    try:
        with pytest.raises(runplan.AlreadyTraining, match=f"already training \\(pid {proc.pid}\\)"):
            train.train("mlp", out_dir=out, resume=folder.name, data_path=cifar_npz)
        assert [r.state for r in runs.list_runs("mlp", where=out)] == ["training"]
        other = train.train("mlp", epochs=1, limit=100, data_path=cifar_npz, out_dir=out, evaluate=False)
        assert other != folder  # a second run is a folder of its own: never two writers on one folder
    finally:
        proc.kill()
        proc.wait()
    assert not any(runs.pid_alive(p) for p in (0, -1, None, "x"))
    assert runs.read_run("mlp", folder).state == "damaged"  # its process is gone and it never wrote a record


@pytest.mark.slow  # tests/test_distribute.py trains under JAX in the default run
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
    m = json.loads((_only_run(out) / "metrics.json").read_text())
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
    b = batches.Batches(x, y, batch_size=16, mixup_alpha=0.4, seed=3)
    xb, yb = b[0]
    np.testing.assert_allclose(yb.sum(axis=1), 1, rtol=1e-6)
    # pixel value / 200 equals the weight of class 1 in the label, image by image
    np.testing.assert_allclose(xb[:, 0, 0, 0] / 200, yb[:, 1], atol=1e-5)
    assert ((yb > 0) & (yb < 1)).any()


def test_loader_shifts_are_exact_pixels_and_flips_alternate_by_epoch():
    rng = np.random.default_rng(0)
    x = rng.integers(0, 256, size=(40, 32, 32, 3)).astype("uint8")
    y = np.arange(40) % 10
    b = batches.Batches(x, y, batch_size=40, seed=5, augment=("flip_alternate", "crop:2"))
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
    again = batches.Batches(x, y, batch_size=40, seed=5, augment=("flip_alternate", "crop:2"))
    again.set_epoch(1)
    np.testing.assert_array_equal(b[0][0], again[0][0])
    with pytest.raises(ValueError, match="unknown loader augmentation"):
        batches.Batches(x, y, batch_size=8, augment=("rotate",))


def test_speedrun_resume_state_keeps_its_lookahead_optimizer(tmp_path):
    import keras

    from cifar_dash import models
    from cifar_dash.layers import LookaheadSGD

    stage = stages.get("speedrun")
    recipe = stage.recipe
    model = stage.build(recipe, backbone_weights=None)
    x = np.random.default_rng(0).integers(0, 256, size=(16, 32, 32, 3)).astype("uint8")
    y = np.eye(10, dtype="float32")[np.arange(16) % 10]
    models.init_from_data(model, x)
    compiling.compile_for_phase(model, recipe, recipe.phases[0], steps_per_epoch=49)
    opt = model.optimizer
    assert isinstance(opt, LookaheadSGD) and opt.start_step == 3 * 49 and opt.total_steps == 10 * 49
    model.fit(x.astype("float32"), y, batch_size=8, epochs=1, verbose=0)
    model.save(tmp_path / "m.keras")
    again = keras.saving.load_model(tmp_path / "m.keras", compile=True)  # resume's path: Keras' own
    assert isinstance(again.optimizer, LookaheadSGD)
    assert again.optimizer.get_config() == opt.get_config()
    assert int(keras.ops.convert_to_numpy(again.optimizer.iterations)) == 2
    again.fit(x.astype("float32"), y, batch_size=8, epochs=1, verbose=0)
    assert int(keras.ops.convert_to_numpy(again.optimizer.iterations)) == 4


def test_lookahead_follows_its_rule_through_the_public_optimizer_api():
    """LookaheadSGD against the rule written out in NumPy: loss w**2 on one weight, plain SGD (no momentum), so each
    step is w -= lr * 2w; then the average and, every 3rd step, the pull back; fit ends on the average."""
    import keras

    from cifar_dash.layers import LookaheadSGD

    model = keras.Sequential([keras.Input((1,)), keras.layers.Dense(1, use_bias=False, kernel_initializer="ones")])
    opt = LookaheadSGD(0.1, momentum=0.0, start_step=2, total_steps=10, every=3, base=0.9, power=1.0)
    model.compile(optimizer=opt, loss="mse")
    model.fit(np.ones((10, 1), "float32"), np.zeros((10, 1), "float32"), batch_size=1, epochs=1, verbose=0, shuffle=False)
    w, avg = 1.0, 0.0
    for n in range(1, 11):
        w -= 0.1 * 2 * w
        rho = 0.0 if (n < 2 or n == 1) else (0.9**3 * (n / 10) if n % 3 == 0 else 1.0)
        avg = rho * avg + (1 - rho) * w
        if n % 3 == 0:
            w = avg
    assert float(model.get_weights()[0][0, 0]) == pytest.approx(avg, rel=1e-5)  # fit ends on the average
    assert not any(v is model.weights[0] for v in opt.variables)  # the model's weight is not optimizer state


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


def test_the_plateau_rule_folded_over_a_real_runs_log_gives_the_rates_it_trained_at(cifar_npz, tmp_path):
    recipe = _plateau_mlp_recipe()
    # 20 validation images: ties in validation accuracy are common, so the rate is halved several times
    folder = train.train("mlp", epochs=8, limit=200, data_path=cifar_npz, out_dir=tmp_path, recipe=recipe, evaluate=False)
    hist = json.loads((folder / "history.json").read_text())["epochs"]
    rates = [h["learning_rate"] for h in hist]
    assert min(rates) < rates[0]  # the schedule did act, so the fold is checked against real halvings
    for k in range(1, len(hist)):
        memory, lr = plateau.fold(hist[:k], 1e-3, 0.5, 1)
        assert lr == pytest.approx(rates[k], rel=1e-6), k
        assert memory.best == max(h["val_accuracy"] for h in hist[:k])


def test_continue_from_adds_epochs_to_a_run(cifar_npz, tmp_path):
    from tests.conftest import train_and_publish

    out = tmp_path / "mlp"
    recipe = _plateau_mlp_recipe()
    first = train_and_publish("mlp", out, epochs=2, limit=200, data_path=cifar_npz, recipe=recipe)
    first_info = json.loads((first / "train_info.json").read_text())
    first_hist = json.loads((first / "history.json").read_text())["epochs"]
    first_accuracy = json.loads((first / "metrics.json").read_text())["test_accuracy"]

    second = train.train(
        "mlp", epochs=4, limit=200, data_path=cifar_npz, out_dir=out, recipe=recipe, continue_from="published"
    )
    info = json.loads((second / "train_info.json").read_text())
    hist = json.loads((second / "history.json").read_text())["epochs"]
    m = _assert_valid_artifacts(second, 200, "mlp")
    assert m["epochs"] == 4 and [h["epoch"] for h in hist] == [1, 2, 3, 4]
    assert hist[:2] == first_hist  # the first run's epochs are kept as they were
    prior = info["continued_from"]
    assert prior["run_id"] == first_info["run_id"] != info["run_id"] and prior["epochs"] == 2
    assert info["train_seconds"] == pytest.approx(sum(h["seconds"] for h in hist), abs=0.05)
    assert info["started"] == first_info["started"]
    assert hist[2]["learning_rate"] == pytest.approx(plateau.fold(first_hist, 1e-3, 0.5, 1)[1])
    from cifar_dash import report

    r = results.load_folder("mlp", second)
    assert prior["test_accuracy"] == first_accuracy  # what the continued run measured stays on record
    assert (
        f"epochs 3-4 continued from a 2-epoch run that measured {first_accuracy:.2%} (optimizer restarted)"
        in report.deviations(r)
    )

    # continued again, by run id: the chain of runs is kept, so every epoch still says which run trained it
    second_accuracy = json.loads((second / "metrics.json").read_text())["test_accuracy"]
    third = train.train(
        "mlp", epochs=5, limit=200, data_path=cifar_npz, out_dir=out, recipe=recipe, continue_from=second.name,
        mixed_precision=True,
    )  # fmt: skip
    third_info = json.loads((third / "train_info.json").read_text())
    assert third_info["continued_from"]["run_id"] == info["run_id"] and third_info["continued_from"]["epochs"] == 4
    assert third_info["continued_from"]["continued_from"] == prior  # the first link, as the second run recorded it
    notes = report.deviations(results.load_folder("mlp", third))
    start = notes.index("bfloat16 compute in epoch 5")
    assert notes[start : start + 3] == [
        "bfloat16 compute in epoch 5",
        f"epochs 3-4 continued from a 2-epoch run that measured {first_accuracy:.2%} (optimizer restarted)",
        f"epoch 5 continued from a 4-epoch run that measured {second_accuracy:.2%} (optimizer restarted)",
    ]


def test_continue_from_refuses_what_is_not_the_same_run_cut_short(cifar_npz, tmp_path):
    out = tmp_path / "mlp"
    recipe = _plateau_mlp_recipe()
    first = train.train("mlp", epochs=2, limit=200, data_path=cifar_npz, out_dir=out, recipe=recipe, evaluate=False)
    cases = [
        (dict(epochs=2), "a continuation needs more than 2, not 2"),  # nothing to add
        (dict(epochs=3, seed=5), "other settings (seed)"),
        (dict(epochs=3, limit=100), "limit 200, not 100"),
        (dict(epochs=3, recipe=stages.get("mlp").recipe), "other settings (lr_schedule"),
    ]
    for kwargs, message in cases:
        kw = {"limit": 200, "recipe": recipe, **kwargs}
        with pytest.raises(continuation.ContinueError, match=re.escape(message)):
            train.train("mlp", data_path=cifar_npz, out_dir=out, continue_from=first.name, **kw)
    assert [r.run_id for r in runs.list_runs("mlp", where=out)] == [first.name]  # the refused runs left no folder
    with pytest.raises(continuation.ContinueError, match="holds stage 'mlp', not 'cnn'"):
        train.train("cnn", epochs=3, limit=200, data_path=cifar_npz, out_dir=tmp_path / "cnn", continue_from=first)
    with pytest.raises(continuation.ContinueError, match="no finished run"):
        train.train(
            "mlp", epochs=3, limit=200, data_path=cifar_npz, out_dir=tmp_path / "x", recipe=recipe,
            continue_from=tmp_path / "nothing",
        )  # fmt: skip
    # a one-cycle recipe's rate spans the whole run: extending it would not be the recipe
    vgg = train.train("vgg_aug", epochs=1, limit=24, data_path=cifar_npz, out_dir=tmp_path / "vgg", evaluate=False)
    with pytest.raises(continuation.ContinueError, match="cannot be extended"):
        train.train("vgg_aug", epochs=2, limit=24, data_path=cifar_npz, out_dir=tmp_path / "vgg", continue_from=vgg)


def test_a_two_phase_run_resumes_and_is_continued_in_its_last_phase(cifar_npz, tmp_path, tiny_backbones, monkeypatch):
    """mobilenetv2_finetune (head, then fine-tuning): a run cancelled in its second phase resumes there from the
    first phase's saved weights and its own backup; a continuation adds fine-tuning epochs only."""
    out = tmp_path / "mobilenetv2_finetune"
    kw = dict(limit=24, data_path=cifar_npz, out_dir=out, backbone_weights="none")
    original = callbacks.Progress.on_epoch_end

    def on_epoch_end(self, epoch, logs=None):
        original(self, epoch, logs)
        if epoch == 1:  # the first fine-tuning epoch
            signal.raise_signal(signal.SIGTERM)

    monkeypatch.setattr(callbacks.Progress, "on_epoch_end", on_epoch_end)
    with pytest.raises(train.Cancelled):
        train.train("mobilenetv2_finetune", epochs=(1, 2), evaluate=False, **kw)
    monkeypatch.setattr(callbacks.Progress, "on_epoch_end", original)
    folder = _only_run(out)
    assert (folder / "phase-0.keras").exists() and (folder / "backup" / "phase-1").is_dir()
    first = train.train("mobilenetv2_finetune", resume=True, data_path=cifar_npz, out_dir=out)
    hist = json.loads((first / "history.json").read_text())["epochs"]
    assert [h["phase"] for h in hist] == ["head", "finetune", "finetune"] and not (first / "phase-0.keras").exists()
    with pytest.raises(continuation.ContinueError, match=re.escape("not 2,3 (e.g. 1,3)")):
        train.train("mobilenetv2_finetune", epochs=(2, 3), continue_from=first.name, **kw)
    cont = train.train("mobilenetv2_finetune", epochs=(1, 3), continue_from=first.name, **kw)
    info = json.loads((cont / "train_info.json").read_text())
    hist = json.loads((cont / "history.json").read_text())["epochs"]
    assert [p["epochs"] for p in info["recipe"]["phases"]] == [1, 3] and len(hist) == 4
    assert info["continued_from"]["run_id"] == first.name
    assert [h["phase"] for h in hist] == ["head", "finetune", "finetune", "finetune"]


def _fake_live_run(folder, state="running"):
    """A live process that a run folder's progress.json names as training it (as a terminal's run would)."""
    proc = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"])
    folder.mkdir(parents=True, exist_ok=True)
    (folder / runs.PROGRESS).write_text(
        json.dumps(
            {
                "stage": folder.parent.parent.name,
                "run_id": folder.name,
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


def test_an_unwritable_runs_folder_is_refused_before_training(cifar_npz, tmp_path):
    out = tmp_path / "mlp"
    out.mkdir()
    (out / "runs").write_text("a file where the runs folder should be")
    with pytest.raises(runplan.PublishError, match="choose another --out"):
        train.train("mlp", epochs=1, limit=100, data_path=cifar_npz, out_dir=out)


def test_progress_keeps_a_bounded_per_step_trace(tmp_path, monkeypatch):
    from cifar_dash import figures

    p = callbacks.Progress(tmp_path, "mlp", total_epochs=2, steps=1000, stream=open(os.devnull, "w"))
    monkeypatch.setattr(callbacks.time, "time", iter(range(0, 10**6)).__next__)  # one second per call: every step writes
    for epoch in range(2):
        p.on_epoch_begin(epoch)
        for step in range(1000):
            p.on_train_batch_end(step, {"loss": 2.0 - epoch - step / 1000, "accuracy": 0.1 + epoch * 0.4})
    trace = json.loads((tmp_path / "progress.json").read_text())["trace"]
    assert len(trace) <= callbacks.Progress.TRACE and trace[-1][0] == 2.0
    xs = [r[0] for r in trace]
    assert xs == sorted(xs) and xs[0] < 0.05  # the whole run's shape, from its first steps
    fig = figures.step_curve(trace)
    assert [d.name for d in fig.data] == ["loss", "accuracy"] and len(fig.data[0].x) == len(trace)


def _published_files(out: Path) -> dict:
    return {p.name: p.read_bytes() for p in out.iterdir() if p.is_file()}


def test_out_of_memory_names_the_settings_to_change_and_a_smaller_batch_trains(cifar_npz, tmp_path, monkeypatch):
    """A step that runs out of device memory (TensorFlow's own ResourceExhaustedError, raised inside fit): one
    message with the batch size and precision it ran at and the settings that need less; the run is marked failed;
    the published model is untouched; the advised --batch-size then trains, recorded in the run's recipe."""
    import tensorflow as tf

    from tests.conftest import train_and_publish

    out = tmp_path / "mlp"
    train_and_publish("mlp", out, epochs=1, limit=300, data_path=cifar_npz)
    before = _published_files(out)
    original = callbacks.Progress.on_train_batch_end

    def on_train_batch_end(self, batch, logs=None):
        original(self, batch, logs)
        raise tf.errors.ResourceExhaustedError(None, None, "OOM when allocating tensor with shape[128,3072]")

    monkeypatch.setattr(callbacks.Progress, "on_train_batch_end", on_train_batch_end)
    with pytest.raises(failures.OutOfMemory) as caught:
        train.train("mlp", out_dir=out, epochs=1, limit=300, data_path=cifar_npz)
    message = str(caught.value)
    assert "ran out of memory on " in message and "while training (batch size 128, float32, tensorflow)" in message
    assert "--batch-size 64" in message and "--mixed-precision" in message
    assert "The published model is unchanged" in message and "ResourceExhaustedError: OOM when allocating" in message
    assert isinstance(caught.value.__cause__, tf.errors.ResourceExhaustedError)
    failed = next(r for r in runs.list_runs("mlp", where=out) if r.progress.get("state") == "failed")
    assert failed.progress["message"] == f"OutOfMemory: {message}"
    assert _published_files(out) == before

    with pytest.raises(ValueError, match="keeps it; start a new run for --batch-size 64"):
        train.train("mlp", out_dir=out, resume=failed.run_id, batch_size=64)

    monkeypatch.setattr(callbacks.Progress, "on_train_batch_end", original)
    import io

    said = io.StringIO()
    folder = train.train("mlp", out_dir=out, epochs=1, limit=300, data_path=cifar_npz, batch_size=64, stream=said)
    info = json.loads((folder / "train_info.json").read_text())
    assert info["recipe"]["batch_size"] == 64
    steps = -(-info["n_train"] // 64)
    assert f"step {steps}/{steps} " in said.getvalue() and steps != -(-info["n_train"] // 128)
    assert _published_files(out) == before


def test_out_of_memory_is_recognised_from_every_backend():
    import jax
    import tensorflow as tf

    jax_oom = jax.errors.JaxRuntimeError("RESOURCE_EXHAUSTED: Out of memory while trying to allocate 12884901888 bytes.")
    chained = ValueError("step failed")
    chained.__cause__ = jax_oom
    for e in (
        MemoryError(),
        tf.errors.ResourceExhaustedError(None, None, "OOM when allocating tensor"),
        jax_oom,
        RuntimeError("CUDA out of memory. Tried to allocate 2.00 GiB"),
        chained,
    ):
        assert failures.is_out_of_memory(e), repr(e)
    for e in (ValueError("shapes (3,) and (4,) do not match"), RuntimeError("INTERNAL: failed"), KeyboardInterrupt()):
        assert not failures.is_out_of_memory(e), repr(e)


def test_out_of_memory_advice_on_several_devices_and_in_bfloat16():
    from cifar_dash import distribute

    recipe = dataclasses.replace(stages.get("resnet50v2").recipe, mixed_precision=True)
    plan = distribute.Plan("tensorflow", ["/device:CPU:0", "/device:CPU:1"])
    text = failures.out_of_memory_advice("resnet50v2", recipe, plan, "loading", MemoryError("host"))
    assert text.startswith("resnet50v2 ran out of the machine's memory while loading the data (batch size 64, 32 per")
    assert "--batch-size 32" in text and "--mixed-precision" not in text and "--limit N" in text


@pytest.mark.parametrize("backend, stage, batch, headroom", [("tensorflow", "mlp", 18000, 250), ("jax", "cnn", 16384, 400)])
def test_a_real_out_of_memory_is_caught_and_explained(backend, stage, batch, headroom, tmp_path):
    """Not a simulated error: the process's address space is capped (RLIMIT_AS) ``headroom`` MB above what it holds
    after a first small run, and a batch of many thousand images cannot be allocated (TensorFlow, mlp: loading the
    data needs about 65 MB more, training about 530 MB, so 400 MB was too close: a run sometimes fit; JAX, cnn: at
    250 MB NumPy's host allocation fails before XLA's). TensorFlow's own OOM (in its
    tf.data pipeline or in a step, depending on the machine) or XLA's RESOURCE_EXHAUSTED under JAX reaches the
    message, which quotes the line of the error that was raised, whatever its wording on this machine."""
    if backend == "jax":
        pytest.importorskip("jax")
    from tests.conftest import make_cifar

    data = tmp_path / "cifar.npz"
    np.savez(data, **make_cifar(20000, 200))
    code = f"""
import io, resource
from cifar_dash import failures, train
train.train({stage!r}, epochs=1, limit=200, data_path={str(data)!r}, out_dir={str(tmp_path / "warm")!r},
            evaluate=False, stream=io.StringIO())
size = next(int(x.split()[1]) for x in open("/proc/self/status") if x.startswith("VmSize")) * 1024
resource.setrlimit(resource.RLIMIT_AS, (size + {headroom} * 2**20, resource.RLIM_INFINITY))
try:
    train.train({stage!r}, epochs=1, limit=20000, data_path={str(data)!r}, out_dir={str(tmp_path / "run")!r},
                batch_size={batch}, stream=io.StringIO())
except failures.OutOfMemory as e:
    print("OOM", e)
    cause = e.__cause__
    print("CAUSE", failures.is_out_of_memory(cause), type(cause).__name__ + ": " + failures._first_line(cause))
"""
    env = {**ENV, "KERAS_BACKEND": backend}
    r = subprocess.run([sys.executable, "-c", code], env=env, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    assert f"OOM {stage} ran out of memory on " in r.stdout, r.stdout
    assert f"while training (batch size {batch}, float32, {backend})" in r.stdout
    assert f"--batch-size {batch // 2}" in r.stdout and "--mixed-precision" in r.stdout
    cause = r.stdout.split("\nCAUSE ", 1)[1].strip()
    assert cause.startswith("True ") and f"({cause[len('True ') :]})" in r.stdout  # the raised error's own line
    (run,) = runs.list_runs(stage, where=tmp_path / "run")
    assert run.progress["state"] == "failed" and run.progress["message"].startswith(f"OutOfMemory: {stage} ran out")


def test_evaluating_again_keeps_the_map_separation_of_the_same_run_and_images(cifar_npz, tmp_path):
    folder = train.train("mlp", epochs=1, limit=200, data_path=cifar_npz, out_dir=tmp_path / "mlp")
    first = artifacts.read_json(folder / "metrics.json")
    assert first["separation"]["n"] == 200 and (folder / "embedding.npz").exists()
    again = evaluate.evaluate("mlp", out_dir=folder, data_path=cifar_npz, stream=io.StringIO())
    assert again["separation"] == first["separation"]
    assert artifacts.read_json(folder / "metrics.json")["separation"] == first["separation"]
    # fewer test images: the stored map is of other images, so its number is not carried over
    fewer = evaluate.evaluate("mlp", out_dir=folder, data_path=cifar_npz, limit=100, stream=io.StringIO())
    assert fewer["n_test"] == 100 and "separation" not in fewer
