import os
import sys
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
os.environ.setdefault("KERAS_BACKEND", "tensorflow")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
# trainings the tests start through the CLI use the recipe's precision and XLA on every kind of machine
# (tests/test_speed.py checks --speed auto itself)
os.environ.setdefault("CIFAR_DASH_SPEED", "recipe")


def make_cifar(n_train=600, n_test=200, seed=0):
    """Synthetic CIFAR-shaped data with a learnable signal: each class has its own mean colour."""
    rng = np.random.default_rng(seed)
    colours = rng.integers(30, 226, size=(10, 3))

    def make(n):
        y = rng.integers(0, 10, size=n).astype(np.uint8)
        x = colours[y][:, None, None, :] + rng.normal(0, 25, size=(n, 32, 32, 3))
        return np.clip(x, 0, 255).astype(np.uint8), y

    x_train, y_train = make(n_train)
    x_test, y_test = make(n_test)
    return {"x_train": x_train, "y_train": y_train, "x_test": x_test, "y_test": y_test}


@pytest.fixture(scope="session")
def cifar_npz(tmp_path_factory):
    path = tmp_path_factory.mktemp("data") / "cifar.npz"
    np.savez(path, **make_cifar())
    return path


@pytest.fixture(autouse=True)
def _isolated_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("CIFAR_DASH_CACHE", str(tmp_path / "cache"))


def train_and_publish(key, out_dir, **kwargs):
    """A run of ``key`` into ``out_dir``/runs/, then promoted: ``out_dir`` holds it as the published model."""
    from cifar_dash import publish, train

    folder = train.train(key, out_dir=out_dir, **kwargs)
    publish.promote(key, folder.name, where=out_dir)
    return folder


@pytest.fixture(scope="session")
def trained_root(tmp_path_factory, cifar_npz):
    """Fixture checkpoints made in the test session: mlp, deep_mlp and cnn trained briefly on synthetic data."""

    root = tmp_path_factory.mktemp("checkpoints")
    old = os.environ.get("CIFAR_DASH_CACHE")
    os.environ["CIFAR_DASH_CACHE"] = str(tmp_path_factory.mktemp("cache"))
    try:
        for key, epochs in (("mlp", 3), ("deep_mlp", 2), ("cnn", 1)):
            train_and_publish(key, epochs=epochs, limit=400, data_path=cifar_npz, out_dir=root / key)
    finally:
        if old is None:
            os.environ.pop("CIFAR_DASH_CACHE", None)
        else:
            os.environ["CIFAR_DASH_CACHE"] = old
    return root


@pytest.fixture
def checkpoints_copy(trained_root, tmp_path, monkeypatch, cifar_npz):
    """A writable copy of the fixture checkpoints, made the app's (CIFAR_DASH_CHECKPOINTS), with the synthetic data."""
    import shutil

    root = tmp_path / "ck"
    shutil.copytree(trained_root, root)
    monkeypatch.setenv("CIFAR_DASH_CHECKPOINTS", str(root))
    monkeypatch.setenv("CIFAR10_PATH", str(cifar_npz))
    return root


def _tiny_backbone(shape, weights):
    """A few layers in place of an ImageNet backbone: the transfer stages' whole pipeline (upsampling, preprocessing,
    a nested backbone with BatchNorm, "from:LAYER" fine-tuning) at a fraction of the tracing time."""
    import keras
    from keras import layers

    inp = keras.Input(shape)
    x = layers.Conv2D(8, 3, strides=4, name="stem_conv")(inp)
    x = layers.BatchNormalization(name="stem_bn")(x)
    x = layers.Conv2D(16, 1, name="block_12_expand")(x)
    x = layers.BatchNormalization(name="block_12_expand_BN")(x)
    return keras.Model(inp, layers.ReLU(name="out_relu")(x), name="tiny_backbone")


@pytest.fixture
def tiny_backbones(monkeypatch):
    from cifar_dash import models

    monkeypatch.setattr(models, "_APPLICATIONS", {k: _tiny_backbone for k in models._APPLICATIONS})


@pytest.fixture(scope="session")
def detector_root(tmp_path_factory, trained_root, cifar_npz):
    """The fixture checkpoints plus the detector's stage (mobilenetv2_frozen with a tiny random backbone, trained
    briefly), every stage calibrated and the none-of-these detector fitted, as `python -m cifar_dash calibrate` does."""
    import io
    import shutil

    from cifar_dash import heldout, models, ood

    root = tmp_path_factory.mktemp("detector") / "checkpoints"
    shutil.copytree(trained_root, root)
    old_cache, old_apps = os.environ.get("CIFAR_DASH_CACHE"), dict(models._APPLICATIONS)
    os.environ["CIFAR_DASH_CACHE"] = str(tmp_path_factory.mktemp("cache"))
    models._APPLICATIONS.update({k: _tiny_backbone for k in models._APPLICATIONS})
    try:
        train_and_publish(
            ood.STAGE, epochs=1, limit=400, data_path=cifar_npz, out_dir=root / ood.STAGE, backbone_weights="none"
        )
        heldout.calibrate([], data_path=cifar_npz, root=root, stream=io.StringIO())
    finally:
        models._APPLICATIONS.clear()
        models._APPLICATIONS.update(old_apps)
        if old_cache is None:
            os.environ.pop("CIFAR_DASH_CACHE", None)
        else:
            os.environ["CIFAR_DASH_CACHE"] = old_cache
    return root


def rename_a_layer_class(model_path, old=b'"Dense"', new=b'"DenseThatDoesNotExist"'):
    """Rewrite a whole, valid .keras archive so that its config.json names a layer class that does not exist."""
    import zipfile

    with zipfile.ZipFile(model_path) as z:
        members = {n: z.read(n) for n in z.namelist()}
    assert old in members["config.json"]
    members["config.json"] = members["config.json"].replace(old, new)
    with zipfile.ZipFile(model_path, "w") as z:
        for name, data in members.items():
            z.writestr(name, data)
