"""The CIFAR-10 test images the pages show, offline out of the box.

With ``CIFAR10_PATH`` set, every test image comes from that copy. Without it the pages use a sample shipped in the
repository (``assets/cifar10-test-sample.npz``): the test images the galleries show first, chosen from the shipped
predictions by ``select`` (per stage, the two most confident images of every confusion-matrix cell and its twelve most
confident mistakes; the sixteen most disputed images; per pair of stages, four images fixed and four broken). Its
sha256 is recorded in ``assets/cifar10-test-sample.json`` and checked at load; a sample that fails the check is not
used. No network, no Keras. ``python -m cifar_dash test-sample --data CIFAR10`` rewrites both files.
"""

from __future__ import annotations

import itertools
import json
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from . import artifacts
from . import data as data_mod

SAMPLE = "cifar10-test-sample.npz"
SAMPLE_INFO = "cifar10-test-sample.json"
N_TEST = 10000


def assets_dir() -> Path:
    return Path(os.environ.get("CIFAR_DASH_ASSETS", artifacts.project_root() / "assets"))


@dataclass
class TestImages:
    """Test images by their index in the official test set. ``available[i]`` says whether image ``i`` is here (all
    of them from a full copy, the sample's otherwise); ``x[i]`` is zeros where it is not."""

    x: np.ndarray | None
    y: np.ndarray | None
    available: np.ndarray | None
    source: str  # "full" | "sample" | "none"
    error: str | None = None
    fingerprint: str | None = None  # the test set's fingerprint (data.Cifar10.fingerprints()["test"]); the sample's source

    @property
    def n_available(self) -> int:
        return int(self.available.sum()) if self.available is not None else 0

    def have(self, indices) -> list[int]:
        """The positions in ``indices`` whose images are here."""
        if self.available is None:
            return []
        return [k for k, i in enumerate(indices) if 0 <= int(i) < len(self.available) and self.available[int(i)]]


def select(
    preds: dict,
    per_cell: int = 2,
    mistakes: int = 12,
    disputed: int = 16,
    per_pair: int = 4,
    suspects=(),
    random: int = 500,
) -> np.ndarray:
    """The test indices the pages show first, from every stage's stored predictions (artifacts.Predictions), the
    ``suspects`` the doubtful-labels gallery shows, and ``random`` test images drawn with seed 0 (a selection on a
    feature map finds some of its images offline)."""
    from . import analysis

    need: set[int] = set()

    def add(ix):
        need.update(int(i) for i in ix)

    for p in preds.values():
        for t in range(data_mod.NUM_CLASSES):
            for q in range(data_mod.NUM_CLASSES):
                add(p.indices[analysis.cell_indices(p, t, q)[:per_cell]])
        add(p.indices[analysis.confident_mistakes(p, mistakes)])
    add(d["index"] for d in analysis.most_disputed(preds, disputed))
    for a, b in itertools.combinations(list(preds), 2):
        fb = analysis.fixed_and_broken(preds[a], preds[b])
        add(fb["fixed"][:per_pair])
        add(fb["broken"][:per_pair])
    add(suspects)
    if preds and random:
        n = len(next(iter(preds.values())).indices)
        add(np.random.default_rng(0).choice(n, min(random, n), replace=False))
    return np.array(sorted(need), dtype=np.int64)


def write_sample(cifar: data_mod.Cifar10, indices: np.ndarray, folder: Path | None = None) -> dict:
    """Write the sample (images, labels, indices) and its record (sha256, source fingerprint, rule)."""
    folder = Path(folder or assets_dir())
    folder.mkdir(parents=True, exist_ok=True)
    indices = np.asarray(indices, dtype=np.int64)
    with artifacts.atomic_path(folder / SAMPLE) as tmp:
        with open(tmp, "wb") as fh:
            np.savez_compressed(fh, indices=indices, x=cifar.x_test[indices], y=cifar.y_test[indices].astype(np.uint8))
    info = {
        "file": SAMPLE,
        "sha256": artifacts.file_sha256(folder / SAMPLE),
        "n_images": int(len(indices)),
        "of": int(len(cifar.x_test)),
        "test_data_fingerprint": cifar.fingerprints()["test"],
        "rule": "per stage, the 2 most confident test images of every confusion-matrix cell and its 12 most "
        "confident mistakes; the 16 images the stages disagree on most; per pair of stages, 4 images fixed and 4 "
        "broken; the 96 most doubtful test labels (label_issues.json); 500 random test images (seed 0) "
        "(cifar_dash/testimages.py, select)",
    }
    artifacts.write_json(folder / SAMPLE_INFO, info)
    return info


def load_sample(folder: Path | None = None) -> TestImages:
    """The shipped sample, checked against its recorded sha256; a TestImages with ``error`` when it cannot be used."""
    folder = Path(folder or assets_dir())
    try:
        info = json.loads((folder / SAMPLE_INFO).read_text())
        expected = info["sha256"]
    except (OSError, ValueError, KeyError, TypeError) as e:
        return TestImages(None, None, None, "none", f"the shipped test-image sample's record is unreadable ({e})")
    path = folder / SAMPLE
    if not path.exists():
        return TestImages(None, None, None, "none", f"{path} is missing")
    if artifacts.file_sha256(path) != expected:
        return TestImages(None, None, None, "none", f"{path} does not match the sha256 in {SAMPLE_INFO}")
    try:
        with np.load(path, allow_pickle=False) as z:
            idx, x, y = z["indices"], z["x"], z["y"]
    except Exception as e:
        return TestImages(None, None, None, "none", f"{path} is unreadable ({type(e).__name__})")
    n = int(info.get("of", N_TEST))
    if x.shape != (len(idx), *data_mod.IMAGE_SHAPE) or len(y) != len(idx) or (len(idx) and idx.max() >= n):
        return TestImages(None, None, None, "none", f"{path} has inconsistent shapes")
    full_x = np.zeros((n, *data_mod.IMAGE_SHAPE), dtype=np.uint8)
    full_y = np.zeros(n, dtype=np.int64)
    available = np.zeros(n, dtype=bool)
    full_x[idx], full_y[idx], available[idx] = x, y, True
    return TestImages(full_x, full_y, available, "sample", fingerprint=info.get("test_data_fingerprint"))


def load(source: str | None) -> TestImages:
    """Every test image from ``source`` (a CIFAR-10 copy, as ``data.load`` reads it) when given, else the shipped
    sample: pages never download anything."""
    if source:
        try:
            d = data_mod.load(source)
        except data_mod.DataError as e:
            sample = load_sample()
            sample.error = f"{e}; showing the shipped sample of {sample.n_available:,} test images instead"
            return sample
        y, prints = d.y_test.astype(np.int64), d.test_fingerprint()
        return TestImages(d.x_test, y, np.ones(len(d.x_test), dtype=bool), "full", fingerprint=prints)
    return load_sample()
