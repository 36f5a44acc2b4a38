"""Evaluate a trained stage on the CIFAR-10 test set and write metrics.json + test_predictions.npz."""

from __future__ import annotations

import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from . import artifacts, calibration, metrics, models, runtime, stages
from . import data as data_mod
from .inference import features_and_probs, inference_ms, predict_probs, tta_levels, tta_of


@dataclass
class Measured:
    metrics: dict  # metrics.json's fields
    probs: np.ndarray  # the test images' probabilities (at the recipe's test-time augmentation)
    val_probs: np.ndarray | None  # the validation images' (None: none asked for, or none held out)
    features: np.ndarray | None  # the test images' penultimate features (None: not asked for)
    features_seconds: float | None = None  # the pass that gave the features and the unaugmented view's probabilities


def measure(model, train_info: dict, test, validation=None, features: bool = False) -> Measured:
    """What ``model`` measures on the ``test`` images ((images, labels)): metrics.json's fields (accuracy, per class,
    calibration, cost, evidence) and the probabilities; given ``validation`` ((images, labels), possibly empty) also
    its temperature (calibration.calibrate: fit there, or cross-fit on the test set when it is empty); with
    ``features`` the penultimate features too. Writes nothing; how the model was trained stays in train_info.json,
    which results.load_folder joins in."""
    (x_test, y_test) = test
    y_test = np.asarray(y_test).reshape(-1)
    tta = tta_of(train_info)
    t = time.perf_counter()
    # one pass gives the features and the unaugmented view's probabilities
    feats, plain = features_and_probs(model, x_test) if features else (None, None)
    features_seconds = time.perf_counter() - t if features else None
    levels = tta_levels(model, x_test, tta=tta, plain=plain)
    probs = levels[tta]
    eval_seconds = time.perf_counter() - t
    val_probs = predict_probs(model, validation[0], tta=tta) if validation is not None and len(validation[0]) else None
    timing = inference_ms(model, x_test, tta=tta)
    total, _ = models.count_params(model)
    flops = models.flops_per_image(model)
    result = metrics.summarize(probs, y_test)
    fitted = None
    if validation is not None:
        fitted = calibration.calibrate(probs, y_test, val_probs, np.asarray(validation[1]).reshape(-1))
    if fitted:
        result["calibration"] = {**result["calibration"], **fitted}
    if len(levels) > 1:  # what test-time augmentation is worth: accuracy at each level, from the same views
        result["tta_accuracy"] = {k: float((v.argmax(1) == y_test).mean()) for k, v in levels.items()}
    machine = runtime.info()
    result.update(
        {
            "stage": train_info["stage"],
            "run_id": train_info.get("run_id"),
            "params": total,
            "flops_per_image": flops,
            "inference": timing,
            "eval_seconds": round(eval_seconds, 2),
            "tta": tta,
            "eval_runtime": machine,
            "machine": machine["machine"],
            "keras_version": machine["versions"]["keras"],
            "backend": machine["backend"],
            "test_data_fingerprint": train_info.get("test_data_fingerprint"),
            "evaluated": time.time(),
        }
    )
    return Measured(result, probs, val_probs, feats, features_seconds)


def evaluate_into(model, train_info: dict, x_test, y_test, out: Path, stream=sys.stderr) -> dict:
    """``measure`` and write metrics.json and test_predictions.npz into ``out`` (atomically). The separation number
    of the feature map already in ``out`` stays when it belongs to this run and these test images (the map depends on
    the model and the images, not on the evaluation); ``python -m cifar_dash embed`` redraws it."""
    try:
        before = artifacts.read_json(out / artifacts.METRICS)
    except artifacts.ArtifactError:
        before = {}
    m = measure(model, train_info, (x_test, y_test))
    same = ("run_id", "test_data_fingerprint", "n_test")
    if isinstance(before, dict) and before.get("separation") and all(before.get(k) == m.metrics.get(k) for k in same):
        m.metrics["separation"] = before["separation"]
    artifacts.save_predictions(out / artifacts.PREDICTIONS, m.probs, np.asarray(y_test), np.arange(len(y_test)))
    artifacts.write_json(out / artifacts.METRICS, m.metrics)
    print(metrics.summary_line(m.metrics), file=stream)
    return m.metrics


def evaluate(stage_key: str, out_dir=None, data_path=None, limit: int | None = None, stream=sys.stderr) -> dict:
    """Re-evaluate the stage's published model.keras (e.g. on another machine) and rewrite its metrics."""
    stage = stages.get(stage_key)
    out = Path(out_dir) if out_dir else artifacts.stage_dir(stage.key)
    info = artifacts.read_json(out / artifacts.TRAIN_INFO)
    if limit is None:
        limit = info.get("limit")
    model = artifacts.load_model(out / artifacts.MODEL)
    cifar = data_mod.load(data_path)
    prints = cifar.fingerprints()
    trained_on = info.get("train_data_fingerprint")
    if trained_on and trained_on != prints["train"]:
        print(
            f"warning: training-set fingerprint {prints['train'][:12]} differs from the one the model was trained on "
            f"({trained_on[:12]})",
            file=stream,
        )
    x_test, y_test = cifar.x_test, cifar.y_test
    if limit:
        x_test, y_test = x_test[:limit], y_test[:limit]
    info = dict(info, data_fingerprint=prints["all"], test_data_fingerprint=prints["test"])
    return evaluate_into(model, info, x_test, y_test, out, stream=stream)
