"""Tests of fal_shared.data.classification: readers, registry, long-tail subsampling.

CIFAR-10/100 and SVHN cannot be downloaded here: the tests write tiny files in
the original formats. Real MNIST / Fashion-MNIST are read from the shared data
folder (``../shared/datasets`` from the repository root) when it exists.
"""

from __future__ import annotations

import gzip
import os
import pickle
import struct
from pathlib import Path

import numpy as np
import pytest

from fal_shared.data import classification as C
from fal_shared.data.classification import (
    ArrayDataset,
    classification_dataset_names,
    load_classification,
    long_tail_counts,
    long_tail_indices,
)

SHARED_DATASETS = Path(__file__).resolve().parents[2] / "shared" / "datasets"
IDX_NAMES = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}


@pytest.fixture(autouse=True)
def _fresh_cache():
    C.clear_cache()
    yield
    C.clear_cache()


# --------------------------------------------------------------------------------------
# helpers writing the original formats
# --------------------------------------------------------------------------------------
def idx_bytes(arr: np.ndarray) -> bytes:
    arr = np.ascontiguousarray(arr, dtype=np.uint8)
    header = struct.pack(">I", 0x0800 + arr.ndim) + struct.pack(">" + "I" * arr.ndim, *arr.shape)
    return header + arr.tobytes()


def write_idx_set(folder: Path, split: str, images: np.ndarray, labels: np.ndarray, gz: bool) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for name, arr in zip(IDX_NAMES[split], (images, labels)):
        data = idx_bytes(arr)
        if gz:
            (folder / (name + ".gz")).write_bytes(gzip.compress(data))
        else:
            (folder / name).write_bytes(data)


def make_images(n: int, h: int = 28, w: int = 28, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    return rng.integers(0, 256, size=(n, h, w), dtype=np.uint8), rng.integers(0, 10, size=n).astype(np.uint8)


def write_cifar_batch(path: Path, data: np.ndarray, labels: list[int], label_key: bytes = b"labels",
                      str_keys: bool = False) -> None:
    d = {b"batch_label": b"testing batch", b"data": data, label_key: labels, b"filenames": [b"x.png"] * len(labels)}
    if label_key == b"fine_labels":
        d[b"coarse_labels"] = [int(v) // 5 for v in labels]
    if str_keys:
        d = {k.decode(): v for k, v in d.items()}
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "wb") as fh:
        pickle.dump(d, fh, protocol=2)


# --------------------------------------------------------------------------------------
# registry and argument errors
# --------------------------------------------------------------------------------------
def test_registry_names() -> None:
    assert classification_dataset_names() == ("digits", "mnist", "fashion-mnist", "cifar10", "cifar100", "svhn")


def test_unknown_name_lists_valid_names(tmp_path: Path) -> None:
    with pytest.raises(ValueError) as exc:
        load_classification("imagenet", "train", tmp_path)
    msg = str(exc.value)
    assert "'imagenet'" in msg
    for name in classification_dataset_names():
        assert name in msg


def test_bad_split_and_missing_root(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="split must be one of train, test; got 'val'"):
        load_classification("mnist", "val", tmp_path)
    with pytest.raises(ValueError, match="set the data root"):
        load_classification("mnist", "train", None)
    with pytest.raises(FileNotFoundError, match="is not a directory"):
        load_classification("cifar10", "train", tmp_path / "nope")


# --------------------------------------------------------------------------------------
# IDX (MNIST / Fashion-MNIST)
# --------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "name,layout,gz",
    [
        ("mnist", "mnist", True),
        ("mnist", "MNIST/raw", False),
        ("mnist", "", True),
        ("fashion-mnist", "fashion-mnist", False),
        ("fashion-mnist", "FashionMNIST/raw", True),
        ("fashion-mnist", "", False),
    ],
)
def test_idx_layouts(tmp_path: Path, name: str, layout: str, gz: bool) -> None:
    imgs, labs = make_images(7, seed=1)
    timgs, tlabs = make_images(3, seed=2)
    folder = tmp_path / layout if layout else tmp_path
    write_idx_set(folder, "train", imgs, labs, gz)
    write_idx_set(folder, "test", timgs, tlabs, gz)
    tr = load_classification(name, "train", tmp_path)
    te = load_classification(name, "test", str(tmp_path))
    assert isinstance(tr, ArrayDataset)
    assert tr.name == name and tr.num_classes == 10 and tr.image_shape == (1, 28, 28)
    assert tr.x.dtype == np.uint8 and tr.x.shape == (7, 1, 28, 28)
    assert np.array_equal(tr.x[:, 0], imgs) and np.array_equal(tr.y, labs.astype(np.int64))
    assert tr.y.dtype == np.int64
    assert np.array_equal(te.x[:, 0], timgs) and np.array_equal(te.y, tlabs)


