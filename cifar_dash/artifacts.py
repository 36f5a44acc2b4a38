"""Where things live and how they are written: checkpoints/STAGE/ artifacts (atomic writes) and reading a stage's
artifacts back with clear errors. Run folders (checkpoints/STAGE/runs/) are runs.py's."""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import numpy as np

MODEL = "model.keras"
METRICS = "metrics.json"
HISTORY = "history.json"
TRAIN_INFO = "train_info.json"
PREDICTIONS = "test_predictions.npz"
VAL_PREDICTIONS = "val_predictions.npz"  # the validation images' probabilities the temperature was fit on
ROBUSTNESS = "robustness.json"
EMBEDDING = "embedding.npz"  # embedding.py: the test images' 2-D feature map
SEEDS = "seeds.json"  # `python -m cifar_dash seeds`: one recipe trained with several seeds
ABLATIONS = "ablations.json"  # benchmarks/ablate_speedrun.py: the recipe with one trick removed at a time


class ArtifactError(RuntimeError):
    """A stage's artifacts are missing or unreadable; str(e) says which file and why."""


def project_root() -> Path:
    return Path(__file__).resolve().parent.parent


def checkpoints_root() -> Path:
    return Path(os.environ.get("CIFAR_DASH_CHECKPOINTS", project_root() / "checkpoints"))


def stage_dir(stage: str, root: Path | None = None) -> Path:
    return Path(root or checkpoints_root()) / stage


def cache_root() -> Path:
    return Path(os.environ.get("CIFAR_DASH_CACHE", Path.home() / ".cache" / "cifar-dash"))


@contextmanager
def atomic_path(path: Path):
    """Yield a temporary path in the same folder; on success it replaces ``path`` in one rename."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    # keep the real suffix: Keras insists on ".keras" / ".weights.h5"
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.stem}.", suffix="".join(path.suffixes) or ".tmp")
    os.close(fd)
    os.unlink(tmp)
    try:
        yield Path(tmp)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def write_json(path: Path, obj) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(obj, indent=1, default=_json_default))


def _json_default(o):
    if isinstance(o, np.generic):
        return o.item()
    if isinstance(o, np.ndarray):
        return o.tolist()
    raise TypeError(f"not JSON serialisable: {type(o)}")


def read_json(path: Path) -> dict:
    path = Path(path)
    if not path.exists():
        raise ArtifactError(f"{path} is missing")
    try:
        return json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ArtifactError(f"{path} is corrupt ({e})") from e


def save_predictions(path: Path, probs: np.ndarray, labels: np.ndarray, indices: np.ndarray) -> None:
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as fh:
            np.savez_compressed(
                fh, probs=probs.astype(np.float32), labels=labels.astype(np.int64), indices=indices.astype(np.int64)
            )


@dataclass(frozen=True)
class Predictions:
    probs: np.ndarray  # (n, 10) float32
    labels: np.ndarray  # (n,) true class
    indices: np.ndarray  # (n,) index into the CIFAR-10 test set

    @property
    def predicted(self) -> np.ndarray:
        return self.probs.argmax(axis=1)

    @property
    def confidence(self) -> np.ndarray:
        return self.probs.max(axis=1)


def load_predictions(path: Path) -> Predictions:
    path = Path(path)
    if not path.exists():
        raise ArtifactError(f"{path} is missing")
    try:
        with np.load(path, allow_pickle=False) as z:
            p = Predictions(z["probs"], z["labels"], z["indices"])
    except Exception as e:
        raise ArtifactError(f"{path} is corrupt ({type(e).__name__}: {e})") from e
    if p.probs.ndim != 2 or p.probs.shape[1] != 10 or len(p.probs) != len(p.labels) or len(p.labels) != len(p.indices):
        raise ArtifactError(f"{path} has inconsistent shapes {p.probs.shape}, {p.labels.shape}, {p.indices.shape}")
    return p


def file_sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def load_model(path: Path):
    """Load a stage's model.keras with a clear error when it is missing or damaged."""
    import keras

    from . import layers  # noqa: F401  (registers custom layers)

    path = Path(path)
    if not path.exists():
        raise ArtifactError(f"{path} is missing: train the stage first")
    try:
        model = keras.saving.load_model(path, compile=False)
    except Exception as e:
        raise ArtifactError(f"{path} could not be loaded ({type(e).__name__}: {str(e)[:300]})") from e
    from .keras_workarounds import allow_jit, bilinear_xla_off

    allow_jit(model)  # predict compiles under JAX despite the augmentation layers (inactive at inference)
    bilinear_xla_off(model)  # but not through TensorFlow's faulty XLA bilinear resize (keras_workarounds item 3)
    return model
