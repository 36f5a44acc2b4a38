"""The loader's batches are the same bit for bit whichever way the pixels move (NumPy, or tensor ops on the device
under JAX), and the same as those of the loader that trained the shipped checkpoints."""

import hashlib
import os
import subprocess
import sys

import numpy as np
import pytest

from cifar_dash.batches import Batches
from tests.conftest import ROOT

# sha256 of the batches below as the NumPy-only loader of commit f63ff1f made them (the loader of every shipped run)
GOLDEN = "235631ed03342bdd836f52723998b9b9abce7d6cd582358ca67710b17b2f5a5a"
SETTINGS = (
    {"augment": ("flip_alternate", "crop:2")},  # the speedrun's
    {"mixup_alpha": 0.2, "augment": ("flip_alternate",)},
    {"mixup_alpha": 0.4},
    {},
)


def digest(**kwargs) -> str:
    rng = np.random.default_rng(0)
    x = rng.integers(0, 256, size=(300, 32, 32, 3)).astype("uint8")
    y = np.arange(300) % 10
    h = hashlib.sha256()
    for setting in SETTINGS:
        b = Batches(x, y, 128, seed=5, **setting, **kwargs)
        for epoch in (0, 1, 2):
            b.set_epoch(epoch)
            for i in range(len(b)):
                xb, yb = b[i]
                h.update(np.asarray(xb, dtype="float32").tobytes())
                h.update(np.asarray(yb).tobytes())
    return h.hexdigest()


@pytest.mark.parametrize("on_device", [False, True], ids=["numpy", "tensor-ops"])
def test_the_batches_are_those_that_trained_the_shipped_runs(on_device):
    assert digest(on_device=on_device) == GOLDEN


def test_under_tensorflow_the_tf_data_pipeline_gives_the_same_batches():
    """train feeds fit this pipeline under TensorFlow: the epoch's decisions drawn in one NumPy call when its
    iterator starts, the pixels moved by TensorFlow ops."""
    rng = np.random.default_rng(0)
    x = rng.integers(0, 256, size=(300, 32, 32, 3)).astype("uint8")
    y = np.arange(300) % 10
    h = hashlib.sha256()
    for setting in SETTINGS:
        b = Batches(x, y, 128, seed=5, **setting)
        ds = b.tf_dataset()
        assert int(ds.cardinality()) == len(b) == 3
        for epoch in (0, 1, 2):
            b.set_epoch(epoch)  # as EpochOrder does at each epoch's start, before fit makes the epoch's iterator
            for xb, yb in ds:
                h.update(np.asarray(xb, dtype="float32").tobytes())
                h.update(np.asarray(yb).tobytes())
    assert h.hexdigest() == GOLDEN


def test_under_jax_the_pixels_move_on_the_device_and_give_the_same_batches():
    pytest.importorskip("jax")
    code = (
        "import jax, numpy as np\n"
        "from tests.test_batches import digest\n"
        "from cifar_dash.batches import Batches\n"
        "b = Batches(np.zeros((8, 32, 32, 3), np.uint8), np.arange(8), 4, augment=('crop:2',))\n"
        "assert b.on_device and isinstance(b[0][0], jax.Array)\n"
        "assert hasattr(b._gather, 'lower')  # one jax.jit function, not eager ops\n"
        "print('DIGEST', digest())\n"
    )
    env = {**os.environ, "PYTHONPATH": str(ROOT), "KERAS_BACKEND": "jax"}
    r = subprocess.run([sys.executable, "-c", code], env=env, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    assert f"DIGEST {GOLDEN}" in r.stdout