def test_idx_prefers_named_subfolder(tmp_path: Path) -> None:
    a, la = make_images(4, seed=1)
    b, lb = make_images(5, seed=2)
    write_idx_set(tmp_path / "mnist", "test", a, la, gz=True)
    write_idx_set(tmp_path / "fashion-mnist", "test", b, lb, gz=True)
    assert len(load_classification("mnist", "test", tmp_path)) == 4
    assert len(load_classification("fashion-mnist", "test", tmp_path)) == 5


def test_idx_missing_files_message(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError) as exc:
        load_classification("mnist", "train", tmp_path)
    msg = str(exc.value)
    assert "'mnist'" in msg and str(tmp_path) in msg
    assert "train-images-idx3-ubyte" in msg and "train-labels-idx1-ubyte" in msg
    assert ".gz" in msg and "MNIST" in msg
    # only the images present: the message says which file is missing where
    imgs, _ = make_images(3)
    (tmp_path / "mnist").mkdir()
    (tmp_path / "mnist" / "t10k-images-idx3-ubyte.gz").write_bytes(gzip.compress(idx_bytes(imgs)))
    with pytest.raises(FileNotFoundError, match=r"lacks t10k-labels-idx1-ubyte"):
        load_classification("mnist", "test", tmp_path)


def _write_pair(tmp_path: Path, img_bytes: bytes, lab_bytes: bytes) -> Path:
    folder = tmp_path / "mnist"
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "t10k-images-idx3-ubyte").write_bytes(img_bytes)
    (folder / "t10k-labels-idx1-ubyte").write_bytes(lab_bytes)
    return folder


def test_idx_bad_magic(tmp_path: Path) -> None:
    imgs, labs = make_images(3)
    bad = bytearray(idx_bytes(imgs))
    bad[2] = 0x09  # signed byte type code
    _write_pair(tmp_path, bytes(bad), idx_bytes(labs))
    with pytest.raises(ValueError, match=r"t10k-images-idx3-ubyte: bad IDX magic number 0x00000903; expected 0x00000803"):
        load_classification("mnist", "test", tmp_path)
    # labels file where an images file should be
    _write_pair(tmp_path, idx_bytes(labs), idx_bytes(labs))
    with pytest.raises(ValueError, match="bad IDX magic number 0x00000801"):
        load_classification("mnist", "test", tmp_path)


def test_idx_truncated_and_trailing(tmp_path: Path) -> None:
    imgs, labs = make_images(3)
    data = idx_bytes(imgs)
    _write_pair(tmp_path, data[:-10], idx_bytes(labs))
    with pytest.raises(ValueError, match=r"IDX file truncated: header dims \(3, 28, 28\) need 2352 data bytes, file has 2342"):
        load_classification("mnist", "test", tmp_path)
    _write_pair(tmp_path, data + b"\x00", idx_bytes(labs))
    with pytest.raises(ValueError, match="trailing bytes"):
        load_classification("mnist", "test", tmp_path)
    _write_pair(tmp_path, data[:6], idx_bytes(labs))
    with pytest.raises(ValueError, match="truncated IDX header"):
        load_classification("mnist", "test", tmp_path)


def test_idx_truncated_gzip(tmp_path: Path) -> None:
    imgs, labs = make_images(3)
    folder = tmp_path / "mnist"
    folder.mkdir()
    (folder / "t10k-images-idx3-ubyte.gz").write_bytes(gzip.compress(idx_bytes(imgs))[:-20])
    (folder / "t10k-labels-idx1-ubyte.gz").write_bytes(gzip.compress(idx_bytes(labs)))
    with pytest.raises(ValueError, match=r"t10k-images-idx3-ubyte\.gz: corrupt or truncated gzip data"):
        load_classification("mnist", "test", tmp_path)


