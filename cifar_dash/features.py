"""A stage's penultimate features beside its probabilities, from one pass through the model.

The penultimate features are the input of the model's last Dense layer (the classifier): what the stage's answer is
a linear function of. The detector of pictures that are none of the ten classes measures distances there.
"""

from __future__ import annotations

import numpy as np


def last_dense(model):
    import keras

    dense = [layer for layer in model.layers if isinstance(layer, keras.layers.Dense)]
    if not dense:
        raise ValueError(f"model {model.name} has no Dense layer to read features before")
    return dense[-1]


def with_features(model, layer: str | None = None):
    """A model sharing ``model``'s weights whose outputs are (features, probabilities): the penultimate features, or
    the named layer's output."""
    import keras

    from .keras_workarounds import bilinear_xla_off

    feats = model.get_layer(layer).output if layer else last_dense(model).input
    both = keras.Model(model.inputs, [feats, model.outputs[0]], name=f"{model.name}_features")
    bilinear_xla_off(both)  # a new model: Keras would choose XLA for it afresh (keras_workarounds item 3)
    return both


def features_and_probs(model, x: np.ndarray, batch_size: int = 128) -> tuple[np.ndarray, np.ndarray]:
    """(n, d) float32 features and (n, 10) probabilities of raw uint8 images, without test-time augmentation."""
    both = with_features(model)
    x = np.asarray(x, dtype=np.float32)
    feats, probs = [], []
    for start in range(0, len(x), batch_size):
        f, p = both.predict_on_batch(x[start : start + batch_size])
        feats.append(np.asarray(f, np.float32).reshape(len(f), -1))
        probs.append(np.asarray(p, np.float32))
    if not feats:
        return np.zeros((0, 0), np.float32), np.zeros((0, 10), np.float32)
    return np.concatenate(feats), np.concatenate(probs)


def layer_model(model, layer: str):
    """A model sharing ``model``'s weights that ends at the named layer."""
    import keras

    from .keras_workarounds import bilinear_xla_off

    part = keras.Model(model.inputs, model.get_layer(layer).output)
    bilinear_xla_off(part)  # a new model: Keras would choose XLA for it afresh (keras_workarounds item 3)
    return part


def layer_features(model, layer: str, x: np.ndarray, batch_size: int = 128) -> np.ndarray:
    """(n, d) float32 outputs of the named layer for raw uint8 images (flattened), without test-time augmentation."""
    part = layer_model(model, layer)
    x = np.asarray(x, dtype=np.float32)
    out = [np.asarray(part.predict_on_batch(x[i : i + batch_size]), np.float32) for i in range(0, len(x), batch_size)]
    return np.concatenate(out).reshape(len(x), -1) if out else np.zeros((0, 0), np.float32)
