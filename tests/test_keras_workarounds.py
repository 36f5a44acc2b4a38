"""keras_workarounds.py relies on Keras behaviour Keras does not document; these fail the day it changes."""

import inspect

import keras
import numpy as np
import pytest

from cifar_dash import callbacks
from cifar_dash import keras_workarounds as kw


def test_keras_dispatches_per_batch_hooks_by_the_async_safe_attribute():
    from keras.src.callbacks.callback_list import CallbackList

    assert "async_safe" in inspect.getsource(CallbackList._configure_async_dispatch)
    assert callbacks.EpochTensorBoard("/tmp/unused", write_graph=False).async_safe is True
    assert callbacks.Backup("/tmp/unused-backup", save_freq="epoch").async_safe is True
    assert callbacks.Backup("/tmp/unused-backup", save_freq=100).async_safe is False  # reads weights mid-epoch
    # Keras' own classes still do not declare it (else the subclasses are no longer needed)
    assert not getattr(keras.callbacks.TensorBoard, "async_safe", False)


def test_affine_augmentation_layers_still_block_compilation_and_the_trainer_reads_the_flag():
    from keras.src.trainers import trainer

    assert all(not layer().supports_jit for layer in (lambda: keras.layers.RandomRotation(0.1),))
    assert "supports_jit" in inspect.getsource(trainer)
    model = keras.Sequential([keras.Input((8, 8, 3)), keras.layers.RandomZoom(0.1), keras.layers.Flatten()])
    changed = kw.allow_jit(model)
    if keras.backend.backend() in kw.JIT_SAFE_BACKENDS:
        assert changed == [model.layers[0].name] and model.layers[0].supports_jit
    else:
        assert changed == [] and not model.layers[0].supports_jit  # TensorFlow: left as Keras set it


def test_the_xla_bilinear_probe_measures_what_tensorflow_xla_gives_here():
    """The probe against tf.image.resize directly (the op UpSampling2D runs): eager and XLA-compiled on the same
    pixels. On TensorFlow 2.21's CPU XLA they differ by about 250 grey levels (TensorFlow issue 118344); the day XLA
    resizes right, both are near 0 and backbone stages keep XLA when asked for it."""
    if keras.backend.backend() != "tensorflow":
        assert kw.xla_bilinear_error() == 0.0
        return
    import tensorflow as tf

    x = np.random.default_rng(0).integers(0, 256, (1, 32, 32, 3)).astype("float32")

    def resize(t):
        return tf.image.resize(t, (96, 96), method="bilinear")

    eager = resize(tf.constant(x)).numpy()
    try:
        compiled = tf.function(resize, jit_compile=True)(tf.constant(x)).numpy()
        direct = float(np.abs(eager - compiled).max())
    except tf.errors.OpError:
        direct = 0.0
    assert kw.xla_bilinear_error() == pytest.approx(direct, abs=1e-3)


@pytest.mark.parametrize("stage", ["mobilenetv2_frozen", "cnn"])
def test_a_run_asking_for_xla_keeps_it_unless_its_bilinear_upsampling_would_compile_wrong(stage, tmp_path):
    import io

    from cifar_dash import runplan
    from cifar_dash.request import TrainingRequest

    said = io.StringIO()
    p = runplan.plan(TrainingRequest(stage, xla="on", out_dir=tmp_path), stream=said)
    wrong = (
        keras.backend.backend() == "tensorflow"
        and p.recipe.backbone is not None
        and kw.xla_bilinear_error() > kw.XLA_BILINEAR_TOLERANCE
    )
    assert p.recipe.jit_compile is not wrong and p.choice.xla is not wrong
    assert ("XLA upsamples bilinearly wrong here" in said.getvalue()) is wrong


def test_a_loaded_model_predicts_without_xla_where_xla_would_upsample_it_wrong(monkeypatch):
    """Keras compiles a loaded model's predictions with XLA on a TensorFlow GPU ("auto"); set here by hand, as there."""
    inp = keras.Input((32, 32, 3))
    bilinear = keras.Model(inp, keras.layers.UpSampling2D(2, interpolation="bilinear")(inp))
    nearest = keras.Model(inp, keras.layers.UpSampling2D(2)(inp))
    for model in (bilinear, nearest):
        model.jit_compile = True
    if keras.backend.backend() != "tensorflow":
        assert not kw.bilinear_xla_off(bilinear) and bilinear.jit_compile
        return
    monkeypatch.setattr(kw, "xla_bilinear_error", lambda: 250.0)  # the fault, as TensorFlow 2.21's CPU XLA has it
    assert kw.bilinear_xla_off(bilinear) and bilinear.jit_compile is False
    assert not kw.bilinear_xla_off(nearest) and nearest.jit_compile is True
    bilinear.jit_compile = True
    monkeypatch.setattr(kw, "xla_bilinear_error", lambda: 0.0)  # an XLA that resizes right keeps compiling
    assert not kw.bilinear_xla_off(bilinear) and bilinear.jit_compile is True
    cpu = keras.Model(inp, keras.layers.UpSampling2D(2, interpolation="bilinear")(inp))  # jit_compile left "auto"
    monkeypatch.setattr(kw, "xla_bilinear_error", lambda: pytest.fail("measured although Keras would not compile"))
    if not cpu.jit_compile:  # a CPU-only TensorFlow: nothing to turn off, nothing measured
        assert not kw.bilinear_xla_off(cpu)


def test_models_made_for_predictions_predict_without_the_faulty_xla(monkeypatch, tmp_path):
    """A loaded model (every prediction's, a finished run's assessment included) and the feature and layer
    sub-models (the detector, the map, the Inside page) are models for which Keras chooses XLA afresh: on a
    TensorFlow GPU it would. Simulated here: Keras' "auto" resolving to XLA, and the fault present."""
    if keras.backend.backend() != "tensorflow":
        pytest.skip("the fault is TensorFlow's XLA")
    from keras.src.trainers.trainer import Trainer

    from cifar_dash import artifacts, inference

    monkeypatch.setattr(Trainer, "_resolve_auto_jit_compile", lambda self: True)  # as on a GPU
    monkeypatch.setattr(kw, "xla_bilinear_error", lambda: 250.0)
    inp = keras.Input((32, 32, 3))
    x = keras.layers.UpSampling2D(2, interpolation="bilinear", name="upsample")(inp)
    x = keras.layers.Dense(4, name="features")(keras.layers.GlobalAveragePooling2D()(x))
    model = keras.Model(inp, keras.layers.Dense(10, activation="softmax", name="probs")(x))
    assert inference.with_features(model).jit_compile is False
    assert inference.layer_model(model, "upsample").jit_compile is False
    model.save(tmp_path / "model.keras")
    assert artifacts.load_model(tmp_path / "model.keras").jit_compile is False
    plain = keras.Model(inp, keras.layers.Flatten()(inp))
    assert inference.layer_model(plain, plain.layers[-1].name).jit_compile is True  # nothing to guard: Keras' choice