def test_idx_inconsistent_sizes(tmp_path: Path) -> None:
    imgs, labs = make_images(3)
    _write_pair(tmp_path, idx_bytes(imgs), idx_bytes(labs[:2]))
    with pytest.raises(ValueError, match="2 labels but t10k-images-idx3-ubyte holds 3 images"):
        load_classification("mnist", "test", tmp_path)
    small = np.zeros((3, 8, 8), dtype=np.uint8)
    _write_pair(tmp_path, idx_bytes(small), idx_bytes(labs))
    with pytest.raises(ValueError, match="images must be 28x28"):
        load_classification("mnist", "test", tmp_path)
    _write_pair(tmp_path, idx_bytes(imgs), idx_bytes(np.array([0, 1, 12], dtype=np.uint8)))
    with pytest.raises(ValueError, match=r"label 12 out of range \[0, 10\)"):
        load_classification("mnist", "test", tmp_path)


def test_cache_sees_file_changes(tmp_path: Path) -> None:
    imgs, labs = make_images(3, seed=1)
    write_idx_set(tmp_path, "test", imgs, labs, gz=False)
    a = load_classification("mnist", "test", tmp_path)
    assert load_classification("mnist", "test", tmp_path).x is not None
    imgs2, labs2 = make_images(5, seed=2)
    write_idx_set(tmp_path, "test", imgs2, labs2, gz=False)
    os.utime(tmp_path / "t10k-images-idx3-ubyte", ns=(1, 1))
    b = load_classification("mnist", "test", tmp_path)
    assert len(a) == 3 and len(b) == 5


# --------------------------------------------------------------------------------------
# CIFAR-10 / CIFAR-100 pickles
# --------------------------------------------------------------------------------------
@pytest.mark.parametrize("str_keys", [False, True])
def test_cifar10(tmp_path: Path, str_keys: bool) -> None:
    rng = np.random.default_rng(0)
    base = tmp_path / "cifar-10-batches-py"
    batches = []
    for i in range(1, 6):
        data = rng.integers(0, 256, size=(3, 3072), dtype=np.uint8)
        labels = [int(v) for v in rng.integers(0, 10, size=3)]
        write_cifar_batch(base / f"data_batch_{i}", data, labels, str_keys=str_keys)
        batches.append((data, labels))
    tdata = rng.integers(0, 256, size=(2, 3072), dtype=np.uint8)
    write_cifar_batch(base / "test_batch", tdata, [9, 0], str_keys=str_keys)
    tr = load_classification("cifar10", "train", tmp_path)
    assert tr.x.shape == (15, 3, 32, 32) and tr.y.tolist() == sum((b[1] for b in batches), [])
    # row layout: 1024 red, 1024 green, 1024 blue values, each row-major 32x32
    d0 = batches[0][0][1]
    assert np.array_equal(tr.x[1, 0], d0[:1024].reshape(32, 32))
    assert np.array_equal(tr.x[1, 2], d0[2048:].reshape(32, 32))
    assert np.array_equal(tr.x[14].reshape(-1), batches[4][0][2])
    te = load_classification("cifar10", "test", tmp_path)
    assert te.y.tolist() == [9, 0] and te.mean == (0.485, 0.456, 0.406)


def test_cifar10_missing_batch_message(tmp_path: Path) -> None:
    base = tmp_path / "cifar-10-batches-py"
    for i in (1, 2, 3):
        write_cifar_batch(base / f"data_batch_{i}", np.zeros((1, 3072), np.uint8), [0])
    with pytest.raises(FileNotFoundError) as exc:
        load_classification("cifar10", "train", tmp_path)
    msg = str(exc.value)
    assert "'cifar10'" in msg and str(tmp_path) in msg
    for i in range(1, 6):
        assert f"data_batch_{i}" in msg
    assert "lacks data_batch_4, data_batch_5" in msg


