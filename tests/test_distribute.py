"""Several devices, Keras' own way (issue: many devices): DataParallel under JAX and MirroredStrategy under
TensorFlow, each on two virtual CPU devices. One step on two devices matches one device, the batch really is
split, and a run trained on two devices saves and loads like any other."""

import json
import os
import subprocess
import sys

import pytest

from tests.conftest import ROOT

ENV = {**os.environ, "PYTHONPATH": str(ROOT), "TF_CPP_MIN_LOG_LEVEL": "3"}
TOLERANCE = 1e-6  # float32 sums in another order: the gradients are averaged across the two halves of the batch

ONE_STEP = r"""
import json, os, sys
import numpy as np
BACKEND = os.environ["KERAS_BACKEND"]
if BACKEND == "tensorflow":
    import tensorflow as tf
    cpu = tf.config.list_physical_devices("CPU")[0]
    tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
import keras
from cifar_dash import distribute

seen = []

class Probe(keras.layers.Layer):
    # the shape of the batch one device's step sees
    def call(self, x):
        if BACKEND == "jax":
            import jax
            jax.debug.inspect_array_sharding(x, callback=lambda s: seen.append(list(s.shard_shape((8, 6)))))
        else:
            seen.append(list(x.shape))
        return x

rng = np.random.default_rng(0)
x = rng.normal(size=(8, 6)).astype("float32")
y = np.eye(3, dtype="float32")[rng.integers(0, 3, 8)]

def one_step(spec):
    keras.utils.set_random_seed(0)
    plan = distribute.plan(spec, 8)
    with plan.scope():
        m = keras.Sequential([keras.Input((6,)), Probe(), keras.layers.Dense(4, activation="relu"),
                              keras.layers.Dense(3, activation="softmax")])
        m.compile(keras.optimizers.SGD(0.5), loss="categorical_crossentropy")
        start = len(seen)
        m.fit(x, y, batch_size=8, epochs=1, verbose=0, shuffle=False)
    return [np.asarray(w) for w in m.get_weights()], plan.record, seen[start:]

w1, d1, s1 = one_step("1")
w2, d2, s2 = one_step("all")
out = {"one": d1, "two": d2, "diff": max(float(np.abs(a - b).max()) for a, b in zip(w1, w2)),
       "moved": max(float(np.abs(a - b).max()) for a, b in zip(w1, one_step("1")[0])), "shapes": s2}
errors = []
for spec, batch in (("all", 7), ("5", 8), ("0,7", 8), ("x", 8)):
    try:
        distribute.plan(spec, batch)
    except distribute.DeviceError as e:
        errors.append(str(e))
out["errors"] = errors
print("RESULT " + json.dumps(out))
"""


def _run(code, backend, extra_env=None, timeout=300):
    env = {**ENV, "KERAS_BACKEND": backend, **(extra_env or {})}
    r = subprocess.run([sys.executable, "-c", code], env=env, cwd=ROOT, capture_output=True, text=True, timeout=timeout)
    assert r.returncode == 0, r.stderr[-3000:]
    line = next(x for x in r.stdout.splitlines() if x.startswith("RESULT "))
    return json.loads(line[len("RESULT ") :])


@pytest.mark.parametrize("backend", ["jax", "tensorflow"])
def test_one_step_on_two_devices_matches_one_device_and_splits_the_batch(backend):
    if backend == "jax":
        pytest.importorskip("jax")
    out = _run(ONE_STEP, backend, {"XLA_FLAGS": "--xla_force_host_platform_device_count=2"})
    assert out["one"] is None and out["two"]["n"] == 2
    assert out["two"]["strategy"] == {"jax": "DataParallel", "tensorflow": "MirroredStrategy"}[backend]
    assert out["diff"] <= TOLERANCE and out["moved"] == 0.0
    assert [4, 6] in out["shapes"] and [8, 6] not in out["shapes"]  # each device steps on half the batch
    said = " | ".join(out["errors"])
    assert "the batch of 7 does not divide across 2 devices; choose --devices 1" in said
    assert "--devices 5: this machine has 2 device(s)" in said and "no device 7" in said
    assert "give 'all', a count, or device numbers" in said


