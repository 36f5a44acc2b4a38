"""Calibration: how far a stage's confidences are from its accuracy (``reliability``: the bins and the expected
calibration error), and temperature scaling (Guo et al., 2017): one number per stage that makes its confidences mean
what they say.

A stage's probabilities p become softmax(log(p) / T). T is fit by minimising the negative log-likelihood on images
the stage never trained on and is not scored on: the validation split (the last 5,000 training images). A stage
trained on all 50,000 has no such images; its T is fit on the test set with two-fold cross-fitting (each half's
scaled probabilities come from the T fit on the other half, so the reported ECE is out of sample) and the T it uses
on new pictures is the fit on all 10,000 test images (stated in ``fit_on``).
"""

from __future__ import annotations

import numpy as np

T_RANGE = (0.05, 20.0)
FOLDS_SEED = 0


def reliability(probs: np.ndarray, y_true, n_bins: int = 15) -> dict:
    """The reliability bins and the expected calibration error (ECE) over equal-width confidence bins (top-1
    confidence vs top-1 accuracy): metrics.json's ``calibration`` before any scaling."""
    probs = np.asarray(probs, dtype=np.float64)
    y_true = np.asarray(y_true)
    confidence = probs.max(axis=1)
    correct = probs.argmax(axis=1) == y_true
    edges = np.linspace(0.0, 1.0, n_bins + 1)
    # bin i holds confidences in (edges[i], edges[i+1]]; confidence 0 falls in bin 0
    idx = np.clip(np.searchsorted(edges, confidence, side="left") - 1, 0, n_bins - 1)
    bins, ece, n = [], 0.0, len(y_true)
    for i in range(n_bins):
        m = idx == i
        count = int(m.sum())
        acc = float(correct[m].mean()) if count else None
        conf = float(confidence[m].mean()) if count else None
        if count:
            ece += count / n * abs(acc - conf)
        bins.append(
            {"lower": float(edges[i]), "upper": float(edges[i + 1]), "count": count, "accuracy": acc, "confidence": conf}
        )
    return {
        "ece": float(ece),
        "n_bins": n_bins,
        "bins": bins,
        "mean_confidence": float(confidence.mean()) if n else None,
        "mean_confidence_correct": float(confidence[correct].mean()) if correct.any() else None,
        "mean_confidence_wrong": float(confidence[~correct].mean()) if (~correct).any() else None,
    }


def logits_of(probs: np.ndarray) -> np.ndarray:
    """Log-probabilities: softmax(log p) == p, so they serve as logits (averaged test-time views included)."""
    return np.log(np.clip(np.asarray(probs, np.float64), 1e-30, None))


def scale(probs: np.ndarray, temperature: float) -> np.ndarray:
    """softmax(log(p) / T), row by row."""
    z = logits_of(probs) / float(temperature)
    z -= z.max(axis=-1, keepdims=True)
    e = np.exp(z)
    return (e / e.sum(axis=-1, keepdims=True)).astype(np.float32)


def nll(probs: np.ndarray, labels, temperature: float = 1.0) -> float:
    p = scale(probs, temperature)
    labels = np.asarray(labels).reshape(-1)
    return float(-np.log(np.clip(p[np.arange(len(labels)), labels], 1e-30, None)).mean())


def fit_temperature(probs: np.ndarray, labels, tol: float = 1e-5) -> float:
    """The T in T_RANGE that minimises the mean negative log-likelihood. The NLL is convex in 1/T, so a golden-
    section search over 1/T finds the minimum."""
    z = logits_of(probs)
    y = np.asarray(labels).reshape(-1)
    picked = z[np.arange(len(y)), y]

    def loss(beta):
        s = beta * z
        m = s.max(axis=1)
        return float((m + np.log(np.exp(s - m[:, None]).sum(axis=1)) - beta * picked).mean())

    lo, hi = 1 / T_RANGE[1], 1 / T_RANGE[0]
    g = (np.sqrt(5) - 1) / 2
    a, b = lo + (1 - g) * (hi - lo), lo + g * (hi - lo)
    fa, fb = loss(a), loss(b)
    while hi - lo > tol:
        if fa < fb:
            hi, b, fb = b, a, fa
            a = lo + (1 - g) * (hi - lo)
            fa = loss(a)
        else:
            lo, a, fa = a, b, fb
            b = lo + g * (hi - lo)
            fb = loss(b)
    return float(1 / ((lo + hi) / 2))


def cross_fit(probs: np.ndarray, labels, folds: int = 2, seed: int = FOLDS_SEED) -> tuple[np.ndarray, list[float]]:
    """Out-of-sample scaled probabilities: each fold scaled by the T fit on the other folds (a fixed random split)."""
    labels = np.asarray(labels).reshape(-1)
    fold = np.random.default_rng(seed).permutation(len(labels)) % folds
    out = np.empty_like(np.asarray(probs, np.float32))
    temps = []
    for k in range(folds):
        t = fit_temperature(probs[fold != k], labels[fold != k])
        out[fold == k] = scale(probs[fold == k], t)
        temps.append(t)
    return out, temps


def ece_floor(probs: np.ndarray, draws: int = 20, seed: int = 0) -> float:
    """The ECE a perfectly calibrated model with these confidences would still show on this many images: the mean
    ECE when the labels are drawn from the probabilities themselves (sampling noise of the 15-bin estimate)."""
    rng = np.random.default_rng(seed)
    p = np.asarray(probs, np.float64)
    cum = p.cumsum(1)
    out = []
    for _ in range(draws):
        y = (cum > rng.random((len(p), 1)) * cum[:, -1:]).argmax(1)
        out.append(reliability(p, y)["ece"])
    return float(np.mean(out))


def calibrate(test_probs, test_labels, val_probs=None, val_labels=None) -> dict:
    """The ``calibration`` additions for metrics.json: ``temperature``, ``ece_scaled`` (test ECE after scaling, the
    same 15 bins as ``ece``), the scaled reliability bins, what T was fit on, the test NLL before and after, and
    ``ece_floor``: the ECE that sampling noise alone gives a perfectly calibrated model with the scaled confidences."""
    test_labels = np.asarray(test_labels).reshape(-1)
    if val_probs is not None and len(val_probs):
        t = fit_temperature(val_probs, val_labels)
        scaled = scale(test_probs, t)
        how = {"fit_on": "validation", "n_fit": int(len(val_probs))}
    else:
        scaled, temps = cross_fit(test_probs, test_labels)
        t = fit_temperature(test_probs, test_labels)
        how = {
            "fit_on": "test, two-fold cross-fitting",
            "n_fit": int(len(test_probs)),
            "folds": 2,
            "fold_seed": FOLDS_SEED,
            "fold_temperatures": temps,
        }
    after = reliability(scaled, test_labels)
    return {
        "temperature": t,
        **how,
        "ece_scaled": after["ece"],
        "ece_floor": ece_floor(scaled),
        "bins_scaled": after["bins"],
        "mean_confidence_scaled": after["mean_confidence"],
        "nll": nll(test_probs, test_labels),
        "nll_scaled": float(-np.log(np.clip(scaled[np.arange(len(test_labels)), test_labels], 1e-30, None)).mean()),
    }


def temperature_of(metrics: dict) -> float | None:
    """A stage's fitted temperature from its metrics.json, or None (not calibrated yet)."""
    t = (metrics.get("calibration") or {}).get("temperature")
    return float(t) if isinstance(t, int | float) and T_RANGE[0] <= t <= T_RANGE[1] else None
