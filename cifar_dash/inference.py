"""Running a trained model over raw uint8 images: its probabilities at each test-time augmentation level, its
penultimate (or a named layer's) features beside the probabilities from one pass, and its time per image. Evaluation,
the upload page, saliency, robustness and the held-out refits all predict through here.

The penultimate features are the input of the model's last Dense layer (the classifier): what the stage's answer is
a linear function of. The detector of pictures that are none of the ten classes measures distances there.
"""

from __future__ import annotations

import time

import numpy as np


def tta_mode(tta) -> str:
    """A recipe's ``tta`` value as "none", "flip" or "flip_shift" (older metrics store True for "flip")."""
    if tta in (None, False, "none"):
        return "none"
    if tta is True or tta == "flip":
        return "flip"
    if tta == "flip_shift":
        return "flip_shift"
    raise ValueError(f"unknown test-time augmentation {tta!r}")


TTA_VIEWS = {"none": 1, "flip": 2, "flip_shift": 6}


def tta_of(info: dict):
    """The test-time augmentation a train_info / metrics dict's recipe asks for."""
    return tta_mode((info.get("recipe") or {}).get("tta", False))


def predict_probs(model, x, batch_size: int = 256, tta=False) -> np.ndarray:
    """Softmax probabilities for raw uint8 images. ``tta``: "flip" (or True) averages with the horizontally flipped
    view; "flip_shift" averages that (weight 1/2) with the flip-averaged views shifted one pixel up-left and
    down-right under reflect padding (weight 1/4 each), as airbench94 does."""
    mode = tta_mode(tta)
    return tta_levels(model, x, batch_size, mode)[mode]


def padded(batch: np.ndarray, cap: int = 256) -> np.ndarray:
    """``batch`` padded with blank images to the next power of two (at most ``cap``): every new batch size traces a
    model's predict function again (about a second), so a handful of sizes keeps it to a handful of traces."""
    size = min(max(cap, len(batch)), 1 << max(len(batch) - 1, 0).bit_length())
    return np.concatenate([batch, np.zeros((size - len(batch), *batch.shape[1:]), batch.dtype)])


def tta_levels(model, x, batch_size: int = 256, tta="none", plain=None) -> dict[str, np.ndarray]:
    """Probabilities at every test-time augmentation level up to ``tta`` (the views are shared, so the lower levels
    cost nothing extra): {"none": ..., "flip": ..., "flip_shift": ...}. ``plain``: the unaugmented view's
    probabilities where the caller has them already (``measure``'s feature pass), so that view is not run again."""
    mode = tta_mode(tta)
    x = np.asarray(x, dtype=np.float32)

    def run(batch):
        if len(batch) <= batch_size:  # one batch: skip predict()'s per-call dataset set-up (~50 ms)
            return np.asarray(model.predict_on_batch(padded(batch, batch_size)), dtype=np.float32)[: len(batch)]
        return np.asarray(model.predict(batch, batch_size=batch_size, verbose=0), dtype=np.float32)

    def flipped(batch):
        return run(np.ascontiguousarray(batch[:, :, ::-1]))

    levels = {"none": run(x) if plain is None else np.asarray(plain, dtype=np.float32)}
    if mode == "none":
        return levels
    levels["flip"] = (levels["none"] + flipped(x)) / 2
    if mode == "flip_shift":
        framed = np.pad(x, ((0, 0), (1, 1), (1, 1), (0, 0)), mode="reflect")
        h, w = x.shape[1:3]
        views = [framed[:, :h, :w], framed[:, 2 : h + 2, 2 : w + 2]]
        shifted = sum((run(v) + flipped(v)) / 2 for v in views) / 2
        levels["flip_shift"] = (levels["flip"] + shifted) / 2
    return levels


def inference_ms(model, x, tta=False, batch1_reps: int = 20) -> dict:
    """Milliseconds per image at batch 1 (median of repeated calls) and at batch 256 (best of two), times the number
    of test-time views."""
    x1 = np.asarray(x[:1], dtype=np.float32)
    for _ in range(3):
        model.predict_on_batch(x1)
    times = []
    for _ in range(batch1_reps):
        t = time.perf_counter()
        model.predict_on_batch(x1)
        times.append(time.perf_counter() - t)
    n = min(256, len(x))
    xb = np.asarray(x[:n], dtype=np.float32)
    model.predict_on_batch(xb)
    best = min(_timed(model.predict_on_batch, xb) for _ in range(2))
    factor = TTA_VIEWS[tta_mode(tta)]
    return {
        "batch_1_ms": factor * 1000 * float(np.median(times)),
        "batch_256_ms_per_image": factor * 1000 * best / n,
        "batch_256_n": n,
    }


def _timed(fn, *args):
    t = time.perf_counter()
    fn(*args)
    return time.perf_counter() - t


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