def test_cifar_corrupt_pickles(tmp_path: Path) -> None:
    base = tmp_path / "cifar-10-batches-py"
    base.mkdir()
    (base / "test_batch").write_bytes(b"this is not a pickle")
    with pytest.raises(ValueError, match=r"test_batch: unreadable pickle"):
        load_classification("cifar10", "test", tmp_path)
    good = pickle.dumps({b"data": np.zeros((2, 3072), np.uint8), b"labels": [1, 2]}, protocol=2)
    (base / "test_batch").write_bytes(good[: len(good) // 2])
    with pytest.raises(ValueError, match=r"test_batch: unreadable pickle"):
        load_classification("cifar10", "test", tmp_path)
    write_cifar_batch(base / "test_batch", np.zeros((2, 100), np.uint8), [1, 2])
    with pytest.raises(ValueError, match=r"'data' must be a uint8 array of shape \(n, 3072\)"):
        load_classification("cifar10", "test", tmp_path)
    write_cifar_batch(base / "test_batch", np.zeros((2, 3072), np.uint8), [1])
    with pytest.raises(ValueError, match="1 entries in 'labels' but 2 images"):
        load_classification("cifar10", "test", tmp_path)
    with open(base / "test_batch", "wb") as fh:
        pickle.dump({b"data": np.zeros((1, 3072), np.uint8)}, fh)
    with pytest.raises(ValueError, match="missing key 'labels'"):
        load_classification("cifar10", "test", tmp_path)


class _Evil:
    def __reduce__(self):
        return (os.system, ("echo should-not-run",))


def test_cifar_pickle_with_code_is_refused(tmp_path: Path) -> None:
    base = tmp_path / "cifar-10-batches-py"
    base.mkdir()
    with open(base / "test_batch", "wb") as fh:
        pickle.dump({b"data": _Evil(), b"labels": [0]}, fh)
    with pytest.raises(ValueError, match=r"unreadable pickle .*not allowed"):
        load_classification("cifar10", "test", tmp_path)


def test_cifar100(tmp_path: Path) -> None:
    rng = np.random.default_rng(1)
    base = tmp_path / "cifar-100-python"
    data = rng.integers(0, 256, size=(4, 3072), dtype=np.uint8)
    write_cifar_batch(base / "train", data, [0, 99, 50, 7], label_key=b"fine_labels")
    write_cifar_batch(base / "test", data[:2], [3, 98], label_key=b"fine_labels")
    tr = load_classification("cifar100", "train", tmp_path)
    assert tr.num_classes == 100 and tr.y.tolist() == [0, 99, 50, 7]
    assert np.array_equal(tr.x.reshape(4, -1), data)
    assert load_classification("cifar100", "test", tmp_path).y.tolist() == [3, 98]
    # a CIFAR-10 style file (no fine_labels) is rejected with the key named
    write_cifar_batch(base / "test", data[:2], [3, 4])
    with pytest.raises(ValueError, match="missing key 'fine_labels'"):
        load_classification("cifar100", "test", tmp_path)
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match=r"Expected file\(s\): train, all in one of: .*cifar-100-python"):
        load_classification("cifar100", "train", tmp_path / "empty")


# --------------------------------------------------------------------------------------
# SVHN .mat
# --------------------------------------------------------------------------------------
def test_svhn(tmp_path: Path) -> None:
    from scipy.io import savemat

    rng = np.random.default_rng(2)
    X = rng.integers(0, 256, size=(32, 32, 3, 5), dtype=np.uint8)
    y = np.array([[10], [1], [9], [10], [5]], dtype=np.uint8)
    savemat(tmp_path / "train_32x32.mat", {"X": X, "y": y})
    (tmp_path / "SVHN").mkdir()
    savemat(tmp_path / "SVHN" / "test_32x32.mat", {"X": X[..., :2], "y": y[:2]})
    tr = load_classification("svhn", "train", tmp_path)
    assert tr.x.shape == (5, 3, 32, 32) and tr.x.flags.c_contiguous
    assert tr.y.tolist() == [0, 1, 9, 0, 5]
    for n in range(5):
        assert np.array_equal(tr.x[n], np.transpose(X[..., n], (2, 0, 1)))
    assert load_classification("svhn", "test", tmp_path).y.tolist() == [0, 1]


def test_svhn_errors(tmp_path: Path) -> None:
    from scipy.io import savemat

    with pytest.raises(FileNotFoundError, match=r"'svhn' \(test split\).*test_32x32\.mat"):
        load_classification("svhn", "test", tmp_path)
    (tmp_path / "test_32x32.mat").write_bytes(b"MATLAB 5.0 MAT-file, truncated")
    with pytest.raises(ValueError, match=r"test_32x32\.mat: unreadable MATLAB file"):
        load_classification("svhn", "test", tmp_path)
    savemat(tmp_path / "test_32x32.mat", {"X": np.zeros((28, 28, 3, 2), np.uint8), "y": np.ones((2, 1))})
    with pytest.raises(ValueError, match=r"'X' must be a uint8 array of shape \(32, 32, 3, N\)"):
        load_classification("svhn", "test", tmp_path)
    savemat(tmp_path / "test_32x32.mat", {"X": np.zeros((32, 32, 3, 2), np.uint8), "y": np.ones((3, 1))})
    with pytest.raises(ValueError, match="3 labels in 'y' but 2 images"):
        load_classification("svhn", "test", tmp_path)
    savemat(tmp_path / "test_32x32.mat", {"X": np.zeros((32, 32, 3, 2), np.uint8), "y": np.array([[1], [11]])})
    with pytest.raises(ValueError, match=r"labels must lie in 1\.\.10"):
        load_classification("svhn", "test", tmp_path)


# --------------------------------------------------------------------------------------
# digits and the ArrayDataset container
# --------------------------------------------------------------------------------------
def test_digits_split() -> None:
    tr = load_classification("digits", "train")
    te = load_classification("digits", "test", "/ignored")
    assert len(tr) + len(te) == 1797 and tr.image_shape == (1, 8, 8)
    assert len(te) == 451
    # stratified: every class has round(25%) of its samples in the test split
    total = tr.class_counts() + te.class_counts()
    assert np.array_equal(te.class_counts(), np.floor(total * 0.25 + 0.5).astype(int))
    assert tr.x.max() == 16 and tr.scale == 1 / 16
    imgs = tr.images()
    assert imgs.dtype == np.float32 and imgs.min() == 0.0 and imgs.max() == 1.0
    # fixed split: a second load (no cache) gives the same arrays
    again = load_classification("digits", "test", cache=False)
    assert np.array_equal(again.x, te.x) and np.array_equal(again.y, te.y)
    # mean/std are the training statistics, shared by both splits
    assert te.mean == tr.mean and abs(tr.mean[0] - float(tr.images().mean())) < 1e-6


def test_digits_are_scikit_learns_load_digits_read_without_importing_it() -> None:
    import subprocess
    import sys

    from sklearn.datasets import load_digits

    from fal_shared.data._common import sklearn_bundled_csv

    bunch = load_digits()
    data = sklearn_bundled_csv("digits.csv.gz")
    assert np.array_equal(data[:, :-1], bunch.data) and np.array_equal(data[:, -1].astype(int), bunch.target)
    code = ("import sys; from fal_shared.data.classification import load_classification; "
            "load_classification('digits', 'train', cache=False); print('sklearn' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "False", "loading digits imported scikit-learn (2 s of CPU per ClientApp process)"


def test_array_dataset_container() -> None:
    x = np.arange(2 * 3 * 2 * 2, dtype=np.uint8).reshape(2, 3, 2, 2) * 10
    ds = ArrayDataset(x=x, y=np.array([1, 0]), num_classes=3, name="toy",
                      mean=(0.1, 0.2, 0.3), std=(0.5, 0.5, 0.5))
    assert x.flags.writeable  # caller's array untouched
    with pytest.raises(ValueError):
        ds.x[0, 0, 0, 0] = 1
    with pytest.raises(AttributeError):
        ds.name = "other"  # type: ignore[misc]
    v = ds.images([1])
    assert v.shape == (1, 3, 2, 2) and np.allclose(v, x[[1]] / 255.0)
    n = ds.images(normalize=True)
    assert np.allclose(n[:, 2], (x[:, 2] / 255.0 - 0.3) / 0.5, atol=1e-6)
    sub = ds.subset([1])
    assert sub.y.tolist() == [0] and sub.mean == ds.mean
    assert ds.class_counts().tolist() == [1, 1, 0]
    with pytest.raises(ValueError, match=r"labels must lie in \[0, 3\)"):
        ArrayDataset(x=x, y=np.array([0, 3]), num_classes=3, name="t", mean=(0,) * 3, std=(1,) * 3)
    with pytest.raises(ValueError, match="uint8"):
        ArrayDataset(x=x.astype(np.float32), y=np.array([0, 1]), num_classes=3, name="t",
                     mean=(0,) * 3, std=(1,) * 3)


# --------------------------------------------------------------------------------------
# long tail
# --------------------------------------------------------------------------------------
def test_long_tail_counts_spec_numbers() -> None:
    # spec 2.1: FMNIST-LT 20,428, CIFAR-10-LT 17,023, CIFAR-100-LT 15,907 (imb_ratio 0.05)
    assert sum(long_tail_counts(60000, 10, 20)) == 20428
    assert sum(long_tail_counts(50000, 10, 20)) == 17023
    assert sum(long_tail_counts(50000, 100, 20)) == 15907
    counts = long_tail_counts(50000, 10, 20)
    assert counts[0] == 5000 and counts[-1] == 250
    assert counts == [int(5000 * 0.05 ** (c / 9)) for c in range(10)]
    assert long_tail_counts(100, 4, 1) == [25, 25, 25, 25]
    assert long_tail_counts(10, 1, 5) == [10]


def test_long_tail_indices_follow_profile() -> None:
    rng = np.random.default_rng(0)
    y = rng.permutation(np.repeat(np.arange(10), 600))
    idx = long_tail_indices(y, 10, 20, seed=1)
    assert np.all(np.diff(idx) > 0)
    assert np.bincount(y[idx], minlength=10).tolist() == long_tail_counts(6000, 10, 20)
    assert np.array_equal(idx, long_tail_indices(y, 10, 20, seed=1))
    assert not np.array_equal(idx, long_tail_indices(y, 10, 20, seed=2))


def test_long_tail_small_class_keeps_all() -> None:
    y = np.concatenate([np.full(100, c) for c in range(4)] + [np.full(5, 4)])  # N = 405
    target = long_tail_counts(405, 5, 10)  # n_max = 81 ... 8
    idx = long_tail_indices(y, 5, 10, seed=0)
    got = np.bincount(y[idx], minlength=5).tolist()
    assert got[:4] == target[:4] and target[4] > 5 and got[4] == 5


def test_long_tail_errors() -> None:
    y = np.repeat(np.arange(3), 10)
    with pytest.raises(ValueError, match=r"imbalance_factor must be a finite number >= 1 .*imb_ratio 0.05"):
        long_tail_indices(y, 3, 0.05, seed=0)
    with pytest.raises(ValueError, match=r"labels must lie in \[0, 2\)"):
        long_tail_indices(y, 2, 10, seed=0)
    with pytest.raises(ValueError, match="num_classes must be an integer >= 1"):
        long_tail_indices(y, 0, 10, seed=0)


# --------------------------------------------------------------------------------------
# real data (shared folder)
# --------------------------------------------------------------------------------------
MNIST_TRAIN_COUNTS = [5923, 6742, 5958, 6131, 5842, 5421, 5918, 6265, 5851, 5949]


@pytest.mark.skipif(not (SHARED_DATASETS / "mnist").is_dir(), reason="shared MNIST copy not present")
def test_real_mnist() -> None:
    tr = load_classification("mnist", "train", SHARED_DATASETS)
    te = load_classification("mnist", "test", SHARED_DATASETS)
    assert tr.x.shape == (60000, 1, 28, 28) and te.x.shape == (10000, 1, 28, 28)
    assert tr.class_counts().tolist() == MNIST_TRAIN_COUNTS
    assert tr.x.nbytes == 60000 * 784  # uint8 storage
    v = tr.images(slice(0, 5000))
    assert abs(float(v.mean()) - 0.1307) < 0.01


@pytest.mark.skipif(not (SHARED_DATASETS / "fashion-mnist").is_dir(),
                    reason="shared Fashion-MNIST copy not present")
def test_real_fashion_mnist_and_long_tail() -> None:
    tr = load_classification("fashion-mnist", "train", SHARED_DATASETS)
    te = load_classification("fashion-mnist", "test", SHARED_DATASETS / "fashion-mnist")
    assert tr.class_counts().tolist() == [6000] * 10 and te.class_counts().tolist() == [1000] * 10
    lt = tr.subset(long_tail_indices(tr.y, tr.num_classes, 20, seed=1))
    assert len(lt) == 20428
