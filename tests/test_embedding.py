"""embedding.py: the separation number against an independent computation, the map artifact and its checks."""

import io
import json
import shutil

import numpy as np
import pytest

from cifar_dash import artifacts, embedding


def _independent_loo_knn(f, y, k):
    """Leave-one-out kNN accuracy from a full cosine-distance matrix (no scikit-learn)."""
    u = f / np.linalg.norm(f, axis=1, keepdims=True)
    d = 1.0 - u @ u.T
    np.fill_diagonal(d, np.inf)
    right = 0
    for i in range(len(y)):
        near = np.argsort(d[i], kind="stable")[:k]
        counts = np.bincount(y[near], minlength=y.max() + 1)
        right += int(np.argmax(counts) == y[i])  # argmax: a tie goes to the lowest class
    return right / len(y)


def test_separation_matches_an_independent_leave_one_out_knn():
    rng = np.random.default_rng(3)
    y = rng.integers(0, 4, 90)
    centres = rng.normal(size=(4, 16))
    f = centres[y] + rng.normal(scale=1.2, size=(90, 16))  # overlapping classes: neither 0 nor 1
    expected = _independent_loo_knn(f, y, embedding.K)
    assert 0.3 < expected < 0.98
    assert embedding.separation(f, y) == pytest.approx(expected)
    assert embedding.separation(f, y, k=3) == pytest.approx(_independent_loo_knn(f, y, 3))


def test_separation_grows_as_the_classes_pull_apart():
    rng = np.random.default_rng(0)
    y = rng.integers(0, 5, 200)
    noise = rng.normal(size=(200, 8))
    centres = rng.normal(size=(5, 8))
    seps = [embedding.separation(s * centres[y] + noise, y) for s in (0.0, 1.0, 4.0)]
    assert seps[0] < 0.4 < seps[1] < seps[2] and seps[2] > 0.95


def test_compute_write_load_round_trip(tmp_path):
    rng = np.random.default_rng(1)
    y = rng.integers(0, 10, 120)
    f = rng.normal(size=(10, 64))[y] + rng.normal(scale=0.5, size=(120, 64))
    indices = np.arange(500, 620)
    emb, sep = embedding.compute(f.astype(np.float32), y, indices)
    assert emb.xy.shape == (120, 2) and emb.xy.dtype == np.float16
    assert sep["knn_accuracy"] == pytest.approx(embedding.separation(f, y))
    assert emb.meta["method"] == "openTSNE" and emb.meta["feature_dims"] == 64
    assert "PCA to 50" in emb.meta["preprocessing"]
    embedding.write(tmp_path, emb)
    back = embedding.load(tmp_path)
    assert np.array_equal(back.indices, indices) and np.array_equal(back.xy, emb.xy)
    assert back.meta["separation"]["k"] == embedding.K
    # the same points of one class sit nearer each other than points of other classes
    xy = back.xy.astype(float)
    same = np.mean([np.linalg.norm(xy[y == c] - xy[y == c].mean(0), axis=1).mean() for c in range(10)])
    assert same < np.linalg.norm(xy - xy.mean(0), axis=1).mean()


def test_a_missing_or_damaged_map_is_an_artifact_error(tmp_path):
    with pytest.raises(artifacts.ArtifactError, match="missing"):
        embedding.load(tmp_path)
    (tmp_path / artifacts.EMBEDDING).write_bytes(b"not a zip")
    with pytest.raises(artifacts.ArtifactError, match="corrupt"):
        embedding.load(tmp_path)
    with open(tmp_path / artifacts.EMBEDDING, "wb") as fh:
        np.savez(fh, xy=np.zeros((5, 3), np.float16), indices=np.arange(5), meta=np.array("{}"))
    with pytest.raises(artifacts.ArtifactError, match="inconsistent"):
        embedding.load(tmp_path)


def test_a_trained_run_carries_its_map_of_its_stored_test_predictions(trained_root):
    """Training computes the map right after evaluation; it covers the stored predictions' test images."""
    for key in ("mlp", "cnn"):
        folder = trained_root / key
        emb = embedding.load(folder)
        preds = artifacts.load_predictions(folder / artifacts.PREDICTIONS)
        assert np.array_equal(emb.indices, preds.indices)
        assert emb.xy.shape == (len(preds.indices), 2)
        metrics = json.loads((folder / artifacts.METRICS).read_text())
        assert metrics["separation"]["knn_accuracy"] == emb.meta["separation"]["knn_accuracy"]
        assert 0.0 <= metrics["separation"]["knn_accuracy"] <= 1.0


def test_embed_recomputes_a_stage_and_refuses_other_test_data(trained_root, cifar_npz, tmp_path):
    root = tmp_path / "ck"
    shutil.copytree(trained_root, root)
    (root / "mlp" / artifacts.EMBEDDING).unlink()
    out = io.StringIO()
    embedding.embed(["mlp"], data_path=cifar_npz, root=root, stream=out)
    assert "[1/1] mlp" in out.getvalue() and "kNN separation" in out.getvalue()
    assert embedding.load(root / "mlp").xy.shape[1] == 2
    from tests.conftest import make_cifar

    other = tmp_path / "other.npz"
    np.savez(other, **make_cifar(seed=5))
    from cifar_dash import data

    with pytest.raises(data.DataError, match="other test images"):
        embedding.embed(["mlp"], data_path=other, root=root, stream=io.StringIO())


def test_the_shipped_stages_have_maps_of_all_test_images():
    """Every published stage ships its map of the 10,000 test images and its separation figure."""
    from cifar_dash import stages

    seps = {}
    for s in stages.STAGES:
        folder = artifacts.stage_dir(s.key, artifacts.project_root() / "checkpoints")
        emb = embedding.load(folder)
        preds = artifacts.load_predictions(folder / artifacts.PREDICTIONS)
        assert emb.xy.shape == (10000, 2) and np.array_equal(emb.indices, preds.indices)
        seps[s.key] = json.loads((folder / artifacts.METRICS).read_text())["separation"]["knn_accuracy"]
    # the features of the ImageNet stages separate the classes far better than the MLP's
    assert seps["resnet50v2"] > seps["mlp"] + 0.3
