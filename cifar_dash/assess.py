"""Everything a trained model measures when its training ends, computed from the model and the images handed in and
written once: the test accuracy and predictions (evaluate.measure), the temperature fit on the validation images the
run held out (calibration.calibrate; two-fold cross-fitting on the test set when it held none out) and the test
images' feature map with its separation number (embedding.of_model). Nothing is read back from a file.

``train`` assesses every run it finishes; the ``evaluate``, ``calibrate`` and ``embed`` commands redo one part for a
published stage from its folder (evaluate.py, heldout.py, embedding.py).
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from . import artifacts, calibration, embedding, evaluate


@dataclass
class Assessment:
    metrics: dict  # metrics.json, with its ``calibration`` temperature and ``separation``
    test_probs: np.ndarray
    test_labels: np.ndarray
    val_probs: np.ndarray | None  # None when the run held no validation images out
    val_labels: np.ndarray
    embedding: embedding.Embedding | None  # None when the test images are too few for a map


def assess(model, info: dict, test, validation, stream=sys.stderr) -> Assessment:
    """Measure ``model`` (the run's train_info ``info``) on ``test`` and ``validation`` ((images, labels) each)."""
    (x_te, y_te), (x_val, y_val) = test, validation
    y_te, y_val = np.asarray(y_te).reshape(-1), np.asarray(y_val).reshape(-1)
    result, probs = evaluate.measure(model, info, x_te, y_te)
    val_probs = evaluate.predict_probs(model, x_val, tta=result["tta"]) if len(x_val) else None
    print(evaluate.summary_line(result), file=stream)
    emb = embedding.of_model(model, x_te, y_te, np.arange(len(y_te)), info["stage"], stream)
    fitted = calibration.calibrate(probs, y_te, val_probs, y_val)
    result["calibration"] = {**result["calibration"], **fitted}
    if emb is not None:
        result["separation"] = emb.meta["separation"]
    print(
        f"{info['stage']}: temperature {fitted['temperature']:.3f} (fit on {fitted['fit_on']}, {fitted['n_fit']:,} "
        f"images); test ECE {result['calibration']['ece']:.4f} -> {fitted['ece_scaled']:.4f}",
        file=stream,
    )
    return Assessment(result, probs, y_te, val_probs, y_val, emb)


def write(folder: Path, a: Assessment) -> None:
    """The assessment's files, each atomically; metrics.json last, so a run with metrics has all the others."""
    if a.embedding is not None:
        embedding.write(folder, a.embedding)
    artifacts.save_predictions(folder / artifacts.PREDICTIONS, a.test_probs, a.test_labels, np.arange(len(a.test_labels)))
    if a.val_probs is not None:
        artifacts.save_predictions(
            folder / artifacts.VAL_PREDICTIONS, a.val_probs, a.val_labels, np.arange(len(a.val_labels))
        )
    artifacts.write_json(folder / artifacts.METRICS, a.metrics)
