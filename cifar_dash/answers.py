"""What the upload page and ``predict`` answer for new pictures: every stage's calibrated probabilities, one summary
that weighs the stages by their measured accuracy, and whether the picture is probably none of the ten classes."""

from __future__ import annotations

import numpy as np

from . import analysis, calibration
from .data import CLASS_NAMES


def calibrated(raw: np.ndarray, metrics: dict | None) -> tuple[np.ndarray, float | None]:
    """A stage's probabilities scaled by its fitted temperature, and the temperature (None: not calibrated yet, the
    raw probabilities are returned)."""
    t = calibration.temperature_of(metrics or {})
    return (calibration.scale(raw, t), t) if t is not None else (np.asarray(raw, np.float32), None)


def answer(per_stage: dict[str, np.ndarray], accuracy: dict[str, float], flag=None, score=None) -> dict:
    """One image's answer as plain data (``predict --json``): ``per_stage`` maps a stage to its calibrated (10,)
    probabilities, or to an error message where the stage could not answer."""
    probs = {k: p for k, p in per_stage.items() if not isinstance(p, str)}
    vote = analysis.weighted_vote(probs, accuracy)
    stages = {}
    for key, p in per_stage.items():
        if isinstance(p, str):
            stages[key] = {"error": p}
            continue
        top = int(np.argmax(p))
        stages[key] = {
            "top": CLASS_NAMES[top],
            "probability": float(p[top]),
            "probabilities": {c: round(float(q), 6) for c, q in zip(CLASS_NAMES, p)},
            "differs_from_summary": key in vote["differs"],
        }
    return {
        "stages": stages,
        "summary": None
        if vote["answer"] is None
        else {"class": CLASS_NAMES[vote["answer"]], "probability": vote["probability"], "rule": analysis.VOTE_RULE},
        "none_of_these": None if flag is None else bool(flag),
        "ood_score": None if score is None else float(score),
    }
