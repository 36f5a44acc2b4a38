"""Test accuracy under simple shifts of the input: how each stage's answer depends on colour, shape, position.

    python -m cifar_dash robustness STAGE [--limit N]

writes checkpoints/STAGE/robustness.json. The colour-only view (heavy blur: colours survive, shapes do not) against
the shape-only view (grayscale edges: shapes survive, colours do not) is how the app answers "does the MLP rely on
colour?" with a number.
"""

from __future__ import annotations

import io
import sys
import time
from pathlib import Path

import numpy as np
from PIL import Image, ImageFilter

from . import artifacts, runtime, stages
from . import data as data_mod
from .inference import predict_probs, tta_of


def _per_image(x, fn):
    return np.stack([np.asarray(fn(Image.fromarray(img)), dtype=np.uint8) for img in x])


def grayscale(x):
    g = x.astype(np.float32) @ np.array([0.299, 0.587, 0.114], np.float32)
    return np.repeat(g[..., None], 3, axis=-1).round().astype(np.uint8)


def translate(x, pixels):
    """Shift right and down by ``pixels``, edges repeated."""
    padded = np.pad(x, ((0, 0), (pixels, 0), (pixels, 0), (0, 0)), mode="edge")
    return padded[:, :32, :32]


def noise(x, sigma=20.0, seed=0):
    rng = np.random.default_rng(seed)
    return np.clip(x.astype(np.float32) + rng.normal(0, sigma, x.shape), 0, 255).astype(np.uint8)


def blur(x, radius=1.0):
    return _per_image(x, lambda im: im.filter(ImageFilter.GaussianBlur(radius)))


def brightness(x, factor=1.4):
    return np.clip(x.astype(np.float32) * factor, 0, 255).astype(np.uint8)


def jpeg(x, quality=50):
    def f(im):
        buf = io.BytesIO()
        im.save(buf, "JPEG", quality=quality)
        return Image.open(io.BytesIO(buf.getvalue())).convert("RGB")

    return _per_image(x, f)


def colour_only(x):
    """Heavy blur: the colour layout stays, the shapes go."""
    return blur(x, radius=4.0)


def shape_only(x):
    """Grayscale Sobel edge magnitude, scaled per image: the shapes stay, the colours go."""
    g = grayscale(x)[..., 0].astype(np.float32)
    p = np.pad(g, ((0, 0), (1, 1), (1, 1)), mode="edge")
    gx = (p[:, 1:-1, 2:] - p[:, 1:-1, :-2]) * 2 + (p[:, :-2, 2:] - p[:, :-2, :-2]) + (p[:, 2:, 2:] - p[:, 2:, :-2])
    gy = (p[:, 2:, 1:-1] - p[:, :-2, 1:-1]) * 2 + (p[:, 2:, :-2] - p[:, :-2, :-2]) + (p[:, 2:, 2:] - p[:, :-2, 2:])
    mag = np.sqrt(gx**2 + gy**2)
    mag = 255 * mag / np.maximum(mag.max(axis=(1, 2), keepdims=True), 1e-6)
    return np.repeat(mag[..., None], 3, axis=-1).astype(np.uint8)


CONDITIONS = {
    "clean": lambda x: x,
    "grayscale": grayscale,
    "horizontal flip": lambda x: x[:, :, ::-1],
    "translate 2 px": lambda x: translate(x, 2),
    "translate 4 px": lambda x: translate(x, 4),
    "gaussian noise (sigma 20)": noise,
    "blur (radius 1)": blur,
    "brightness x1.4": brightness,
    "JPEG quality 50": jpeg,
    "colour only (blur radius 4)": colour_only,
    "shape only (grayscale edges)": shape_only,
}


def run(stage_key: str, limit: int | None = 2000, data_path=None, out_dir=None, stream=sys.stderr) -> dict:
    stage = stages.get(stage_key)
    out = Path(out_dir) if out_dir else artifacts.stage_dir(stage.key)
    model = artifacts.load_model(out / artifacts.MODEL)
    info = artifacts.read_json(out / artifacts.TRAIN_INFO)
    tta = tta_of(info)
    cifar = data_mod.load(data_path)
    x, y = cifar.x_test, cifar.y_test
    if limit:
        x, y = x[:limit], y[:limit]
    accuracy, seconds = {}, {}
    for name, fn in CONDITIONS.items():
        t = time.perf_counter()
        probs = predict_probs(model, fn(x), tta=tta)
        accuracy[name] = float((probs.argmax(1) == y).mean())
        seconds[name] = round(time.perf_counter() - t, 2)
        print(f"{stage.key}: {name:30s} {accuracy[name]:.4f}", file=stream)
    result = {
        "stage": stage.key,
        "run_id": info.get("run_id"),
        "n_test": int(len(y)),
        "accuracy": accuracy,
        "seconds": seconds,
        "test_data_fingerprint": data_mod.fingerprint(cifar.x_test, cifar.y_test),
        "runtime": runtime.info(),
        "measured": time.time(),
    }
    artifacts.write_json(out / artifacts.ROBUSTNESS, result)
    return result
