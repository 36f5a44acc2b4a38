"""Comparisons computed from stored test predictions (never by re-running models)."""

from __future__ import annotations

import functools

import numpy as np

from .data import CLASS_NAMES


def stage_rows(results) -> list[dict]:
    """One row per stage for the Journey table: reported vs measured and the evidence behind the figure."""
    rows = []
    for r in results:
        m = r.metrics or {}
        inf = m.get("inference") or {}
        rows.append(
            {
                "stage": r.stage.key,
                "title": r.stage.title,
                "status": r.status,
                "reported %": r.stage.reported_accuracy,
                "measured %": round(100 * m["test_accuracy"], 2) if m else None,
                "test images": m.get("n_test"),
                "params": m.get("params"),
                "trainable": m.get("trainable_params"),
                "epochs": m.get("epochs"),
                "train s": m.get("train_seconds"),
                "ms/image (batch 1)": round(inf["batch_1_ms"], 2) if inf else None,
                "ms/image (batch 256)": round(inf["batch_256_ms_per_image"], 3) if inf else None,
                "ECE": round(m["calibration"]["ece"], 4) if m else None,
                "train machine": m.get("train_machine"),
                "backbone": backbone_label(r),
                "error": r.error,
            }
        )
    return rows


def journey_title(results) -> str:
    """The Journey page's title from the measured curve: the first stage's accuracy and the best one."""
    measured = [r for r in results if r.metrics]
    if not measured:
        return "CIFAR-10, from an MLP to an ImageNet ResNet"
    first = results[0]
    best = max(measured, key=lambda r: r.accuracy)
    start = f"a {100 * first.accuracy:.0f}% MLP" if first.metrics else "an MLP"
    return f"CIFAR-10, from {start} to {100 * best.accuracy:.0f}%"


def _epochs_run(result) -> str:
    return f"{result.metrics.get('epochs')} of its recipe's {result.stage.recipe.epochs} epochs"


def order_inversions(results) -> list[str]:
    """Where two consecutive stages come out in the opposite order from the seed's figures (the later one reported
    higher, measured lower), one sentence each saying by how much and with how many epochs each was trained, so a
    dip in the growth curve is explained where it is drawn."""
    notes = []
    for a, b in zip(results, results[1:]):
        if not (a.ok and b.ok) or a.stage.reported_accuracy is None or b.stage.reported_accuracy is None:
            continue
        rep_gap = b.stage.reported_accuracy - a.stage.reported_accuracy
        gap = 100 * (b.accuracy - a.accuracy)
        if rep_gap <= 0 or gap >= 0:
            continue
        ea, eb = a.metrics.get("epochs"), b.metrics.get("epochs")
        if ea != eb:
            why = "They were trained for different numbers of epochs, so this is not a like-for-like comparison."
        elif ea != a.stage.recipe.epochs or eb != b.stage.recipe.epochs:
            why = "Both stopped short of their recipes' epochs, so the seed's order may still hold at full length."
        else:
            why = "Both ran their recipes' full epochs: the seed's order did not reproduce here."
        notes.append(
            f"{b.stage.key} measures {100 * b.accuracy:.2f}% ({_epochs_run(b)}), {-gap:.2f} points under "
            f"{a.stage.key}'s {100 * a.accuracy:.2f}% ({_epochs_run(a)}), though the seed reports it {rep_gap:.2f} "
            f"points above ({b.stage.reported_accuracy:.2f}% against {a.stage.reported_accuracy:.2f}%). " + why
        )
    return notes


def backbone_label(result) -> str | None:
    """The backbone a checkpoint used, saying so plainly where it is not the recipe's default."""
    m = result.metrics or {}
    used, default = m.get("backbone"), result.stage.recipe.backbone
    if not used:
        return None
    return used if used == default else f"{used} (stand-in for {default})"


def cell_indices(preds, true_class: int, predicted_class: int) -> np.ndarray:
    """Positions (into the stored predictions) of test images of ``true_class`` predicted as ``predicted_class``,
    most confident first."""
    mask = (preds.labels == true_class) & (preds.predicted == predicted_class)
    idx = np.flatnonzero(mask)
    return idx[np.argsort(-preds.confidence[idx], kind="stable")]


def confident_mistakes(preds, n: int = 24) -> np.ndarray:
    wrong = np.flatnonzero(preds.predicted != preds.labels)
    return wrong[np.argsort(-preds.confidence[wrong], kind="stable")][:n]


def aligned(a, b):
    """Restrict two stages' predictions to the test images both evaluated (smoke runs may cover fewer)."""
    common, ia, ib = np.intersect1d(a.indices, b.indices, return_indices=True)
    return common, ia, ib


def fixed_and_broken(earlier, later) -> dict:
    """Test images the later stage gets right and the earlier got wrong (fixed), and the reverse (broken)."""
    common, ia, ib = aligned(earlier, later)
    ok_a = earlier.predicted[ia] == earlier.labels[ia]
    ok_b = later.predicted[ib] == later.labels[ib]
    return {
        "indices": common,
        "fixed": common[~ok_a & ok_b],
        "broken": common[ok_a & ~ok_b],
        "both_right": int((ok_a & ok_b).sum()),
        "both_wrong": int((~ok_a & ~ok_b).sum()),
    }


