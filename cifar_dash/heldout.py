"""What is fit on held-out images after training: each stage's temperature and the none-of-these detector.

``python -m cifar_dash calibrate [STAGE ...]`` runs it for the published stages (all by default), and ``evaluate``
refits a stage's temperature; a new run's own is fit by its assessment (assess.py). Nothing here runs while a page renders.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import numpy as np

from . import artifacts, calibration, ood
from . import data as data_mod
from . import metrics as metrics_mod


def validation_split(info: dict, cifar) -> tuple[np.ndarray, np.ndarray]:
    """The validation images a run held out (empty when it trained on every training image). Refuses data other
    than what the run was trained on: its validation images would not be held out."""
    trained_on = info.get("train_data_fingerprint")
    if trained_on and trained_on != cifar.fingerprints()["train"]:
        raise data_mod.DataError(
            f"{info.get('stage')}: this CIFAR-10 copy's training set differs from the one the stage was trained on "
            "(fingerprint); its validation images would not be held out"
        )
    _, (x_val, y_val), _ = data_mod.split(cifar, info.get("limit"), int(info.get("n_validation") or 0))
    return x_val, np.asarray(y_val).reshape(-1)


def calibrate_folder(folder: Path, x_val, y_val, stream=sys.stderr) -> dict:
    """Fit the temperature of the stage in ``folder`` on its validation images ``x_val`` (none: two-fold
    cross-fitting on the test set) and write it into its metrics.json (``calibration``). The validation predictions
    stored by an earlier fit of the same model are reused; else the model runs and they are stored."""
    from .inference import predict_probs, tta_of

    info = artifacts.read_json(folder / artifacts.TRAIN_INFO)
    metrics = artifacts.read_json(folder / artifacts.METRICS)
    test = artifacts.load_predictions(folder / artifacts.PREDICTIONS)
    y_val = np.asarray(y_val).reshape(-1)
    val_probs = None
    if len(x_val):
        val_probs = _stored_val_probs(folder, y_val)
        if val_probs is None:
            model = artifacts.load_model(folder / artifacts.MODEL)
            val_probs = predict_probs(model, x_val, tta=tta_of(info))
            artifacts.save_predictions(folder / artifacts.VAL_PREDICTIONS, val_probs, y_val, np.arange(len(y_val)))
    fitted = calibration.calibrate(test.probs, test.labels, val_probs, y_val)
    metrics["calibration"] = {**metrics.get("calibration", {}), **fitted}
    artifacts.write_json(folder / artifacts.METRICS, metrics)
    print(metrics_mod.temperature_line(info.get("stage"), metrics["calibration"]), file=stream)
    return fitted


def calibrate_stage_folder(folder: Path, cifar, stream=sys.stderr) -> dict:
    """``calibrate_folder`` on the validation images the stage in ``folder`` held out of ``cifar``."""
    x_val, y_val = validation_split(artifacts.read_json(folder / artifacts.TRAIN_INFO), cifar)
    return calibrate_folder(folder, x_val, y_val, stream=stream)


def _stored_val_probs(folder: Path, y_val: np.ndarray) -> np.ndarray | None:
    """The validation predictions stored by an earlier fit, when they are of this model (written after it) and of
    these images (same labels); else None."""
    path = folder / artifacts.VAL_PREDICTIONS
    try:
        if path.stat().st_mtime_ns < (folder / artifacts.MODEL).stat().st_mtime_ns:
            return None
        stored = artifacts.load_predictions(path)
    except (OSError, artifacts.ArtifactError):
        return None
    return stored.probs if np.array_equal(stored.labels, y_val) else None


def fit_detector(cifar, root: Path, stream=sys.stderr) -> dict:
    """Fit the detector (ood.py) from the published ``ood.STAGE`` and write ood.json and its bank into ``root``."""
    from .inference import layer_features

    model = artifacts.load_model(artifacts.stage_dir(ood.STAGE, root) / artifacts.MODEL)
    info = artifacts.read_json(artifacts.stage_dir(ood.STAGE, root) / artifacts.TRAIN_INFO)
    x_val, _ = validation_split(info, cifar)
    if not len(x_val):
        raise ValueError(f"{ood.STAGE} held no validation images out; the detector's threshold needs them")
    sets = ood.load_sets()

    def feats(x, what):
        t = time.perf_counter()
        f = layer_features(model, ood.LAYER, x)
        print(f"  features of {len(x):,} {what}: {time.perf_counter() - t:.0f} s", file=stream)
        return f

    bank = feats(cifar.x_train[: ood.BANK], "bank images (training set)")
    val = feats(x_val, "validation images")
    test = feats(cifar.x_test, "test images")
    by_set = {k: feats(v["x"], f"non-CIFAR pictures ({k})") for k, v in sets.items()}
    record, bank_norm = ood.fit(bank, val, test, by_set, {k: v["half"] for k, v in sets.items()})
    record["test_data_fingerprint"] = cifar.fingerprints()["test"]
    record["fitted"] = time.time()
    ood.write(root, record, bank_norm)
    print(
        f"detector: false alarms on {record['n_test']:,} test images {record['false_alarm_rate']:.1%}; flagged "
        f"{record['detection_rate_evaluation']:.1%} of {record['n_evaluation']} held-out non-CIFAR pictures",
        file=stream,
    )
    return record


def calibrate(keys, data_path=None, root: Path | None = None, detector: bool = True, stream=sys.stderr) -> None:
    """Fit the temperatures of the published ``keys`` (every trained stage by default) and the detector."""
    from . import stages

    root = Path(root) if root else artifacts.checkpoints_root()
    keys = list(keys) or [s.key for s in stages.STAGES if (artifacts.stage_dir(s.key, root) / artifacts.METRICS).exists()]
    cifar = data_mod.load(data_path)
    for i, key in enumerate(keys, 1):
        t = time.perf_counter()
        print(f"[{i}/{len(keys)}] {key}", file=stream)
        calibrate_stage_folder(artifacts.stage_dir(key, root), cifar, stream=stream)
        print(f"  {time.perf_counter() - t:.0f} s", file=stream)
    if detector:
        print(f"detector ({ood.STAGE} features)", file=stream)
        fit_detector(cifar, root, stream=stream)
