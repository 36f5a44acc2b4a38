"""Test images whose given label the strongest stages contradict: a ranking, most suspect first, in
``checkpoints/label_issues.json`` (``python -m cifar_dash label-issues``).

Rule: the three most accurate published stages' stored test probabilities (out of sample: no stage trained on a
test image), each scaled by its temperature, go to cleanlab's ``get_label_quality_ensemble_scores``
(self-confidence, members weighted by accuracy); the lower an image's label-quality score, the more suspect its
label. ``suggested`` is the class the same weighted average puts most probability on, other than the given label;
``flagged`` marks the images cleanlab's ``find_label_issues`` (confident learning, prune by noise rate) calls label
issues. The rule was chosen by planting noise: flip 1% of the labels at random and count how many of the flipped
ones land at the top (``noise_check``; docs/label_issues.md).
"""

from __future__ import annotations

import sys
import time
import warnings
from pathlib import Path

import numpy as np

from . import answers, artifacts

FILE = "label_issues.json"
N_STRONG = 3
N_LIST = 500
METHOD = "self_confidence"
NOISE_FRACTION = 0.01
NOISE_SEEDS = tuple(range(10))
TOP_K = (100, 200)


def _cleanlab():
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        import cleanlab.filter
        import cleanlab.rank
    return cleanlab


def strongest(accuracy: dict[str, float], n: int = N_STRONG) -> list[str]:
    return sorted(accuracy, key=lambda k: -accuracy[k])[:n]


def scores(labels: np.ndarray, probs: dict[str, np.ndarray], keys: list[str]) -> np.ndarray:
    """cleanlab's label-quality score of every image (0..1, lower = more suspect) from the stages ``keys``."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return _cleanlab().rank.get_label_quality_ensemble_scores(
            np.asarray(labels), [probs[k] for k in keys], method=METHOD, weight_ensemble_members_by="accuracy", verbose=False
        )


def weighted_mean(labels: np.ndarray, probs: dict[str, np.ndarray], keys: list[str]) -> np.ndarray:
    """The stages' probabilities averaged with weights = their accuracy on ``labels`` (as the ensemble score)."""
    w = np.array([(probs[k].argmax(1) == labels).mean() for k in keys])
    return np.tensordot(w / w.sum(), np.stack([probs[k] for k in keys]), axes=1)


def rank(labels: np.ndarray, probs: dict[str, np.ndarray], accuracy: dict[str, float], n: int = N_LIST) -> dict:
    """The ``n`` most suspect images, most suspect first, with each trained stage's vote."""
    labels = np.asarray(labels).reshape(-1)
    keys = strongest(accuracy)
    s = scores(labels, probs, keys)
    mean = weighted_mean(labels, probs, keys)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        flagged = _cleanlab().filter.find_label_issues(labels, mean)
    other = mean.copy()
    other[np.arange(len(labels)), labels] = -1.0
    suggested = other.argmax(1)
    order = np.argsort(s, kind="stable")[:n]
    stage_keys = list(probs)
    top = np.stack([probs[k].argmax(1) for k in stage_keys], axis=1)  # (n_images, n_stages)
    entries = [
        {
            "position": int(j),
            "label": int(labels[j]),
            "suggested": int(suggested[j]),
            "score": round(float(s[j]), 6),
            "suggested_probability": round(float(mean[j, suggested[j]]), 4),
            "label_probability": round(float(mean[j, labels[j]]), 4),
            "agree": int((top[j] == suggested[j]).sum()),
            "agree_strong": int(sum(top[j, stage_keys.index(k)] == suggested[j] for k in keys)),
            "votes": [int(v) for v in top[j]],
            "flagged": bool(flagged[j]),
        }
        for j in order
    ]
    return {"strong": keys, "stages": stage_keys, "n_flagged": int(flagged.sum()), "entries": entries}


def flip(labels: np.ndarray, seed: int, fraction: float = NOISE_FRACTION) -> tuple[np.ndarray, np.ndarray]:
    """``labels`` with a random ``fraction`` of them changed to another class, and the positions changed."""
    rng = np.random.default_rng(seed)
    idx = np.sort(rng.choice(len(labels), int(round(fraction * len(labels))), replace=False))
    noisy = np.array(labels, copy=True)
    noisy[idx] = (noisy[idx] + rng.integers(1, 10, len(idx))) % 10
    return noisy, idx


def planted_recall(labels, probs, keys, seed: int, top_k=TOP_K) -> dict[int, float]:
    """Flip 1% of ``labels`` (``seed``), rank again: the share of the flipped labels among the top K, per K."""
    noisy, idx = flip(np.asarray(labels).reshape(-1), seed)
    order = np.argsort(scores(noisy, probs, keys), kind="stable")
    return {k: float(np.isin(idx, order[:k]).mean()) for k in top_k}


