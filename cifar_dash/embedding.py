"""Each stage's feature space on the test images: a 2-D map (``embedding.npz``) and one number for how well the
classes separate there.

The features are the penultimate ones (inference.py: the input of the last Dense layer, one pass, no test-time
augmentation), L2-normalised, reduced to 50 dimensions by PCA and laid out in 2-D by openTSNE (chosen by measured
time and memory on 2 cores: docs/embedding.md). The separation number is the leave-one-out k-nearest-neighbour
accuracy (k = 10, cosine distance) of the true labels in the full feature space, not in the 2-D map.

``python -m cifar_dash embed [STAGE ...]`` computes them for the published stages; a training run's assessment
(assess.py) computes its own from the features it measured. Nothing here runs while a page renders: pages read
the stored file.
"""

from __future__ import annotations

import json
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from . import artifacts

K = 10
METRIC = "cosine"
PCA_DIMS = 50
PERPLEXITY = 30
SEED = 0
MIN_IMAGES = 4 * K  # fewer test images make neither a map nor a neighbourhood


@dataclass(frozen=True)
class Embedding:
    xy: np.ndarray  # (n, 2) float16
    indices: np.ndarray  # (n,) index into the CIFAR-10 test set
    meta: dict  # method, parameters, seconds, separation


def separation(features: np.ndarray, labels: np.ndarray, k: int = K) -> float:
    """Leave-one-out kNN accuracy: each image's class voted by its ``k`` nearest other images (cosine distance);
    a tie goes to the lowest class index."""
    from sklearn.neighbors import NearestNeighbors

    labels = np.asarray(labels).reshape(-1)
    nn = NearestNeighbors(n_neighbors=k, metric=METRIC, algorithm="brute", n_jobs=2).fit(features)
    neighbours = nn.kneighbors(return_distance=False)  # without a query, each point's own row is left out
    votes = np.zeros((len(labels), int(labels.max()) + 1), np.int32)
    np.add.at(votes, (np.repeat(np.arange(len(labels)), k), labels[neighbours].reshape(-1)), 1)
    return float((votes.argmax(axis=1) == labels).mean())


def project(features: np.ndarray, seed: int = SEED) -> tuple[np.ndarray, dict]:
    """(n, 2) float32 t-SNE map of ``features`` and the parameters that made it."""
    import openTSNE
    from sklearn.decomposition import PCA

    f = np.asarray(features, np.float32)
    f = f / np.maximum(np.linalg.norm(f, axis=1, keepdims=True), 1e-12)
    dims = min(PCA_DIMS, f.shape[1], len(f))
    z = PCA(dims, random_state=seed).fit_transform(f) if f.shape[1] > dims else f
    threads = 2 if len(f) >= 2000 else 1  # a second thread only costs time on a small set (a smoke run's)
    perplexity = min(PERPLEXITY, (len(f) - 1) / 3)
    xy = np.asarray(openTSNE.TSNE(perplexity=perplexity, n_jobs=threads, random_state=seed).fit(z))
    params = {
        "method": "openTSNE",
        "version": openTSNE.__version__,
        "preprocessing": f"L2-normalised, PCA to {dims} dimensions",
        "perplexity": perplexity,
        "threads": threads,
        "seed": seed,
        "features": "input of the last Dense layer",
        "feature_dims": int(f.shape[1]),
    }
    return xy.astype(np.float32), params


def compute(features: np.ndarray, labels: np.ndarray, indices: np.ndarray) -> tuple[Embedding, dict]:
    """The map and the separation record (for metrics.json) of one stage's test features."""
    t = time.perf_counter()
    xy, params = project(features)
    seconds = time.perf_counter() - t
    t = time.perf_counter()
    sep = {
        "knn_accuracy": separation(features, labels),
        "k": K,
        "metric": METRIC,
        "rule": f"leave-one-out {K}-nearest-neighbour accuracy of the true labels in the penultimate features",
        "n": int(len(labels)),
        "feature_dims": int(features.shape[1]),
    }
    params.update(seconds=round(seconds, 1), separation_seconds=round(time.perf_counter() - t, 1))
    return Embedding(xy.astype(np.float16), np.asarray(indices, np.int64), {**params, "separation": sep}), sep


