"""Classification metrics in plain NumPy (no framework), so tests can check them against hand counts, and the line a
command prints of them."""

from __future__ import annotations

import numpy as np

from .calibration import reliability
from .data import CLASS_NAMES, NUM_CLASSES


def confusion_matrix(y_true, y_pred, num_classes: int = NUM_CLASSES) -> np.ndarray:
    """cm[i, j] = number of images of true class i predicted as class j."""
    cm = np.zeros((num_classes, num_classes), dtype=np.int64)
    np.add.at(cm, (np.asarray(y_true, int), np.asarray(y_pred, int)), 1)
    return cm


def per_class(cm: np.ndarray) -> list[dict]:
    tp = np.diag(cm).astype(float)
    predicted = cm.sum(axis=0).astype(float)
    actual = cm.sum(axis=1).astype(float)
    precision = np.divide(tp, predicted, out=np.zeros_like(tp), where=predicted > 0)
    recall = np.divide(tp, actual, out=np.zeros_like(tp), where=actual > 0)
    denom = precision + recall
    f1 = np.divide(2 * precision * recall, denom, out=np.zeros_like(tp), where=denom > 0)
    return [
        {
            "class": CLASS_NAMES[i] if len(cm) == NUM_CLASSES else str(i),
            "precision": float(precision[i]),
            "recall": float(recall[i]),
            "f1": float(f1[i]),
            "support": int(actual[i]),
        }
        for i in range(len(cm))
    ]


def summarize(probs: np.ndarray, y_true) -> dict:
    y_true = np.asarray(y_true).reshape(-1)
    y_pred = np.asarray(probs).argmax(axis=1)
    cm = confusion_matrix(y_true, y_pred)
    return {
        "test_accuracy": float((y_pred == y_true).mean()),
        "n_test": int(len(y_true)),
        "per_class": per_class(cm),
        "confusion_matrix": cm.tolist(),
        "calibration": reliability(probs, y_true),
    }


def summary_line(result: dict) -> str:
    """What a command prints of metrics.json's figures; with the temperature, when one was fit, on a second line."""
    line = (
        f"{result['stage']}: test accuracy {result['test_accuracy']:.4f} on {result['n_test']} images "
        f"(ECE {result['calibration']['ece']:.4f}, {result['inference']['batch_1_ms']:.1f} ms/image at batch 1)"
    )
    if "temperature" in result["calibration"]:
        line += "\n" + temperature_line(result["stage"], result["calibration"])
    return line


def temperature_line(stage: str, cal: dict) -> str:
    """One line on a fitted temperature (metrics.json's ``calibration``, see calibration.py)."""
    return (
        f"{stage}: temperature {cal['temperature']:.3f} (fit on {cal['fit_on']}, {cal['n_fit']:,} images); "
        f"test ECE {cal.get('ece', float('nan')):.4f} -> {cal['ece_scaled']:.4f}"
    )
