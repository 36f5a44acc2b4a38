"""Where each stage looks: occlusion sensitivity maps, one method for every stage so maps are comparable.

Occlusion needs only forward passes, so it works for MLPs and CNNs alike and under any Keras backend: slide a grey
patch over the image and record how much the probability of the stage's own top class drops. Gradient methods
(Grad-CAM) would need backend-specific gradient code; occlusion answers the same question ("which pixels does the
decision depend on?") with the same units (probability) for every stage, so one colour scale fits all.
"""

from __future__ import annotations

import numpy as np

from .inference import predict_probs


def occlusion_batch(img: np.ndarray, patch: int = 8, stride: int = 4, fill: float | None = None):
    """The occluded copies of ``img`` and the (y, x) corner of each patch."""
    img = np.asarray(img, dtype=np.float32)
    h, w = img.shape[:2]
    fill_value = img.mean(axis=(0, 1)) if fill is None else np.full(3, fill, np.float32)
    corners = [(y, x) for y in range(0, h - patch + 1, stride) for x in range(0, w - patch + 1, stride)]
    batch = np.repeat(img[None], len(corners), axis=0)
    for k, (y, x) in enumerate(corners):
        batch[k, y : y + patch, x : x + patch] = fill_value
    return batch, corners


def occlusion_map(model, img: np.ndarray, patch: int = 8, stride: int = 4, target: int | None = None, tta=False) -> dict:
    """Probability drop of the target class (default: the stage's own top-1) per pixel, averaged over the patches
    that covered it. Positive = hiding this region lowers the model's belief."""
    img = np.asarray(img, dtype=np.float32)
    base = predict_probs(model, img[None], tta=tta)[0]
    target = int(np.argmax(base)) if target is None else int(target)
    batch, corners = occlusion_batch(img, patch, stride)
    probs = predict_probs(model, batch, batch_size=256, tta=tta)
    drop = base[target] - probs[:, target]
    heat = np.zeros(img.shape[:2], np.float64)
    count = np.zeros(img.shape[:2], np.float64)
    for d, (y, x) in zip(drop, corners):
        heat[y : y + patch, x : x + patch] += d
        count[y : y + patch, x : x + patch] += 1
    heat = np.divide(heat, count, out=np.zeros_like(heat), where=count > 0)
    return {"map": heat.astype(np.float32), "target": target, "probability": float(base[target])}


_STOPS = np.array([[0, 0, 0.5], [0, 0.4, 1], [0, 0.9, 0.9], [1, 1, 0], [1, 0.5, 0], [0.8, 0, 0]])


def colorize(values: np.ndarray, vmax: float) -> np.ndarray:
    """Map values in [0, vmax] to RGB (blue -> red) without matplotlib."""
    v = np.clip(np.asarray(values, np.float64) / max(vmax, 1e-9), 0, 1) * (len(_STOPS) - 1)
    lo = np.floor(v).astype(int)
    hi = np.minimum(lo + 1, len(_STOPS) - 1)
    t = (v - lo)[..., None]
    return ((1 - t) * _STOPS[lo] + t * _STOPS[hi]) * 255


def overlay(img: np.ndarray, heat: np.ndarray, vmax: float, scale: int = 4, alpha: float = 0.55) -> np.ndarray:
    """The image upscaled with the heat map blended on top, as uint8 RGB."""
    big = np.repeat(np.repeat(np.asarray(img, np.float64), scale, 0), scale, 1)
    colour = np.repeat(np.repeat(colorize(np.maximum(heat, 0), vmax), scale, 0), scale, 1)
    weight = alpha * np.clip(np.repeat(np.repeat(np.maximum(heat, 0), scale, 0), scale, 1) / max(vmax, 1e-9), 0, 1)
    return np.clip((1 - weight[..., None]) * big + weight[..., None] * colour, 0, 255).astype(np.uint8)


class SaliencyUnavailable(RuntimeError):
    """This method does not apply to this model or backend; the message says why."""


_SKIP = ("MaxPooling2D", "Dropout", "Rescaling", "UpSampling2D", "CaffePreprocess", "InputLayer")


