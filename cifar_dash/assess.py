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
from pathlib import Path

import numpy as np

from . import artifacts, embedding, evaluate, metrics


def assess(model, info: dict, test, validation, folder: Path, stream=sys.stderr):
    """Measure ``model`` (the run's train_info ``info``) on ``test`` and ``validation`` ((images, labels) each) and
    write its files into ``folder``, each atomically: embedding.npz, the predictions, metrics.json last (a run with
    metrics has all the others). Returns the measurement (evaluate.Measured) and the map (None: too few images)."""
    y_te, y_val = np.asarray(test[1]).reshape(-1), np.asarray(validation[1]).reshape(-1)
    few = embedding.too_few(len(y_te))
    m = evaluate.measure(model, info, test, validation, features=not few)
    emb = None
    if few:
        print(few, file=stream)
    else:
        emb = embedding.of_features(m.features, y_te, np.arange(len(y_te)), info["stage"], stream, m.features_seconds)
        m.metrics["separation"] = emb.meta["separation"]
        embedding.write(folder, emb)
    artifacts.save_predictions(folder / artifacts.PREDICTIONS, m.probs, y_te, np.arange(len(y_te)))
    if m.val_probs is not None:
        artifacts.save_predictions(folder / artifacts.VAL_PREDICTIONS, m.val_probs, y_val, np.arange(len(y_val)))
    artifacts.write_json(folder / artifacts.METRICS, m.metrics)
    print(metrics.summary_line(m.metrics), file=stream)  # accuracy and temperature
    return m, emb
