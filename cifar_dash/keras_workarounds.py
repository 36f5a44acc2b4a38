"""Where this project relies on Keras behaviour that Keras does not document, in one place, each with its reason.
tests/test_keras_workarounds.py fails the day Keras changes what these rely on.

1. ``allow_jit``: Keras' affine image-augmentation layers set ``supports_jit = False`` (TensorFlow's transform op has
   no XLA kernel), and that one flag turns compilation off for the whole train step (``Trainer.compile`` ->
   ``model_supports_jit``). Under JAX a step that is not jitted runs op by op: on an H200 the ResNet stages trained
   146x slower than plain ResNet50, while under JAX the same layers are ``map_coordinates`` calls that compile.
2. ``async_safe``: Keras' ``CallbackList`` dispatches per-batch hooks from a worker thread (JAX) only when every
   callback with such a hook says ``async_safe``; Keras' own TensorBoard (epoch summaries only here) and
   BackupAndRestore (when it saves at epoch ends) do not say it, so subclasses in callbacks.py do, beside the
   project's own callbacks, which say it too.
3. ``xla_bilinear_error``: TensorFlow's XLA resizes bilinearly wrong on CPU (TensorFlow issue 118344, open in 2.21):
   an XLA-compiled ``UpSampling2D(interpolation="bilinear")`` returns pixels up to about 250 grey levels off the
   eager result, so a backbone stage trained with XLA would learn from other images than it is evaluated on
   (benchmarks/xla_bilinear.py measures what it does to the shipped stages). It is measured once per process on the
   device at hand; ``runplan.plan`` turns XLA off where it is wrong for training, ``bilinear_xla_off`` for a loaded
   model's predictions (Keras compiles them with XLA on TensorFlow GPUs).
"""

from __future__ import annotations

import functools

import keras
import numpy as np
from keras import layers

AFFINE_AUGMENTATION = (layers.RandomTranslation, layers.RandomRotation, layers.RandomZoom)
JIT_SAFE_BACKENDS = ("jax",)


def _walk(model):
    for layer in model.layers:
        yield layer
        if hasattr(layer, "layers"):
            yield from _walk(layer)


def allow_jit(model) -> list[str]:
    """Let the train step compile under backends where Keras' affine augmentation layers do compile (JAX); returns
    the names of the layers it changed. Under TensorFlow nothing changes (its transform op cannot be XLA-compiled,
    and without XLA TensorFlow still runs the step as one graph)."""
    if keras.backend.backend() not in JIT_SAFE_BACKENDS:
        return []
    changed = []
    for layer in _walk(model):
        if isinstance(layer, AFFINE_AUGMENTATION) and not layer.supports_jit:
            layer.supports_jit = True
            changed.append(layer.name)
    if changed and not model.compiled:
        model.jit_compile = True  # loading may already have settled it to False; under JAX "auto" means True
    return changed


XLA_BILINEAR_TOLERANCE = 0.5  # grey levels (pixels 0-255): float32 rounding stays far below, the XLA fault far above


@functools.cache
def xla_bilinear_error() -> float:
    """The largest difference between eager and XLA-compiled bilinear ``UpSampling2D`` (3x) on a fixed 32x32 image of
    0-255 pixels, on this process's default device; 0.0 where the backend is not TensorFlow or XLA cannot compile."""
    if keras.backend.backend() != "tensorflow":
        return 0.0
    import tensorflow as tf

    x = np.random.default_rng(0).integers(0, 256, (1, 32, 32, 3)).astype("float32")
    up = layers.UpSampling2D(3, interpolation="bilinear")
    eager = np.asarray(up(x))
    try:
        compiled = tf.function(lambda t: up(t), jit_compile=True)(tf.constant(x)).numpy()
    except (tf.errors.OpError, ValueError):  # no XLA on this device: nothing compiles wrong
        return 0.0
    return float(np.abs(eager - compiled).max())


def bilinear_xla_off(model) -> bool:
    """Turn XLA off for ``model``'s predictions (Keras' ``jit_compile``) where it would compile the model's bilinear
    ``UpSampling2D`` wrong (item 3); returns whether it did. Where Keras would not compile (TensorFlow on a CPU, where
    its "auto" means off) nothing is measured."""
    if keras.backend.backend() != "tensorflow" or not isinstance(model, keras.Model) or not model.jit_compile:
        return False
    if not any(isinstance(x, layers.UpSampling2D) and x.interpolation == "bilinear" for x in _walk(model)):
        return False
    if xla_bilinear_error() <= XLA_BILINEAR_TOLERANCE:
        return False
    model.jit_compile = False
    return True
