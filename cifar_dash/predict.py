"""Predict with every trained stage on arbitrary 32x32x3 uint8 images."""

from __future__ import annotations

import hashlib
import os
import threading
from collections import OrderedDict
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from . import artifacts
from .data import CLASS_NAMES
from .inference import layer_model, padded, predict_probs, tta_of, with_features


@dataclass
class LoadedStage:
    key: str
    model: object
    tta: str  # test-time augmentation mode (inference.tta_mode)
    _parts: dict = field(default_factory=dict, repr=False)  # layer name -> a model ending at that layer

    def probs_and_features(self, layer: str, images: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(n, 10) probabilities and (n, d) outputs of the named layer, from one model call where the stage has no
        test-time augmentation (each call costs a pass through the model)."""
        if self.tta != "none":
            return predict(self, images), self.layer_features(layer, images)
        both = f"{layer}+probs"
        if both not in self._parts:
            self._parts[both] = with_features(self.model, layer)
        x = np.asarray(images, dtype=np.float32).reshape(-1, 32, 32, 3)
        feats, probs = self._parts[both].predict_on_batch(padded(x, 64))
        return np.asarray(probs, np.float32)[: len(x)], np.asarray(feats, np.float32)[: len(x)].reshape(len(x), -1)

    def layer_features(self, layer: str, images: np.ndarray) -> np.ndarray:
        """(n, d) float32 outputs of the named layer for raw uint8 images (the sub-model is built once)."""
        if layer not in self._parts:
            self._parts[layer] = layer_model(self.model, layer)
        x = np.asarray(images, dtype=np.float32).reshape(-1, 32, 32, 3)
        out = np.asarray(self._parts[layer].predict_on_batch(padded(x, 64)), np.float32)
        return out[: len(x)].reshape(len(x), -1)


def load_stage(key: str, root: Path | None = None) -> LoadedStage:
    folder = artifacts.stage_dir(key, root)
    model = artifacts.load_model(folder / artifacts.MODEL)
    tta = "none"
    try:
        tta = tta_of(artifacts.read_json(folder / artifacts.TRAIN_INFO))
    except artifacts.ArtifactError:
        pass
    return LoadedStage(key, model, tta)


def predict(loaded: LoadedStage, images: np.ndarray) -> np.ndarray:
    images = np.asarray(images, dtype=np.uint8).reshape(-1, 32, 32, 3)
    return predict_probs(loaded.model, images, batch_size=64, tta=loaded.tta)


def top_k(probs: np.ndarray, k: int = 3) -> list[list[tuple[str, float]]]:
    order = np.argsort(-probs, axis=1)[:, :k]
    return [[(CLASS_NAMES[j], float(p[j])) for j in row] for p, row in zip(probs, order)]


def image_digest(image: np.ndarray) -> str:
    return hashlib.sha256(np.ascontiguousarray(image, dtype=np.uint8).tobytes()).hexdigest()


class PredictionCache:
    """Probabilities per (stage, model version, image digest), shared by every session of a server: a new upload
    is predicted alone, never the batch it joins. ``predicted`` counts the images each stage actually ran on.

    One model call per stage and version at a time (a second caller then finds the images stored); the calls of
    different stages may run at once, from several threads (``pipelined``)."""

    def __init__(self, max_entries: int = 20_000):
        self.max_entries = max_entries
        self._probs: OrderedDict[tuple, np.ndarray] = OrderedDict()
        self._lock = threading.Lock()  # guards the dict and the counts, never held during a model call
        self._stage_locks: dict[tuple, threading.RLock] = {}
        self.predicted: dict[str, int] = {}

    def _stage_lock(self, key: str, version) -> threading.RLock:
        with self._lock:
            return self._stage_locks.setdefault((key, version), threading.RLock())

    def lacks(self, key: str, version, images: np.ndarray, layer: str | None = None) -> bool:
        """Whether some of ``images`` has no stored probabilities (or ``layer`` features) for this stage."""
        images = np.asarray(images, dtype=np.uint8).reshape(-1, 32, 32, 3)
        whats = [(key, version)] + ([(key, version, layer)] if layer else [])
        with self._lock:
            return any((*w, image_digest(im)) not in self._probs for w in whats for im in images)

    def probs(self, key: str, version, images: np.ndarray, load: Callable[[], LoadedStage]) -> np.ndarray:
        """(n, 10) probabilities of stage ``key`` (model ``version``) for ``images``; ``load`` is called only when
        some image has not been seen."""
        return self._cached((key, version), images, lambda x: predict(load(), x), key)

    def features(self, key: str, version, layer: str, images: np.ndarray, load: Callable[[], LoadedStage]):
        """(n, d) outputs of stage ``key``'s ``layer`` for ``images``, cached like ``probs``."""
        return self._cached((key, version, layer), images, lambda x: load().layer_features(layer, x), f"{key}/{layer}")

    def probs_and_features(self, key: str, version, layer: str, images: np.ndarray, load: Callable[[], LoadedStage]):
        """``probs`` and ``features`` of the same images, from one model call for the images that have neither."""
        images = np.asarray(images, dtype=np.uint8).reshape(-1, 32, 32, 3)
        digests = [image_digest(im) for im in images]
        with self._stage_lock(key, version):
            with self._lock:
                neither = [
                    i
                    for i, d in enumerate(digests)
                    if (key, version, d) not in self._probs and (key, version, layer, d) not in self._probs
                ]
            if neither:
                probs, feats = load().probs_and_features(layer, images[neither])
                by_digest = {digests[i]: (p, f) for i, p, f in zip(neither, probs, feats)}

                def stored(part):  # the rows just computed, for whichever of these images the cache still lacks
                    return lambda x: np.stack([by_digest[image_digest(im)][part] for im in x])

                self._cached((key, version), images[neither], stored(0), key)
                self._cached((key, version, layer), images[neither], stored(1), f"{key}/{layer}")
            return self.probs(key, version, images, load), self.features(key, version, layer, images, load)

    def seed(self, key: str, version, images: np.ndarray, probs: np.ndarray) -> None:
        """Store probabilities the stage is known to give for ``images`` (its evaluation's stored test predictions,
        ``stored_test_probs``), so ``probs`` answers them without a model call."""
        images = np.asarray(images, dtype=np.uint8).reshape(-1, 32, 32, 3)
        with self._lock:
            for im, p in zip(images, np.asarray(probs, np.float32)):
                self._probs[(key, version, image_digest(im))] = p
                self._probs.move_to_end((key, version, image_digest(im)))

    def _cached(self, what: tuple, images: np.ndarray, run: Callable[[np.ndarray], np.ndarray], key: str):
        images = np.asarray(images, dtype=np.uint8).reshape(-1, 32, 32, 3)
        ids = [(*what, image_digest(im)) for im in images]
        with self._stage_lock(*what[:2]):  # the stage's model runs once for these images, other stages alongside
            with self._lock:  # what is stored now (another stage's call may evict it meanwhile)
                have = {k: self._probs[k] for k in ids if k in self._probs}
            missing = sorted({i for i, k in enumerate(ids) if k not in have})
            if missing:
                have.update(zip((ids[i] for i in missing), run(images[missing])))
            with self._lock:
                if missing:
                    self.predicted[key] = self.predicted.get(key, 0) + len(missing)
                for k in ids:
                    self._probs[k] = have[k]
                    self._probs.move_to_end(k)
                while len(self._probs) > max(self.max_entries, len(ids)):
                    self._probs.popitem(last=False)
        return np.stack([have[k] for k in ids])


def pipelined(tasks, load: Callable, compute: Callable, workers: int | None = None):
    """For each task in turn: ``load(task)`` in this thread, then ``compute(task, loaded)`` on a pool of threads;
    yields ``(task, result)`` as each finishes (``result`` is the exception that ``load`` or ``compute`` raised, if
    one did). Models load one at a time in the caller's thread (Keras builds them with process-wide state) while the
    stages already loaded predict: a cold server shows its first answers while the big models load, and a warm one
    runs the stages' model calls side by side."""
    workers = workers or min(4, os.cpu_count() or 1)
    pending = {}
    with ThreadPoolExecutor(workers) as pool:
        for task in tasks:
            try:
                pending[pool.submit(compute, task, load(task))] = task
            except Exception as e:
                yield task, e
            for f in [f for f in pending if f.done()]:
                yield pending.pop(f), _outcome(f)
        for f in as_completed(list(pending)):
            yield pending.pop(f), _outcome(f)


def _outcome(future):
    error = future.exception()
    return future.result() if error is None else error


def stored_test_probs(preds, metrics: dict | None, test_fingerprint: str | None, indices) -> np.ndarray | None:
    """The probabilities a stage's evaluation stored (``test_predictions.npz``, artifacts.Predictions) for the test
    images ``indices``: the same model file's answers on the same images, so a test image needs no model call. None
    unless the stage was evaluated on this very test set (its ``test_data_fingerprint`` in metrics.json equals
    ``test_fingerprint``) and every index is stored."""
    if preds is None or not test_fingerprint or (metrics or {}).get("test_data_fingerprint") != test_fingerprint:
        return None
    row = {int(i): k for k, i in enumerate(preds.indices)}
    if any(int(i) not in row for i in indices):
        return None
    return np.asarray(preds.probs[[row[int(i)] for i in indices]], np.float32)
