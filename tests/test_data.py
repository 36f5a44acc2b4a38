import pickle
import tarfile

import numpy as np
import pytest

from cifar_dash import data
from tests.conftest import make_cifar


def _write_batches(folder, arrays):
    folder.mkdir()
    xs = np.array_split(arrays["x_train"], 5)
    ys = np.array_split(arrays["y_train"], 5)
    for i in range(5):
        flat = xs[i].transpose(0, 3, 1, 2).reshape(len(xs[i]), -1)
        with open(folder / f"data_batch_{i + 1}", "wb") as fh:
            pickle.dump({b"data": flat, b"labels": ys[i].tolist()}, fh)
    flat = arrays["x_test"].transpose(0, 3, 1, 2).reshape(len(arrays["x_test"]), -1)
    with open(folder / "test_batch", "wb") as fh:
        pickle.dump({b"data": flat, b"labels": arrays["y_test"].tolist()}, fh)


def test_npz_batches_and_targz_agree(tmp_path):
    arrays = make_cifar(100, 50)
    np.savez(tmp_path / "c.npz", **arrays)
    folder = tmp_path / "cifar-10-batches-py"
    _write_batches(folder, arrays)
    with tarfile.open(tmp_path / "cifar-10-python.tar.gz", "w:gz") as tar:
        tar.add(folder, arcname="cifar-10-batches-py")
    loaded = [
        data.load_path(tmp_path / "c.npz"),
        data.load_path(folder),
        data.load_path(tmp_path / "cifar-10-python.tar.gz"),
    ]
    for d in loaded:
        np.testing.assert_array_equal(d.x_train, arrays["x_train"])
        np.testing.assert_array_equal(d.y_test, arrays["y_test"])
    assert len({d.fingerprint() for d in loaded}) == 1


def test_env_var_is_used(tmp_path, monkeypatch):
    np.savez(tmp_path / "c.npz", **make_cifar(20, 10))
    monkeypatch.setenv("CIFAR10_PATH", str(tmp_path / "c.npz"))
    assert data.load().x_train.shape == (20, 32, 32, 3)


@pytest.mark.parametrize(
    "change, message",
    [
        (lambda a: a.update(x_train=a["x_train"][:, :16]), "shape"),
        (lambda a: a.update(x_train=a["x_train"].astype(np.float32)), "dtype"),
        (lambda a: a.update(y_train=a["y_train"] + 10), "labels outside"),
        (lambda a: a.update(y_test=a["y_test"][:5]), "labels for"),
        (lambda a: a.pop("x_test"), "missing arrays"),
    ],
)
def test_invalid_files_name_the_file(tmp_path, change, message):
    arrays = make_cifar(20, 10)
    change(arrays)
    path = tmp_path / "bad.npz"
    np.savez(path, **arrays)
    with pytest.raises(data.DataError, match=message) as e:
        data.load_path(path)
    assert "bad.npz" in str(e.value)


def test_missing_and_corrupt_files(tmp_path):
    with pytest.raises(data.DataError, match="no such file"):
        data.load_path(tmp_path / "nope.npz")
    (tmp_path / "junk.npz").write_bytes(b"not a zip")
    with pytest.raises(data.DataError, match="junk.npz"):
        data.load_path(tmp_path / "junk.npz")


def test_fingerprint_changes_with_one_pixel():
    a = make_cifar(20, 10)
    f1 = data.fingerprint(a["x_train"])
    a["x_train"][0, 0, 0, 0] ^= 1
    assert data.fingerprint(a["x_train"]) != f1


def test_split_holds_out_validation_and_limit():
    d = data._validate(*make_cifar(100, 50).values(), where="x")
    (xt, yt), (xv, yv), (xs, ys) = data.split(d, None, 10)
    assert len(xt) == 90 and len(xv) == 10 and len(xs) == 50
    np.testing.assert_array_equal(xv, d.x_train[90:])
    (xt, _), (xv, _), (xs, _) = data.split(d, 40, 5000)
    assert len(xt) + len(xv) == 40 and len(xv) == 4 and len(xs) == 40
    (xt, yt), (xv, yv), _ = data.split(d, None, 0)  # a recipe that holds nothing out trains on every image
    assert len(xt) == 100 and len(xv) == 0 and len(yv) == 0 and xv.shape[1:] == (32, 32, 3)
    assert data.CLASS_NAMES[3] == "cat" and len(data.CLASS_NAMES) == 10
