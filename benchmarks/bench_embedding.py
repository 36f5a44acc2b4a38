"""Time and peak memory of the 2-D projections a stage's feature map could use: prints figures, asserts nothing.

    python benchmarks/bench_embedding.py [--stage resnet50v2] [--data CIFAR10.npz]

The stage's penultimate features of the 10,000 test images are computed once (cached under ~/.cache/cifar-dash/),
L2-normalised and reduced to 50 dimensions by PCA as embedding.py does; then each method runs in a fresh process
(so its imports, compilation and peak RSS are its own): openTSNE (the one embedding.py uses), scikit-learn's
Barnes-Hut t-SNE, and umap-learn where it is installed (`pip install umap-learn`; not a requirement). For each:
wall seconds, peak RSS, and how well the classes stay apart in 2-D (5-fold 10-NN accuracy on the map).
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

RUN = r"""
import resource, sys, time, numpy as np
from sklearn.decomposition import PCA
from sklearn.model_selection import cross_val_score
from sklearn.neighbors import KNeighborsClassifier
method, feats, labels = sys.argv[1], np.load(sys.argv[2]), np.load(sys.argv[3])
t = time.perf_counter()
f = feats / np.maximum(np.linalg.norm(feats, axis=1, keepdims=True), 1e-12)
z = PCA(50, random_state=0).fit_transform(f)
if method == "openTSNE":
    import openTSNE
    xy = np.asarray(openTSNE.TSNE(perplexity=30, n_jobs=2, random_state=0).fit(z))
elif method == "sklearn TSNE":
    from sklearn.manifold import TSNE
    xy = TSNE(2, perplexity=30, init="pca", random_state=0, n_jobs=2).fit_transform(z)
else:
    import umap
    xy = umap.UMAP(n_neighbors=15, min_dist=0.1, random_state=0).fit_transform(z)
seconds = time.perf_counter() - t
acc = cross_val_score(KNeighborsClassifier(10), xy, labels, cv=5).mean()
rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
print(f"{seconds:.1f} {rss:.0f} {acc:.3f}")
"""


def features(stage: str, data_path) -> tuple[Path, Path]:
    from cifar_dash import artifacts
    from cifar_dash import data as data_mod
    from cifar_dash.inference import features_and_probs

    cache = artifacts.cache_root() / "features"
    cache.mkdir(parents=True, exist_ok=True)
    f, y = cache / f"{stage}.npy", cache / f"{stage}_labels.npy"
    if not f.exists():
        import numpy as np

        cifar = data_mod.load(data_path)
        model = artifacts.load_model(artifacts.stage_dir(stage) / artifacts.MODEL)
        np.save(y, cifar.y_test.reshape(-1))
        np.save(f, features_and_probs(model, cifar.x_test)[0])
    return f, y


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--stage", default="resnet50v2")
    ap.add_argument("--data")
    args = ap.parse_args()
    f, y = features(args.stage, args.data)
    print(f"{args.stage}: 10,000 test images' penultimate features; {os.cpu_count()} CPUs")
    print(f"{'method':14s} {'seconds':>8s} {'peak RSS MB':>12s} {'10-NN acc in 2-D':>17s}")
    for method in ("openTSNE", "sklearn TSNE", "umap-learn"):
        if method == "umap-learn":
            try:
                import umap  # noqa: F401
            except ImportError:
                print(f"{method:14s} not installed (pip install umap-learn)")
                continue
        out = subprocess.run([sys.executable, "-c", RUN, method, str(f), str(y)], capture_output=True, text=True)
        if out.returncode:
            print(f"{method:14s} failed: {out.stderr.strip().splitlines()[-1:]}")
            continue
        sec, rss, acc = out.stdout.split()
        print(f"{method:14s} {float(sec):8.1f} {float(rss):12.0f} {float(acc):17.3f}")


if __name__ == "__main__":
    main()
