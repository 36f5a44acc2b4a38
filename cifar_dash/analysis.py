"""Comparisons computed from stored test predictions (never by re-running models)."""

from __future__ import annotations

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
                "kNN separation %": round(100 * m["separation"]["knn_accuracy"], 2) if m.get("separation") else None,
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


VOTE_RULE = (
    "each stage's calibrated probabilities, weighted by how far its measured test accuracy is above chance (10%), averaged"
)


def weighted_vote(probs_by_stage: dict, accuracy: dict) -> dict:
    """For one image: the summary answer from every stage's (calibrated) probabilities weighted by its measured
    accuracy above chance (VOTE_RULE), its probability, and the stages marked as differing from it.

    A stage is marked only when it differs from the answer *and* a stage at least as accurate gives the answer: the
    strongest stage is never marked as the odd one out by weaker stages outvoting it."""
    keys = list(probs_by_stage)
    if not keys:
        return {"answer": None, "probability": 0.0, "weights": {}, "differs": [], "top": {}}
    weights = {k: max(float(accuracy.get(k) or 0.0) - 0.1, 0.01) for k in keys}
    total = sum(weights.values())
    mean = sum(weights[k] * np.asarray(probs_by_stage[k], np.float64) for k in keys) / total
    answer = int(np.argmax(mean))
    top = {k: int(np.argmax(probs_by_stage[k])) for k in keys}
    best_agreeing = max((weights[k] for k in keys if top[k] == answer), default=0.0)
    differs = [k for k in keys if top[k] != answer and weights[k] <= best_agreeing]
    return {
        "answer": answer,
        "probability": float(mean[answer]),
        "weights": {k: w / total for k, w in weights.items()},
        "differs": differs,
        "top": top,
    }
