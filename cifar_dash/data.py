"""CIFAR-10 loading, validation and fingerprinting.

Default source is ``keras.datasets.cifar10.load_data()`` (downloads once into ~/.keras). A local copy wins when
given: ``--data PATH`` or the ``CIFAR10_PATH`` environment variable, pointing at an ``.npz`` with
``x_train, y_train, x_test, y_test``, the official ``cifar-10-batches-py`` folder, or ``cifar-10-python.tar.gz``.
"""

from __future__ import annotations

import hashlib
import os
import pickle
import tarfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

CLASS_NAMES = (
    "airplane",
    "automobile",
    "bird",
    "cat",
    "deer",
    "dog",
    "frog",
    "horse",
    "ship",
    "truck",
)
NUM_CLASSES = len(CLASS_NAMES)
IMAGE_SHAPE = (32, 32, 3)
ENV_VAR = "CIFAR10_PATH"


class DataError(ValueError):
    """The data set could not be found, read or validated; the message names the file."""


@dataclass(frozen=True)
class Cifar10:
    x_train: np.ndarray
    y_train: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray
    source: str

    def fingerprint(self) -> str:
        return fingerprint(self.x_train, self.y_train, self.x_test, self.y_test)

    def fingerprints(self) -> dict:
        """Whole set, training part, test part: a model trained elsewhere can prove it saw the same images."""
        return {
            "all": self.fingerprint(),
            "train": fingerprint(self.x_train, self.y_train),
            "test": self.test_fingerprint(),
        }

    def test_fingerprint(self) -> str:
        """The test part's alone (what the pages check stored test predictions against), without hashing the rest."""
        return fingerprint(self.x_test, self.y_test)


def fingerprint(*arrays: np.ndarray) -> str:
    """sha256 over shapes, dtypes and bytes of the arrays, in order."""
    h = hashlib.sha256()
    for a in arrays:
        a = np.ascontiguousarray(a)
        h.update(f"{a.shape}{a.dtype.str}".encode())
        h.update(memoryview(a).cast("B"))
    return h.hexdigest()


def _validate(x_train, y_train, x_test, y_test, where: str) -> Cifar10:
    def check_x(name, x):
        if x.ndim != 4 or x.shape[1:] != IMAGE_SHAPE:
            raise DataError(f"{where}: {name} has shape {x.shape}, expected (N, 32, 32, 3)")
        if x.dtype != np.uint8:
            raise DataError(f"{where}: {name} has dtype {x.dtype}, expected uint8")

    def check_y(name, y, n):
        y = np.asarray(y).reshape(-1)
        if y.shape[0] != n:
            raise DataError(f"{where}: {name} has {y.shape[0]} labels for {n} images")
        if not np.issubdtype(y.dtype, np.integer):
            raise DataError(f"{where}: {name} has dtype {y.dtype}, expected integers")
        if y.size and (y.min() < 0 or y.max() >= NUM_CLASSES):
            raise DataError(f"{where}: {name} has labels outside 0..9 (min {y.min()}, max {y.max()})")
        return y.astype(np.int64)

    check_x("x_train", x_train)
    check_x("x_test", x_test)
    y_train = check_y("y_train", y_train, x_train.shape[0])
    y_test = check_y("y_test", y_test, x_test.shape[0])
    return Cifar10(x_train, y_train, x_test, y_test, where)


def _from_batches(batches: dict[str, dict]) -> tuple:
    def unpack(d):
        x = np.asarray(d[b"data"] if b"data" in d else d["data"], dtype=np.uint8)
        y = d.get(b"labels", d.get("labels"))
        return x.reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1), np.asarray(y)

    names = [f"data_batch_{i}" for i in range(1, 6)]
    missing = [n for n in names + ["test_batch"] if n not in batches]
    if missing:
        raise KeyError(", ".join(missing))
    parts = [unpack(batches[n]) for n in names]
    x_test, y_test = unpack(batches["test_batch"])
    return (np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts]), x_test, y_test)


def load_path(path: str | os.PathLike) -> Cifar10:
    p = Path(path).expanduser()
    if not p.exists():
        raise DataError(f"{p}: no such file or folder (set --data or {ENV_VAR} to a CIFAR-10 copy)")
    try:
        if p.is_dir():
            batches = {}
            for f in p.iterdir():
                if f.name.startswith(("data_batch_", "test_batch")):
                    with open(f, "rb") as fh:
                        batches[f.name] = pickle.load(fh, encoding="bytes")
            arrays = _from_batches(batches)
        elif p.name.endswith((".tar.gz", ".tgz", ".tar")):
            batches = {}
            with tarfile.open(p) as tar:
                for m in tar.getmembers():
                    name = Path(m.name).name
                    if m.isfile() and name.startswith(("data_batch_", "test_batch")):
                        batches[name] = pickle.load(tar.extractfile(m), encoding="bytes")
            arrays = _from_batches(batches)
        else:
            with np.load(p, allow_pickle=False) as z:
                missing = [k for k in ("x_train", "y_train", "x_test", "y_test") if k not in z.files]
                if missing:
                    raise DataError(f"{p}: missing arrays {missing} (has {z.files})")
                arrays = tuple(z[k] for k in ("x_train", "y_train", "x_test", "y_test"))
    except DataError:
        raise
    except KeyError as e:
        raise DataError(f"{p}: missing CIFAR-10 batches: {e}") from e
    except Exception as e:  # corrupt zip, pickle, tar ...
        raise DataError(f"{p}: cannot read as CIFAR-10 ({type(e).__name__}: {e})") from e
    return _validate(*arrays, where=str(p))


def load(path: str | os.PathLike | None = None) -> Cifar10:
    """Load CIFAR-10 from ``path``, else ``$CIFAR10_PATH``, else the Keras download."""
    path = path or os.environ.get(ENV_VAR)
    if path:
        return load_path(path)
    import keras

    try:
        (x_train, y_train), (x_test, y_test) = keras.datasets.cifar10.load_data()
    except Exception as e:
        raise DataError(
            f"keras.datasets.cifar10 download failed ({type(e).__name__}: {e}); point --data or {ENV_VAR} at a local copy"
        ) from e
    return _validate(x_train, y_train, x_test, y_test, where="keras.datasets.cifar10")


def split(data: Cifar10, limit: int | None, validation_size: int):
    """(x_train, y_train), (x_val, y_val), (x_test, y_test); validation is held out from the end of train.

    ``limit`` keeps the first N training and N test images (smoke runs); validation shrinks to a tenth of N.
    ``validation_size=0`` holds nothing out (the validation arrays are empty).
    """
    if limit is not None and (not isinstance(limit, int | np.integer) or limit < 0):
        raise ValueError(f"limit {limit!r} must be a positive whole number (0 or None: all images)")
    x, y = data.x_train, data.y_train
    x_test, y_test = data.x_test, data.y_test
    if limit:
        x, y = x[:limit], y[:limit]
        x_test, y_test = x_test[:limit], y_test[:limit]
        validation_size = min(validation_size, max(1, limit // 10))
    n_val = min(validation_size, len(x) - 1)
    if n_val <= 0:  # the recipe trains on every training image and holds none out
        return (x, y), (x[:0], y[:0]), (x_test, y_test)
    return (x[:-n_val], y[:-n_val]), (x[-n_val:], y[-n_val:]), (x_test, y_test)
