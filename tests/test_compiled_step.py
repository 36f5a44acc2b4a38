"""The train step compiles on every backend that can compile it: Keras' affine augmentation layers (RandomTranslation,
RandomRotation, RandomZoom) mark themselves ``supports_jit = False``, which left the whole JAX train step of the
vgg_aug and ResNet stages uncompiled (op by op: 146x slower than plain ResNet50 on an H200)."""

import json
import math
import os
import subprocess
import sys

import pytest

from tests.conftest import ROOT

ENV = {**os.environ, "PYTHONPATH": str(ROOT), "TF_CPP_MIN_LOG_LEVEL": "3"}

CHECK = r"""
import json
import numpy as np
import keras
from cifar_dash import artifacts, compiling, models, stages, train

out = {"backend": keras.backend.backend(), "stages": {}}
events = []  # JAX's own compile and trace events: a step that retraces or recompiles shows up here
if out["backend"] == "jax":
    import jax

    jax.monitoring.register_event_duration_secs_listener(lambda name, secs, **kw: events.append(name))
for key in ("vgg_aug", "resnet50v2", "resnet50v2_sota"):
    stage = stages.get(key)
    recipe = stages.recipe_for(stage, backbone="resnet50" if "resnet50" in stage.backbone_options else None)
    model = stage.build(recipe, backbone_weights=None)
    blocked = sorted(l.name for l in models.walk(model) if not l.supports_jit)
    compiling.compile_for_phase(model, recipe, recipe.phases[-1], steps_per_epoch=10)
    out["stages"][key] = {"blocked_before": blocked, "jit_compile": bool(model.jit_compile),
                          "blocked_after": sorted(l.name for l in models.walk(model) if not l.supports_jit)}
    if key == "vgg_aug":  # the augmentation still draws new numbers inside the compiled step
        gen = model.get_layer("aug_rotation").generator
        before = np.array(gen.state.value)
        rng = np.random.default_rng(0)
        x = rng.integers(0, 256, size=(4, 32, 32, 3)).astype("float32")
        y = np.eye(10, dtype="float32")[[0, 1, 2, 3]]
        loss = float(np.asarray(model.train_on_batch(x, y, return_dict=True)["loss"]))
        out["vgg_step"] = {"loss": loss, "seed_moved": bool((np.array(gen.state.value) != before).any())}
        first = len(events)
        for _ in range(3):  # more steps on new images of the same shape: no new trace, no new compile
            model.train_on_batch(rng.integers(0, 256, size=(4, 32, 32, 3)).astype("float32"), y)
        out["vgg_step"]["compiles"] = [first, [e for e in events[first:] if "/compile/" in e]]
shipped = artifacts.load_model(artifacts.stage_dir("vgg_aug") / "model.keras")
out["shipped_vgg_jit"] = bool(shipped.jit_compile)
print("RESULT " + json.dumps(out))
"""


def _run(backend):
    env = {**ENV, "KERAS_BACKEND": backend}
    r = subprocess.run([sys.executable, "-c", CHECK], env=env, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    line = next(x for x in r.stdout.splitlines() if x.startswith("RESULT "))
    return json.loads(line[len("RESULT ") :])


@pytest.mark.slow  # builds three stages under JAX in a fresh process (about 40 s); CI runs it with the slow checks
def test_under_jax_the_augmented_stages_train_in_one_compiled_step():
    pytest.importorskip("jax")
    out = _run("jax")
    for key, s in out["stages"].items():
        assert s["blocked_before"], key  # Keras alone would have run this step uncompiled
        assert s["jit_compile"] and s["blocked_after"] == [], key
    assert set(out["stages"]["vgg_aug"]["blocked_before"]) == {"aug_rotation", "aug_zoom"}
    assert out["stages"]["resnet50v2"]["blocked_before"] == ["aug_translation"]
    assert out["vgg_step"]["seed_moved"] and math.isfinite(out["vgg_step"]["loss"])
    first_step, later = out["vgg_step"]["compiles"]
    assert first_step > 0 and later == []  # compiled once, then every step reuses it (jax.monitoring events)
    assert out["shipped_vgg_jit"]  # a shipped model predicts through a compiled function too


def test_under_tensorflow_nothing_changes():
    """TensorFlow's transform op has no XLA kernel: the layers keep Keras' flag, and the step runs as one graph."""
    out = _run("tensorflow")
    for key, s in out["stages"].items():
        assert s["blocked_before"] == s["blocked_after"] != [], key
        assert not s["jit_compile"], key
    assert out["vgg_step"]["seed_moved"]