def _chain(model, x, until=None):
    """Call the model's layers one after another on ``x`` (public Keras calls only; the stage models are chains),
    returning every layer's output, up to ``until`` (a layer) when given."""
    outs = []
    for layer in model.layers:
        if layer.__class__.__name__ == "InputLayer":
            continue
        x = layer(x, training=False)
        outs.append((layer, x))
        if layer is until:
            break
    return outs


def feature_layer(model):
    """The last spatial feature map of a convolutional stage: the last 4-D output that is not pooling, dropout or
    preprocessing (the nested ImageNet backbone counts as one layer). None for MLPs."""
    import keras

    probe = keras.ops.zeros((1, *model.inputs[0].shape[1:]), dtype="float32")
    for layer, out in reversed(_chain(model, probe)):
        if layer.__class__.__name__ in _SKIP or layer.name.startswith("aug_"):
            continue
        if len(out.shape) == 4:
            return layer
    return None


def gradcam_map(model, img: np.ndarray, target: int | None = None) -> dict:
    """Grad-CAM on the last spatial feature map, upsampled to the image and scaled to its own maximum (0..1).
    Needs the TensorFlow backend (gradients are backend-specific in Keras 3); raises SaliencyUnavailable otherwise."""
    import keras

    if keras.backend.backend() != "tensorflow":
        raise SaliencyUnavailable("Grad-CAM is implemented for the TensorFlow backend; use occlusion")
    layer = feature_layer(model)
    if layer is None:
        raise SaliencyUnavailable(f"{model.name} has no convolutional feature map (an MLP); use occlusion")
    import tensorflow as tf

    x = tf.convert_to_tensor(np.asarray(img, np.float32)[None])
    with tf.GradientTape() as tape:
        outs = _chain(model, x)
        feats = next(out for lyr, out in outs if lyr is layer)
        probs = outs[-1][1]
        t = int(tf.argmax(probs[0])) if target is None else int(target)
        score = probs[:, t]
    grads = tape.gradient(score, feats)[0].numpy()
    feats = feats[0].numpy()
    cam = np.maximum((feats * grads.mean(axis=(0, 1))).sum(axis=-1), 0)
    from PIL import Image

    up = np.asarray(Image.fromarray(cam.astype(np.float32), "F").resize(img.shape[:2][::-1], Image.BILINEAR))
    peak = float(up.max())
    return {
        "map": (up / peak if peak > 0 else up).astype(np.float32),
        "target": t,
        "probability": float(probs[0, t]),
        "layer": layer.name,
        "grid": list(cam.shape),
    }


METHODS = ("occlusion", "gradcam")


def stage_map(model, img: np.ndarray, method: str = "occlusion", tta=False) -> dict:
    """One stage's map. "occlusion": probability drop (same units for every stage). "gradcam": Grad-CAM where the
    stage has a convolutional feature map, occlusion elsewhere (MLPs), each map scaled to its own maximum so both
    methods share one 0..1 colour scale."""
    if method == "gradcam":
        try:
            return {**gradcam_map(model, img), "method": "Grad-CAM", "scaled": True}
        except SaliencyUnavailable:
            out = occlusion_map(model, img, tta=tta)
            peak = float(out["map"].max())
            out["map"] = np.maximum(out["map"], 0) / peak if peak > 0 else np.zeros_like(out["map"])
            # ``peak``: the unscaled probability drop, the same figure occlusion mode shows for this stage
            return {**out, "method": "occlusion", "scaled": True, "peak": peak}
    if method != "occlusion":
        raise ValueError(f"unknown saliency method {method!r}; choose from {METHODS}")
    out = occlusion_map(model, img, tta=tta)
    return {**out, "method": "occlusion", "scaled": False, "peak": float(np.max(out["map"])) if out["map"].size else 0.0}


def colour_bar(width: int = 256, height: int = 14) -> np.ndarray:
    """The colour scale of ``overlay`` from 0 (left) to the map's maximum (right), as a uint8 RGB strip."""
    ramp = np.linspace(0, 1, width)[None, :].repeat(height, 0)
    return np.clip(colorize(ramp, 1.0), 0, 255).astype(np.uint8)