def noise_check(labels, probs, keys, seeds=NOISE_SEEDS) -> dict:
    per_seed = [planted_recall(labels, probs, keys, s) for s in seeds]
    return {
        "fraction": NOISE_FRACTION,
        "n_flipped": int(round(NOISE_FRACTION * len(labels))),
        "seeds": list(seeds),
        "recall_at": {str(k): float(np.mean([r[k] for r in per_seed])) for k in TOP_K},
        "min_recall_at": {str(k): float(np.min([r[k] for r in per_seed])) for k in TOP_K},
    }


def what_if(labels, probs: dict[str, np.ndarray], leave_out) -> dict[str, dict]:
    """Each stage's accuracy with the positions ``leave_out`` left out, beside its accuracy on all."""
    keep = np.ones(len(labels), bool)
    keep[np.asarray(list(leave_out), int)] = False
    return {
        k: {
            "accuracy": float((p.argmax(1) == labels).mean()),
            "accuracy_without": float((p.argmax(1) == labels)[keep].mean()),
            "left_out": int((~keep).sum()),
        }
        for k, p in probs.items()
    }


def stage_inputs(root: Path | None = None):
    """(labels, test indices, {stage: calibrated probabilities}, {stage: accuracy}) of the published stages."""
    from . import stages

    root = Path(root) if root else artifacts.checkpoints_root()
    probs, accuracy, labels, indices = {}, {}, None, None
    for s in stages.STAGES:
        folder = artifacts.stage_dir(s.key, root)
        if not (folder / artifacts.PREDICTIONS).exists():
            continue
        metrics = artifacts.read_json(folder / artifacts.METRICS)
        p = artifacts.load_predictions(folder / artifacts.PREDICTIONS)
        if indices is None:
            labels, indices = p.labels, p.indices
        elif not np.array_equal(p.indices, indices):
            raise artifacts.ArtifactError(f"{s.key}'s predictions are of other test images than the other stages'")
        probs[s.key] = answers.calibrated(p.probs, metrics)[0]
        accuracy[s.key] = float((p.probs.argmax(1) == p.labels).mean())
    if len(probs) < N_STRONG:
        raise artifacts.ArtifactError(f"ranking labels needs {N_STRONG} trained stages; {len(probs)} are")
    return labels, indices, probs, accuracy


def build(root: Path | None = None, stream=sys.stderr) -> dict:
    """Rank, check the rule with planted noise and write ``label_issues.json`` into ``root``."""
    root = Path(root) if root else artifacts.checkpoints_root()
    t = time.perf_counter()
    labels, indices, probs, accuracy = stage_inputs(root)
    ranked = rank(labels, probs, accuracy)
    for e in ranked["entries"]:
        e["index"] = int(indices[e.pop("position")])
    check = noise_check(labels, probs, ranked["strong"])
    flagged_positions = [j for j, i in enumerate(indices) if i in {e["index"] for e in ranked["entries"] if e["flagged"]}]
    record = {
        "rule": (
            f"cleanlab {_cleanlab().__version__} get_label_quality_ensemble_scores ({METHOD}, weighted by accuracy) "
            f"over the {N_STRONG} most accurate stages' temperature-scaled test probabilities; lower score = more "
            "suspect; flagged = cleanlab find_label_issues on their weighted mean"
        ),
        "cleanlab_version": _cleanlab().__version__,
        "n_test": int(len(labels)),
        "strong": ranked["strong"],
        "stages": ranked["stages"],
        "stage_accuracy": {k: round(v, 6) for k, v in accuracy.items()},
        "n_flagged": ranked["n_flagged"],
        "noise_check": check,
        "what_if": what_if(labels, probs, flagged_positions),
        "fitted": time.time(),
        "seconds": round(time.perf_counter() - t, 1),
        "entries": ranked["entries"],
    }
    artifacts.write_json(root / FILE, record)
    print(
        f"{len(record['entries'])} suspects ranked ({record['n_flagged']} flagged by cleanlab) from "
        f"{', '.join(record['strong'])}; planted 1% noise: {check['recall_at']['100']:.1%} of flipped labels in the top "
        f"100, {check['recall_at']['200']:.1%} in the top 200 (mean of {len(check['seeds'])} seeds); "
        f"{record['seconds']:.0f} s",
        file=stream,
    )
    return record


def load(root: Path | None = None) -> dict:
    root = Path(root) if root else artifacts.checkpoints_root()
    record = artifacts.read_json(root / FILE)
    if not isinstance(record.get("entries"), list) or not all(
        isinstance(e, dict) and {"index", "label", "suggested", "score", "agree"} <= set(e) for e in record["entries"]
    ):
        raise artifacts.ArtifactError(f"{root / FILE} is corrupt (entries)")
    return record
