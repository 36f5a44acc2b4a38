"""Predict with every trained stage on arbitrary 32x32x3 uint8 images."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from . import artifacts
from .data import CLASS_NAMES
from .evaluate import predict_probs, tta_of


@dataclass
class LoadedStage:
    key: str
    model: object
    tta: str  # test-time augmentation mode (evaluate.tta_mode)


def load_stage(key: str, root: Path | None = None) -> LoadedStage:
    folder = artifacts.stage_dir(key, root)
    model = artifacts.load_model(folder / artifacts.MODEL)
    tta = "none"
    try:
        tta = tta_of(artifacts.read_json(folder / artifacts.TRAIN_INFO))
    except artifacts.ArtifactError:
        pass
    return LoadedStage(key, model, tta)


def predict(loaded: LoadedStage, images: np.ndarray) -> np.ndarray:
    images = np.asarray(images, dtype=np.uint8).reshape(-1, 32, 32, 3)
    return predict_probs(loaded.model, images, batch_size=64, tta=loaded.tta)


def top_k(probs: np.ndarray, k: int = 3) -> list[list[tuple[str, float]]]:
    order = np.argsort(-probs, axis=1)[:, :k]
    return [[(CLASS_NAMES[j], float(p[j])) for j in row] for p, row in zip(probs, order)]
