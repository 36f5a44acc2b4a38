"""Everything a trained model measures when its training ends, computed from the model and the images handed in and
written once: the test accuracy and predictions (evaluate.measure), the temperature fit on the validation images the
run held out (calibration.calibrate; two-fold cross-fitting on the test set when it held none out) and the test
images' feature map with its separation number (embedding.of_features), all from one evaluation pass. Nothing is
read back from a file.

``train`` assesses every run it finishes; the ``evaluate``, ``calibrate`` and ``embed`` commands redo one part for a
published stage from its folder (evaluate.py, heldout.py, embedding.py).
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from . import artifacts, embedding, evaluate


@dataclass
class Assessment:
    metrics: dict  # metrics.json, with its ``calibration`` temperature and ``separation``
    test_probs: np.ndarray
    test_labels: np.ndarray
    val_probs: np.ndarray | None  # None when the run held no validation images out
    val_labels: np.ndarray
    embedding: embedding.Embedding | None  # None when the test images are too few for a map


def assess(model, info: dict, test, validation, folder: Path, stream=sys.stderr) -> Assessment:
    """Measure ``model`` (the run's train_info ``info``) on ``test`` and ``validation`` ((images, labels) each) and
    write its files into ``folder``, each atomically: embedding.npz, the predictions, metrics.json last (a run with
    metrics has all the others)."""
    m = evaluate.measure(model, info, test, validation, features=len(test[1]) >= embedding.MIN_IMAGES)
    y_te, y_val = np.asarray(test[1]).reshape(-1), np.asarray(validation[1]).reshape(-1)
    print(evaluate.summary_line(m.metrics), file=stream)  # accuracy and temperature
    a = Assessment(m.metrics, m.probs, y_te, m.val_probs, y_val, None)
    if m.features is not None:
        a.embedding = embedding.of_features(
            m.features, y_te, np.arange(len(y_te)), info["stage"], stream, m.features_seconds
        )
        m.metrics["separation"] = a.embedding.meta["separation"]
        embedding.write(folder, a.embedding)
    else:
        print(f"no feature map: {len(y_te)} test images are too few (at least {embedding.MIN_IMAGES})", file=stream)
    artifacts.save_predictions(folder / artifacts.PREDICTIONS, a.test_probs, y_te, np.arange(len(y_te)))
    if a.val_probs is not None:
        artifacts.save_predictions(folder / artifacts.VAL_PREDICTIONS, a.val_probs, y_val, np.arange(len(y_val)))
    artifacts.write_json(folder / artifacts.METRICS, a.metrics)
    return a
