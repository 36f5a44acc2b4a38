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


def for_files(files, batch, root=None):
    """``predict``'s answers: for each image of ``batch`` (model inputs of ``files``), every trained stage's calibrated
    answer, the summary and the detector's flag, and notes on what could not be done; None when no stage is trained.
    A stage that cannot answer is reported in its place."""
    from . import artifacts, ood, predict, results

    trained = [r for r in results.load_all(root) if r.status != "untrained"]
    if not trained:
        return None
    per_stage, accuracy, notes, features = {}, {}, [], None
    for r in trained:
        key = r.stage.key
        if r.status == "damaged":
            per_stage[key] = f"damaged: {r.error}"
            continue
        try:
            loaded = predict.load_stage(key, root)
            per_stage[key], temperature = calibrated(predict.predict(loaded, batch), r.metrics)
            if key == ood.STAGE:
                features = loaded.layer_features(ood.LAYER, batch)
        except Exception as e:  # a model that does not load: that stage says so, the others answer
            per_stage[key] = f"no answer: {type(e).__name__}: {str(e).splitlines()[0][:300] if str(e) else ''}"
            continue
        accuracy[key] = r.accuracy
        if temperature is None:
            notes.append(f"{key} is not calibrated (raw probabilities): `python -m cifar_dash calibrate {key}`")
    flags = scores = None
    try:
        detector = ood.load(root)
        if features is not None:
            scores = detector.scores(features)
            flags = scores > detector.threshold
        else:
            notes.append(f"no none-of-these flag: it needs the trained stage {ood.STAGE}")
    except artifacts.ArtifactError as e:
        notes.append(str(e))
    rows = []
    for i, path in enumerate(files):
        mine = {k: (v if isinstance(v, str) else v[i]) for k, v in per_stage.items()}
        row = answer(mine, accuracy, None if flags is None else flags[i], None if scores is None else scores[i])
        rows.append({"file": path, **row, "ood_threshold": None if flags is None else detector.threshold})
    return rows, notes


def as_text(row) -> str:
    """``predict``'s plain-words answer for one image (a row of ``for_files``)."""
    lines = [row["file"]]
    summary = row["summary"]
    if summary:
        lines.append(f"  summary: {summary['class']} {summary['probability']:.1%} (stages weighted by measured accuracy)")
    if row["none_of_these"] is not None:
        verdict = "probably none of the ten classes" if row["none_of_these"] else "looks like CIFAR-10"
        lines.append(
            f"  none-of-these detector: {verdict} (score {row['ood_score']:.3f}, threshold {row['ood_threshold']:.3f})"
        )
    for key, a in row["stages"].items():
        if "error" in a:
            lines.append(f"  {key:22s} {a['error']}")
            continue
        top3 = sorted(a["probabilities"].items(), key=lambda kv: -kv[1])[:3]
        mark = "  (differs from the summary)" if a["differs_from_summary"] else ""
        lines.append(f"  {key:22s} " + "  ".join(f"{c} {p:.1%}" for c, p in top3) + mark)
    lines.append("  (calibrated probabilities: each stage's temperature, fit on held-out images)")
    return "\n".join(lines)