def per_class_accuracy(preds) -> np.ndarray:
    acc = np.zeros(len(CLASS_NAMES))
    for c in range(len(CLASS_NAMES)):
        m = preds.labels == c
        acc[c] = (preds.predicted[m] == c).mean() if m.any() else np.nan
    return acc


def agreement_matrix(preds_by_stage: dict) -> tuple[list[str], np.ndarray]:
    """Fraction of shared test images on which two stages predict the same class."""
    keys = list(preds_by_stage)
    mat = np.eye(len(keys))
    for i, a in enumerate(keys):
        for j in range(i + 1, len(keys)):
            b = preds_by_stage[keys[j]]
            _, ia, ib = aligned(preds_by_stage[a], b)
            v = float((preds_by_stage[a].predicted[ia] == b.predicted[ib]).mean()) if len(ia) else np.nan
            mat[i, j] = mat[j, i] = v
    return keys, mat


def most_disputed(preds_by_stage: dict, n: int = 24) -> list[dict]:
    """Test images on which the stages disagree most: most distinct predicted labels, then lowest majority share."""
    keys = list(preds_by_stage)
    common = None
    for p in preds_by_stage.values():
        common = p.indices if common is None else np.intersect1d(common, p.indices)
    if common is None or not len(common):
        return []
    votes = np.stack([preds_by_stage[k].predicted[np.searchsorted(preds_by_stage[k].indices, common)] for k in keys], axis=1)
    labels = preds_by_stage[keys[0]].labels[np.searchsorted(preds_by_stage[keys[0]].indices, common)]
    distinct = np.array([len(set(row)) for row in votes])
    majority = np.array([np.bincount(row, minlength=10).max() for row in votes])
    order = np.lexsort((majority, -distinct))[:n]
    return [
        {
            "index": int(common[i]),
            "label": int(labels[i]),
            "votes": dict(zip(keys, map(int, votes[i]))),
            "distinct": int(distinct[i]),
        }
        for i in order
    ]


def disagreement(probs_by_stage: dict) -> dict:
    """For one image: top-1 per stage, consensus label (majority), and whether the stages disagree."""
    top = {k: int(np.argmax(p)) for k, p in probs_by_stage.items()}
    if not top:
        return {"top": {}, "consensus": None, "agree": True, "share": 0.0}
    counts = np.bincount(list(top.values()), minlength=10)
    return {
        "top": top,
        "consensus": int(counts.argmax()),
        "agree": len(set(top.values())) == 1,
        "share": float(counts.max() / len(top)),
    }


OOD_CONFIDENCE = 0.6
OOD_RULE = (
    "the three most accurate trained stages do not all pick the same class, and their mean confidence in their own "
    f"answers is under {OOD_CONFIDENCE:.0%}"
)


def strongest_stages(results, n: int = 3) -> list[str]:
    """The ``n`` trained stages with the highest measured test accuracy, best first."""
    trained = [r for r in results if r.metrics and r.status in ("trained", "stale")]
    return [r.stage.key for r in sorted(trained, key=lambda r: -r.accuracy)[:n]]


def probably_unknown(probs_by_stage: dict, strongest: list[str]) -> np.ndarray:
    """Per image, whether OOD_RULE fires: a plain "probably none of these classes" flag. ``probs_by_stage`` maps a
    stage to its (n, 10) probabilities; stages of ``strongest`` missing from it are left out of the rule."""
    keys = [k for k in strongest if k in probs_by_stage]
    if len(keys) < 2:
        return np.zeros(len(next(iter(probs_by_stage.values()))) if probs_by_stage else 0, dtype=bool)
    p = np.stack([np.asarray(probs_by_stage[k]) for k in keys])  # (stages, n, 10)
    top = p.argmax(-1)
    disagree = ~(top == top[0]).all(0)
    return disagree & (p.max(-1).mean(0) < OOD_CONFIDENCE)


def unknown_rate_on_test(preds_by_stage: dict, strongest: list[str]) -> tuple[float, int] | None:
    """How often the flag fires on real CIFAR-10 test images (every image is one of the ten classes), from the
    stored test predictions of the ``strongest`` stages: (rate, images), or None when they cannot be aligned."""
    keys = [k for k in strongest if k in preds_by_stage]
    if len(keys) < 2:
        return None
    common = functools.reduce(np.intersect1d, [preds_by_stage[k].indices for k in keys])
    if not len(common):
        return None
    probs = {}  # each stage's rows for the shared test images, in one order (as `aligned` does for two stages)
    for k in keys:
        _, rows, _ = np.intersect1d(preds_by_stage[k].indices, common, return_indices=True)
        probs[k] = preds_by_stage[k].probs[rows]
    flags = probably_unknown(probs, keys)
    return float(flags.mean()), int(len(common))