def write(folder: Path, emb: Embedding) -> None:
    with artifacts.atomic_path(Path(folder) / artifacts.EMBEDDING) as tmp:
        with open(tmp, "wb") as fh:
            np.savez_compressed(fh, xy=emb.xy.astype(np.float16), indices=emb.indices, meta=np.array(json.dumps(emb.meta)))


def load(folder: Path) -> Embedding:
    path = Path(folder) / artifacts.EMBEDDING
    if not path.exists():
        raise artifacts.ArtifactError(f"{path} is missing")
    try:
        with np.load(path, allow_pickle=False) as z:
            emb = Embedding(z["xy"], z["indices"], json.loads(str(z["meta"])))
    except Exception as e:
        raise artifacts.ArtifactError(f"{path} is corrupt ({type(e).__name__}: {e})") from e
    if emb.xy.ndim != 2 or emb.xy.shape[1] != 2 or len(emb.xy) != len(emb.indices) or not np.isfinite(emb.xy).all():
        raise artifacts.ArtifactError(f"{path} has inconsistent shapes {emb.xy.shape}, {emb.indices.shape}")
    return emb


def too_few(n: int) -> str | None:
    """Why ``n`` test images make no map, or None."""
    return f"no feature map: {n} test images are too few (at least {MIN_IMAGES})" if n < MIN_IMAGES else None


def of_features(feats, labels, indices, name: str, stream=sys.stderr, features_seconds: float | None = None) -> Embedding:
    """The map and separation of penultimate features ``feats`` of the test images ``indices`` (true ``labels``)."""
    emb, sep = compute(feats, labels, indices)
    if features_seconds is not None:
        emb.meta["features_seconds"] = round(features_seconds, 1)
    took = f"features of {len(feats):,} test images {features_seconds:.0f} s, " if features_seconds is not None else ""
    print(f"{name}: {took}map {emb.meta['seconds']:.0f} s; kNN separation {sep['knn_accuracy']:.3f}", file=stream)
    return emb


def embed_folder(folder: Path, x_test, stream=sys.stderr) -> dict | None:
    """Compute the map of the stage in ``folder`` on the test images it was evaluated on (``x_test``, in the order of
    its stored predictions), write embedding.npz and record the separation in its metrics.json."""
    folder = Path(folder)
    metrics = artifacts.read_json(folder / artifacts.METRICS)
    preds = artifacts.load_predictions(folder / artifacts.PREDICTIONS)
    if problem := too_few(len(preds.indices)):
        print(problem, file=stream)
        return None
    model = artifacts.load_model(folder / artifacts.MODEL)
    from .inference import features_and_probs

    t = time.perf_counter()
    feats, _ = features_and_probs(model, np.asarray(x_test)[preds.indices])
    name = folder.name if folder.parent.name != "runs" else folder.parent.parent.name
    emb = of_features(feats, preds.labels, preds.indices, name, stream, time.perf_counter() - t)
    write(folder, emb)
    metrics["separation"] = emb.meta["separation"]
    artifacts.write_json(folder / artifacts.METRICS, metrics)
    return metrics["separation"]


def embed(keys, data_path=None, root: Path | None = None, stream=sys.stderr) -> None:
    """``embed_folder`` for the published ``keys`` (every trained stage by default), with progress."""
    from . import data as data_mod
    from . import stages

    root = Path(root) if root else artifacts.checkpoints_root()
    keys = list(keys) or [s.key for s in stages.STAGES if (artifacts.stage_dir(s.key, root) / artifacts.METRICS).exists()]
    cifar = data_mod.load(data_path)
    for i, key in enumerate(keys, 1):
        folder = artifacts.stage_dir(key, root)
        info = artifacts.read_json(folder / artifacts.METRICS)
        if info.get("test_data_fingerprint") and info["test_data_fingerprint"] != cifar.fingerprints()["test"]:
            raise data_mod.DataError(f"{key} was evaluated on other test images than this CIFAR-10 copy's (fingerprint)")
        t = time.perf_counter()
        print(f"[{i}/{len(keys)}] {key}", file=stream, flush=True)
        embed_folder(folder, cifar.x_test, stream=stream)
        print(f"  {time.perf_counter() - t:.0f} s", file=stream, flush=True)