def test_a_run_trained_on_two_devices_saves_and_loads_like_any_other(cifar_npz, tmp_path):
    pytest.importorskip("jax")
    out = tmp_path / "mlp"
    env = {
        **ENV,
        "KERAS_BACKEND": "jax",
        "XLA_FLAGS": "--xla_force_host_platform_device_count=2",
        "CIFAR_DASH_CACHE": str(tmp_path / "cache"),
    }
    cmd = [sys.executable, "-m", "cifar_dash", "train", "mlp", "--epochs", "1", "--limit", "200"]
    cmd += ["--data", str(cifar_npz), "--out", str(out), "--devices", "all"]
    r = subprocess.run(cmd, env=env, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    assert "training on 2 devices: cpu:0, cpu:1" in r.stderr
    from cifar_dash import artifacts, results, runs

    (run,) = runs.list_runs("mlp", where=out)
    assert run.state == "finished" and run.info["devices"] == {
        "strategy": "DataParallel",
        "devices": ["cpu:0", "cpu:1"],
        "n": 2,
    }
    assert results.load_folder("mlp", run.folder).ok
    model = artifacts.load_model(run.folder / "model.keras")  # here, under TensorFlow
    assert model.predict_on_batch(__import__("numpy").zeros((2, 32, 32, 3), "float32")).shape == (2, 10)
    bad = subprocess.run(cmd[:-1] + ["3"], env=env, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert bad.returncode == 2 and "--devices 3: this machine has 2 device(s)" in bad.stderr
    odd = cmd.copy()
    odd[odd.index("200")] = "256"  # 231 training images: a last batch of 103
    bad = subprocess.run(odd, env=env, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert bad.returncode == 2 and "which 2 devices cannot share; choose --limit 260 or 262" in bad.stderr
    assert len(runs.list_runs("mlp", where=out)) == 1  # each refused before it left a run folder


TF_TRAIN = r"""
import sys
import tensorflow as tf

cpu = tf.config.list_physical_devices("CPU")[0]
tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
from cifar_dash import cli

sys.exit(cli.main(sys.argv[1:]))
"""


@pytest.mark.slow  # two TensorFlow training runs in subprocesses (about 40 s)
def test_under_tensorflow_a_run_on_two_devices_feeds_tf_data_and_refuses_uneven_batches(cifar_npz, tmp_path):
    """MirroredStrategy gets the tf.data pipeline; XLA, which cannot reach its per-device variables, is turned off
    with a note; a --limit whose last batch two devices cannot share is refused with the limits that would do,
    before anything is written."""
    out = tmp_path / "mlp"
    env = {**ENV, "KERAS_BACKEND": "tensorflow", "CIFAR_DASH_CACHE": str(tmp_path / "cache")}
    base = [sys.executable, "-c", TF_TRAIN, "train", "mlp", "--epochs", "1", "--data", str(cifar_npz)]
    base += ["--out", str(out), "--devices", "all"]
    bad = subprocess.run(base + ["--limit", "256"], env=env, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert bad.returncode == 2, bad.stderr[-2000:]
    assert "the last training batch holds 103 images (231 % 128), which 2 devices cannot share" in bad.stderr
    assert "choose --limit 260 or 262, or --devices 1" in bad.stderr
    from cifar_dash import runs

    assert runs.list_runs("mlp", where=out) == []
    r = subprocess.run(base + ["--limit", "260", "--xla", "on"], env=env, cwd=ROOT, capture_output=True, text=True,
                       timeout=300)  # fmt: skip
    assert r.returncode == 0, r.stderr[-3000:]
    assert "float32, XLA off (asked for; XLA off: several TensorFlow devices)" in r.stderr
    (run,) = runs.list_runs("mlp", where=out)
    assert run.state == "finished" and run.info["devices"]["strategy"] == "MirroredStrategy"
    assert run.info["devices"]["n"] == 2 and run.info["n_train"] == 234 and run.info["recipe"]["jit_compile"] is False


TF_RESUME = r"""
import json, signal, sys
import tensorflow as tf

cpu = tf.config.list_physical_devices("CPU")[0]
tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
from cifar_dash import callbacks, distribute, train

data, out = sys.argv[1], sys.argv[2]
original = callbacks.Progress.on_epoch_end


def cancel_after_the_first_epoch(self, epoch, logs=None):
    original(self, epoch, logs)
    if epoch == 0:
        signal.raise_signal(signal.SIGTERM)  # what the dashboard's Cancel sends


def started_on_one_device(limit, where):
    callbacks.Progress.on_epoch_end = cancel_after_the_first_epoch
    try:
        train.train("mlp", epochs=2, limit=limit, data_path=data, out_dir=where, xla="on", evaluate=False)
    except train.Cancelled:
        pass
    callbacks.Progress.on_epoch_end = original


result = {}
started_on_one_device(260, out + "/even")  # 234 training images: last batch 106, which two devices share
result["folder"] = str(train.train("mlp", out_dir=out + "/even", resume=True, data_path=data, devices="all"))
started_on_one_device(256, out + "/odd")  # 231 training images: last batch 103
try:
    train.train("mlp", out_dir=out + "/odd", resume=True, data_path=data, devices="all")
except distribute.DeviceError as e:
    result["refused"] = str(e)
print("RESULT " + json.dumps(result))
"""


@pytest.mark.slow  # four TensorFlow training runs in one subprocess (about 30 s)
def test_under_tensorflow_a_run_started_on_one_device_with_xla_resumes_on_two(cifar_npz, tmp_path):
    """A run started on one device with XLA resumes on two under TensorFlow: XLA is turned off for the rest (it
    cannot reach MirroredStrategy's per-device variables; the step used to fail), and train_info records where the
    rest trained. A resumed run whose last batch two devices cannot share is refused and keeps its folder."""
    from cifar_dash import runs

    env = {**ENV, "KERAS_BACKEND": "tensorflow", "CIFAR_DASH_CACHE": str(tmp_path / "cache")}
    r = subprocess.run([sys.executable, "-c", TF_RESUME, str(cifar_npz), str(tmp_path)], env=env, cwd=ROOT,
                       capture_output=True, text=True, timeout=600)  # fmt: skip
    assert r.returncode == 0, r.stderr[-3000:]
    result = json.loads(next(x for x in r.stdout.splitlines() if x.startswith("RESULT "))[len("RESULT ") :])
    assert "resuming mlp run" in r.stderr and "(XLA off: several TensorFlow devices)" in r.stderr
    (run,) = runs.list_runs("mlp", where=tmp_path / "even")
    assert run.info["finished"] is not None and str(run.folder) == result["folder"]  # trained (evaluate=False)
    assert [h["epoch"] for h in run.history()] == [1, 2]
    assert run.info["recipe"]["jit_compile"] is True and run.info["devices"] is None  # as it started
    (resumed,) = run.info["resumed"]
    assert resumed["devices"]["n"] == 2 and resumed["devices"]["strategy"] == "MirroredStrategy"
    assert resumed["jit_compile"] is False
    assert "the last training batch holds 103 images (231 % 128), which 2 devices cannot share" in result["refused"]
    assert "keeps its --limit when resumed: resume it with --devices 1" in result["refused"]
    (odd,) = runs.list_runs("mlp", where=tmp_path / "odd")
    assert odd.state == "interrupted" and odd.epochs_done == 1  # refused before anything was lost


def test_even_counts_names_the_largest_device_counts_whose_batches_split():
    from cifar_dash import distribute

    def sizes(n_train, n_val=0):
        return {"training": (n_train, 128), "validation": (n_val, 256)}

    assert distribute.even_counts(8, sizes(240)) == [4, 8]  # last batch 112: 8 and 4 share it, 7, 6, 5 do not
    assert distribute.even_counts(4, sizes(234)) == [1, 2]  # last batch 106
    assert distribute.even_counts(4, sizes(231)) == [1]  # last batch 103: only one device
    assert distribute.even_counts(8, sizes(240, 300)) == [2, 4]  # the validation's last batch of 44 rules out 8
