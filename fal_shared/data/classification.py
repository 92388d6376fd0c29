"""Image classification data sets as in-memory numpy arrays.

One entry point, :func:`load_classification`, reads a data set from the files a
user keeps under a *data root* (nothing is downloaded) and returns an
:class:`ArrayDataset`. The registry (:data:`CLASSIFICATION_DATASETS`) holds:

============== ======= ===================================================================
name           classes files (under ``data_root``)
============== ======= ===================================================================
digits         10      none: scikit-learn's embedded ``load_digits`` (1797 8x8 images)
mnist          10      the four IDX files (``.gz`` or not) in ``mnist/``, ``MNIST/raw/`` or
                       directly in the data root
fashion-mnist  10      the same four IDX file names in ``fashion-mnist/``,
                       ``FashionMNIST/raw/`` or directly in the data root
cifar10        10      ``cifar-10-batches-py/data_batch_1..5`` and ``test_batch``
cifar100       100     ``cifar-100-python/train`` and ``test`` (fine labels)
svhn           10      ``train_32x32.mat`` and ``test_32x32.mat`` in ``svhn/``, ``SVHN/`` or
                       directly in the data root
============== ======= ===================================================================

Storage
-------
Images are kept as **uint8** arrays of shape ``(N, C, H, W)`` (MNIST train: 47 MB
instead of 188 MB as float32). The value in ``[0, 1]`` of a pixel is
``x * scale`` (``scale`` is 1/255, or 1/16 for ``digits``); use
:meth:`ArrayDataset.images` to get float32 batches, optionally normalised with
the per-channel ``mean``/``std``. Arrays are read-only views, and loaded data
sets are cached per process (keyed by file path, size and modification time).

Why our own readers
-------------------
torchvision's ``MNIST``/``FashionMNIST``/``CIFAR10``/``CIFAR100``/``SVHN``
classes check the MD5 sums of the official files (and want to download them),
so they reject the small files in the original formats that the tests write;
they also do not read gzipped IDX files in place. The readers below parse the
original formats with numpy / pickle / scipy and validate them instead.

Long-tailed training sets
-------------------------
:func:`long_tail_indices` subsamples a training set to the exponential profile
of FairFAL / LoGo ``*_lt`` data sets (spec section 2.1); only the training split
is made long-tailed, the test split stays balanced::

    train = load_classification("fashion-mnist", "train", root)
    train_lt = train.subset(long_tail_indices(train.y, train.num_classes, 20, seed))
"""

from __future__ import annotations

import gzip
import math
import numbers
import os
import pickle
import struct
import threading
import zlib
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Literal, Sequence

import numpy as np

from ._common import make_rng, sklearn_bundled_csv

__all__ = [
    "ArrayDataset",
    "CLASSIFICATION_DATASETS",
    "DatasetSpec",
    "classification_dataset_names",
    "clear_cache",
    "expected_files",
    "load_classification",
    "long_tail_counts",
    "long_tail_indices",
]

Split = Literal["train", "test"]
_SPLITS = ("train", "test")


# --------------------------------------------------------------------------------------
# The data set container
# --------------------------------------------------------------------------------------
@dataclass(frozen=True, eq=False)
class ArrayDataset:
    """An image classification data set held in memory.

    Attributes
    ----------
    x : numpy.ndarray
        uint8 array of shape ``(N, C, H, W)`` (read-only). The pixel value in
        ``[0, 1]`` is ``x * scale``.
    y : numpy.ndarray
        int64 labels of shape ``(N,)`` in ``[0, num_classes)`` (read-only).
    num_classes : int
        Number of classes of the data set (not only those present in ``y``).
    name : str
        Registry name, e.g. ``"mnist"``.
    mean, std : tuple of float
        Per-channel normalisation constants in ``[0, 1]`` units (length ``C``):
        ``normalised = (x * scale - mean[c]) / std[c]``. They are fixed per data
        set (the same for every split and client), see :data:`CLASSIFICATION_DATASETS`.
    scale : float
        Factor from the uint8 codes to ``[0, 1]``: 1/255, or 1/16 for ``digits``.
    """

    x: np.ndarray
    y: np.ndarray
    num_classes: int
    name: str
    mean: tuple[float, ...]
    std: tuple[float, ...]
    scale: float = 1.0 / 255.0

    def __post_init__(self) -> None:
        x = np.asarray(self.x)
        y = np.asarray(self.y)
        if x.dtype != np.uint8 or x.ndim != 4:
            raise ValueError(
                f"ArrayDataset {self.name!r}: x must be a uint8 array of shape (N, C, H, W), "
                f"got dtype {x.dtype} and shape {x.shape}"
            )
        if y.ndim != 1 or y.shape[0] != x.shape[0] or not np.issubdtype(y.dtype, np.integer):
            raise ValueError(
                f"ArrayDataset {self.name!r}: y must be an integer array of shape ({x.shape[0]},), "
                f"got dtype {y.dtype} and shape {y.shape}"
            )
        if int(self.num_classes) < 1:
            raise ValueError(f"ArrayDataset {self.name!r}: num_classes must be >= 1")
        if y.size and (y.min() < 0 or y.max() >= self.num_classes):
            raise ValueError(
                f"ArrayDataset {self.name!r}: labels must lie in [0, {self.num_classes}), "
                f"got range [{y.min()}, {y.max()}]"
            )
        channels = x.shape[1]
        if len(self.mean) != channels or len(self.std) != channels:
            raise ValueError(
                f"ArrayDataset {self.name!r}: mean/std need {channels} value(s) (one per channel), "
                f"got {len(self.mean)} and {len(self.std)}"
            )
        if any(s <= 0 for s in self.std):
            raise ValueError(f"ArrayDataset {self.name!r}: std values must be > 0, got {self.std}")
        # Read-only views: the caller's arrays keep their own flags, and cached data
        # sets cannot be changed by accident.
        xv = x.view()
        xv.flags.writeable = False
        yv = y.astype(np.int64, copy=False).view()
        yv.flags.writeable = False
        object.__setattr__(self, "x", xv)
        object.__setattr__(self, "y", yv)
        object.__setattr__(self, "num_classes", int(self.num_classes))
        object.__setattr__(self, "mean", tuple(float(m) for m in self.mean))
        object.__setattr__(self, "std", tuple(float(s) for s in self.std))
        object.__setattr__(self, "scale", float(self.scale))

    def __len__(self) -> int:
        return int(self.x.shape[0])

    @property
    def image_shape(self) -> tuple[int, int, int]:
        """``(C, H, W)`` of one image."""
        return tuple(int(d) for d in self.x.shape[1:])  # type: ignore[return-value]

    def images(
        self, indices: np.ndarray | Sequence[int] | slice | None = None, *, normalize: bool = False
    ) -> np.ndarray:
        """Return images as a new float32 array of shape ``(n, C, H, W)``.

        Parameters
        ----------
        indices
            Which images (an index array, a slice, or ``None`` for all). Convert in
            batches for large sets: all of MNIST train as float32 is 188 MB.
        normalize
            ``False``: values in ``[0, 1]``. ``True``: ``(v - mean[c]) / std[c]``.
        """
        raw = self.x if indices is None else self.x[indices]
        out = raw.astype(np.float32) * np.float32(self.scale)
        if normalize:
            mean = np.asarray(self.mean, dtype=np.float32).reshape(1, -1, 1, 1)
            std = np.asarray(self.std, dtype=np.float32).reshape(1, -1, 1, 1)
            out -= mean
            out /= std
        return out

    def subset(self, indices: np.ndarray | Sequence[int]) -> "ArrayDataset":
        """Return a new data set with the given rows (copied), same metadata."""
        idx = np.asarray(indices, dtype=np.int64)
        return ArrayDataset(
            x=self.x[idx], y=self.y[idx], num_classes=self.num_classes, name=self.name,
            mean=self.mean, std=self.std, scale=self.scale,
        )

    def class_counts(self) -> np.ndarray:
        """Number of samples per class, int64 array of length ``num_classes``."""
        return np.bincount(self.y, minlength=self.num_classes).astype(np.int64)


# --------------------------------------------------------------------------------------
# Registry
# --------------------------------------------------------------------------------------
@dataclass(frozen=True)
class DatasetSpec:
    """Description of one registered classification data set.

    Attributes
    ----------
    name, num_classes, image_shape
        Registry name, number of classes and ``(C, H, W)``.
    mean, std
        Per-channel normalisation constants (``[0, 1]`` units).
    subdirs
        Folders under the data root searched in order (``""`` = the data root).
    files
        ``{"train": (...), "test": (...)}``: the file names a split needs.
    gz_allowed
        Whether each file may also be present as ``<name>.gz`` (IDX only).
    description
        One line for listings and error messages.
    """

    name: str
    num_classes: int
    image_shape: tuple[int, int, int]
    mean: tuple[float, ...]
    std: tuple[float, ...]
    subdirs: tuple[str, ...] = ()
    files: dict[str, tuple[str, ...]] = field(default_factory=dict)
    gz_allowed: bool = False
    description: str = ""
    needs_data_root: bool = True
    scale: float = 1.0 / 255.0


_IDX_FILES = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}

# Normalisation constants: LoGo main.py:get_dataset (MNIST, SVHN, CIFAR-10 = ImageNet
# constants, also used by FairFAL's *_lt sets; CIFAR-100). For Fashion-MNIST we take the
# data statistics used by FairFAL's FMNIST-LT (0.286, 0.353); LoGo uses 0.5/0.5 there.
CLASSIFICATION_DATASETS: dict[str, DatasetSpec] = {
    "digits": DatasetSpec(
        name="digits", num_classes=10, image_shape=(1, 8, 8),
        mean=(), std=(),  # computed from the training split, see _digits_mean_std
        description="scikit-learn load_digits (embedded), fixed stratified 75/25 split",
        needs_data_root=False, scale=1.0 / 16.0,
    ),
    "mnist": DatasetSpec(
        name="mnist", num_classes=10, image_shape=(1, 28, 28),
        mean=(0.1307,), std=(0.3081,),
        subdirs=("mnist", os.path.join("MNIST", "raw"), ""),
        files=_IDX_FILES, gz_allowed=True, description="MNIST, the four original IDX files",
    ),
    "fashion-mnist": DatasetSpec(
        name="fashion-mnist", num_classes=10, image_shape=(1, 28, 28),
        mean=(0.286,), std=(0.353,),
        subdirs=("fashion-mnist", os.path.join("FashionMNIST", "raw"), ""),
        files=_IDX_FILES, gz_allowed=True, description="Fashion-MNIST, the four original IDX files",
    ),
    "cifar10": DatasetSpec(
        name="cifar10", num_classes=10, image_shape=(3, 32, 32),
        mean=(0.485, 0.456, 0.406), std=(0.229, 0.224, 0.225),
        subdirs=("cifar-10-batches-py", ""),
        files={"train": tuple(f"data_batch_{i}" for i in range(1, 6)), "test": ("test_batch",)},
        description="CIFAR-10, python version (pickled batches)",
    ),
    "cifar100": DatasetSpec(
        name="cifar100", num_classes=100, image_shape=(3, 32, 32),
        mean=(0.507, 0.487, 0.441), std=(0.267, 0.256, 0.276),
        subdirs=("cifar-100-python", ""),
        files={"train": ("train",), "test": ("test",)},
        description="CIFAR-100, python version (pickles, fine labels)",
    ),
    "svhn": DatasetSpec(
        name="svhn", num_classes=10, image_shape=(3, 32, 32),
        mean=(0.4376821, 0.4437697, 0.47280442), std=(0.19803012, 0.20101562, 0.19703614),
        subdirs=("svhn", "SVHN", ""),
        files={"train": ("train_32x32.mat",), "test": ("test_32x32.mat",)},
        description="SVHN cropped digits, format 2 (.mat, label 10 = digit 0)",
    ),
}


def classification_dataset_names() -> tuple[str, ...]:
    """Names accepted by :func:`load_classification`."""
    return tuple(CLASSIFICATION_DATASETS)


def _get_spec(name: str) -> DatasetSpec:
    if not isinstance(name, str) or name not in CLASSIFICATION_DATASETS:
        raise ValueError(
            f"unknown classification dataset {name!r}; valid names: "
            f"{', '.join(CLASSIFICATION_DATASETS)}"
        )
    return CLASSIFICATION_DATASETS[name]


def _check_split(split: str) -> str:
    if split not in _SPLITS:
        raise ValueError(f"split must be one of {', '.join(_SPLITS)}; got {split!r}")
    return split


def expected_files(name: str, split: str) -> tuple[str, ...]:
    """File names that ``split`` of data set ``name`` needs (empty for ``digits``).

    For ``mnist``/``fashion-mnist`` each file may also be gzipped (``<name>.gz``).
    """
    spec = _get_spec(name)
    return spec.files.get(_check_split(split), ())


# --------------------------------------------------------------------------------------
# Locating files
# --------------------------------------------------------------------------------------
def _locate(spec: DatasetSpec, root: Path, split: str) -> list[Path]:
    """Find the files of ``split`` in the first folder of ``spec.subdirs`` that has them all."""
    names = spec.files[split]
    searched: list[str] = []
    partial: list[str] = []
    for sub in spec.subdirs:
        folder = root / sub if sub else root
        searched.append(str(folder))
        found: list[Path] = []
        missing: list[str] = []
        for base in names:
            candidates = [folder / base] + ([folder / (base + ".gz")] if spec.gz_allowed else [])
            hit = next((c for c in candidates if c.is_file()), None)
            if hit is None:
                missing.append(base)
            else:
                found.append(hit)
        if not missing:
            return found
        if found:
            partial.append(f"{folder} has {len(found)} of them but lacks {', '.join(missing)}")
    gz = " (each may also be gzipped as <name>.gz)" if spec.gz_allowed else ""
    msg = (
        f"dataset {spec.name!r} ({split} split): files not found under data root {str(root)!r}. "
        f"Expected file(s): {', '.join(names)}{gz}, all in one of: {'; '.join(searched)}."
    )
    if partial:
        msg += " Incomplete: " + "; ".join(partial) + "."
    raise FileNotFoundError(msg)


def _resolve_root(spec: DatasetSpec, data_root: str | os.PathLike[str] | None) -> Path:
    if data_root is None or str(data_root) == "":
        raise ValueError(
            f"dataset {spec.name!r} is read from files: set the data root (data_root / "
            f"config key data-root) to the folder that holds them; expected train files: "
            f"{', '.join(spec.files['train'])}; test files: {', '.join(spec.files['test'])}"
        )
    root = Path(data_root).expanduser()
    if not root.is_dir():
        raise FileNotFoundError(
            f"dataset {spec.name!r}: data root {str(root)!r} is not a directory; it should hold "
            f"{', '.join(spec.files['train'] + spec.files['test'])} (in one of the sub-folders "
            f"{', '.join(repr(s) for s in spec.subdirs)})"
        )
    return root


# --------------------------------------------------------------------------------------
# Readers of the original formats
# --------------------------------------------------------------------------------------
def _read_bytes(path: Path) -> bytes:
    """Read a file, gunzipping it when it starts with the gzip magic bytes."""
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise ValueError(f"{path}: cannot read file ({exc})") from exc
    if raw[:2] == b"\x1f\x8b":
        try:
            return gzip.decompress(raw)
        except (OSError, EOFError, zlib.error) as exc:
            raise ValueError(f"{path}: corrupt or truncated gzip data ({exc})") from exc
    return raw


def _read_idx_ubyte(path: Path, ndim: int) -> np.ndarray:
    """Parse an IDX file of unsigned bytes with ``ndim`` dimensions (magic 0x0000080N).

    Layout: 2 zero bytes, type code 0x08 (unsigned byte), number of dimensions,
    then one big-endian uint32 per dimension, then the data. The data size must
    be exactly the product of the dimensions.
    """
    data = _read_bytes(path)
    want_magic = 0x0800 + ndim
    if len(data) < 4:
        raise ValueError(f"{path}: truncated IDX file ({len(data)} bytes, no complete header)")
    magic = int.from_bytes(data[:4], "big")
    if magic != want_magic:
        raise ValueError(
            f"{path}: bad IDX magic number 0x{magic:08x}; expected 0x{want_magic:08x} "
            f"(unsigned bytes, {ndim} dimension(s))"
        )
    header = 4 + 4 * ndim
    if len(data) < header:
        raise ValueError(f"{path}: truncated IDX header ({len(data)} of {header} bytes)")
    dims = struct.unpack(">" + "I" * ndim, data[4:header])
    want = math.prod(dims)
    have = len(data) - header
    if have != want:
        what = "truncated" if have < want else "has trailing bytes"
        raise ValueError(
            f"{path}: IDX file {what}: header dims {dims} need {want} data bytes, file has {have}"
        )
    return np.frombuffer(data, dtype=np.uint8, offset=header).reshape(dims)


def _parse_idx(spec: DatasetSpec, files: list[Path], split: str) -> tuple[np.ndarray, np.ndarray]:
    img_path, lab_path = files
    images = _read_idx_ubyte(img_path, 3)
    labels = _read_idx_ubyte(lab_path, 1)
    _, h, w = spec.image_shape
    if images.shape[1:] != (h, w):
        raise ValueError(
            f"{img_path}: {spec.name} images must be {h}x{w}, the file holds "
            f"{images.shape[1]}x{images.shape[2]}"
        )
    if labels.shape[0] != images.shape[0]:
        raise ValueError(
            f"{lab_path}: {labels.shape[0]} labels but {img_path.name} holds "
            f"{images.shape[0]} images"
        )
    if labels.size and labels.max() >= spec.num_classes:
        raise ValueError(
            f"{lab_path}: label {int(labels.max())} out of range [0, {spec.num_classes})"
        )
    return images.reshape(-1, 1, h, w), labels.astype(np.int64)


class _ArrayOnlyUnpickler(pickle.Unpickler):
    """Unpickler that only rebuilds numpy arrays (what the CIFAR pickles hold).

    The CIFAR files are pickles; refusing every other global keeps a tampered file
    from running code on load.
    """

    _ALLOWED = {
        ("numpy.core.multiarray", "_reconstruct"),
        ("numpy._core.multiarray", "_reconstruct"),
        ("numpy.core.multiarray", "scalar"),
        ("numpy._core.multiarray", "scalar"),
        ("numpy", "ndarray"),
        ("numpy", "dtype"),
        ("_codecs", "encode"),
    }

    def find_class(self, module: str, name: str):  # noqa: D102
        if (module, name) not in self._ALLOWED:
            raise pickle.UnpicklingError(f"global {module}.{name} is not allowed in a data file")
        if module == "numpy.core.multiarray":  # pickles written by numpy 1.x
            module = "numpy._core.multiarray" if hasattr(np, "_core") else module
        return super().find_class(module, name)


def _load_pickle_dict(path: Path) -> dict:
    try:
        with open(path, "rb") as fh:
            # latin1: the official files are Python 2 pickles (as torchvision reads them).
            obj = _ArrayOnlyUnpickler(fh, encoding="latin1").load()
    except Exception as exc:  # any failure means an unreadable file
        raise ValueError(f"{path}: unreadable pickle ({type(exc).__name__}: {exc})") from exc
    if not isinstance(obj, dict):
        raise ValueError(f"{path}: expected a pickled dict, got {type(obj).__name__}")
    # Keys are str in the official (Python 2) files, bytes in files pickled by Python 3.
    return {(k.decode("latin1") if isinstance(k, bytes) else k): v for k, v in obj.items()}


def _parse_cifar(spec: DatasetSpec, files: list[Path], split: str) -> tuple[np.ndarray, np.ndarray]:
    label_key = "fine_labels" if spec.name == "cifar100" else "labels"
    c, h, w = spec.image_shape
    xs, ys = [], []
    for path in files:
        d = _load_pickle_dict(path)
        for key in ("data", label_key):
            if key not in d:
                raise ValueError(
                    f"{path}: missing key {key!r} (found {', '.join(map(str, d)) or 'none'})"
                )
        data = d["data"]
        if not isinstance(data, np.ndarray) or data.dtype != np.uint8 or data.ndim != 2 \
                or data.shape[1] != c * h * w:
            shape = getattr(data, "shape", None)
            dtype = getattr(data, "dtype", type(data).__name__)
            raise ValueError(
                f"{path}: 'data' must be a uint8 array of shape (n, {c * h * w}), "
                f"got {dtype} with shape {shape}"
            )
        try:
            labels = np.asarray(d[label_key], dtype=np.int64).reshape(-1)
        except (TypeError, ValueError) as exc:
            raise ValueError(f"{path}: {label_key!r} is not a list of integers ({exc})") from exc
        if labels.shape[0] != data.shape[0]:
            raise ValueError(
                f"{path}: {labels.shape[0]} entries in {label_key!r} but {data.shape[0]} images"
            )
        if labels.size and (labels.min() < 0 or labels.max() >= spec.num_classes):
            raise ValueError(
                f"{path}: {label_key!r} values must lie in [0, {spec.num_classes}), "
                f"got [{labels.min()}, {labels.max()}]"
            )
        xs.append(data.reshape(-1, c, h, w))
        ys.append(labels)
    return np.ascontiguousarray(np.concatenate(xs)), np.concatenate(ys)


def _parse_svhn(spec: DatasetSpec, files: list[Path], split: str) -> tuple[np.ndarray, np.ndarray]:
    from scipy.io import loadmat  # local import: scipy is only needed for SVHN

    (path,) = files
    try:
        mat = loadmat(str(path))
    except Exception as exc:  # scipy raises several types for bad / v7.3 files
        raise ValueError(f"{path}: unreadable MATLAB file ({type(exc).__name__}: {exc})") from exc
    for key in ("X", "y"):
        if key not in mat:
            raise ValueError(f"{path}: missing variable {key!r}")
    X, y = mat["X"], mat["y"]
    c, h, w = spec.image_shape
    if X.dtype != np.uint8 or X.ndim != 4 or X.shape[:3] != (h, w, c):
        raise ValueError(
            f"{path}: 'X' must be a uint8 array of shape ({h}, {w}, {c}, N), "
            f"got {X.dtype} with shape {X.shape}"
        )
    y = np.asarray(y).reshape(-1)
    if y.shape[0] != X.shape[3]:
        raise ValueError(f"{path}: {y.shape[0]} labels in 'y' but {X.shape[3]} images in 'X'")
    if y.size and (not np.all(np.isfinite(y.astype(np.float64))) or np.any(y != np.round(y))):
        raise ValueError(f"{path}: 'y' must hold integer labels")
    y = y.astype(np.int64)
    if y.size and (y.min() < 0 or y.max() > 10):
        raise ValueError(f"{path}: labels must lie in 1..10 (10 = digit 0), got [{y.min()}, {y.max()}]")
    y[y == 10] = 0  # SVHN stores digit 0 as label 10
    # (H, W, C, N) -> (N, C, H, W), as torchvision's SVHN does.
    x = np.ascontiguousarray(np.transpose(X, (3, 2, 0, 1)))
    return x, y


_DIGITS_TEST_FRACTION = 0.25
_DIGITS_SPLIT_SEED = 0  # fixed: digits has no official split; independent of the run seed


def _digits_arrays(split: str) -> tuple[np.ndarray, np.ndarray]:
    """sklearn digits with a fixed stratified 75/25 split (per class round(0.25 n_c) to test)."""
    data = sklearn_bundled_csv("digits.csv.gz")  # what load_digits reads, without importing scikit-learn
    x = np.rint(data[:, :-1]).astype(np.uint8).reshape(-1, 1, 8, 8)  # values 0..16
    y = data[:, -1].astype(np.int64)
    rng = make_rng(_DIGITS_SPLIT_SEED, "digits/split")
    test_parts = []
    for c in np.unique(y):
        idx = rng.permutation(np.flatnonzero(y == c))
        n_test = int(math.floor(_DIGITS_TEST_FRACTION * idx.size + 0.5))
        test_parts.append(idx[:n_test])
    test = np.sort(np.concatenate(test_parts))
    mask = np.zeros(y.size, dtype=bool)
    mask[test] = True
    keep = mask if split == "test" else ~mask
    return x[keep], y[keep]


def _digits_mean_std() -> tuple[tuple[float], tuple[float]]:
    x, _ = _cached(("digits", "train"), lambda: _digits_arrays("train"))
    v = x.astype(np.float64) / 16.0
    return (float(v.mean()),), (float(v.std()),)


_PARSERS: dict[str, Callable[[DatasetSpec, list[Path], str], tuple[np.ndarray, np.ndarray]]] = {
    "mnist": _parse_idx,
    "fashion-mnist": _parse_idx,
    "cifar10": _parse_cifar,
    "cifar100": _parse_cifar,
    "svhn": _parse_svhn,
}


# --------------------------------------------------------------------------------------
# Cache
# --------------------------------------------------------------------------------------
_CACHE_SIZE = 4
_cache: "OrderedDict[tuple, tuple[np.ndarray, np.ndarray]]" = OrderedDict()
_cache_lock = threading.Lock()


def _cached(key: tuple, make: Callable[[], tuple[np.ndarray, np.ndarray]]):
    with _cache_lock:
        if key in _cache:
            _cache.move_to_end(key)
            return _cache[key]
    x, y = make()
    x = x.view()
    x.flags.writeable = False
    y = y.view()
    y.flags.writeable = False
    with _cache_lock:
        _cache[key] = (x, y)
        while len(_cache) > _CACHE_SIZE:
            _cache.popitem(last=False)
    return x, y


def clear_cache() -> None:
    """Forget the data sets cached by :func:`load_classification` in this process."""
    with _cache_lock:
        _cache.clear()


# --------------------------------------------------------------------------------------
# Public loader
# --------------------------------------------------------------------------------------
def load_classification(
    name: str,
    split: Split,
    data_root: str | os.PathLike[str] | None = None,
    *,
    cache: bool = True,
) -> ArrayDataset:
    """Load one split of a registered classification data set.

    Parameters
    ----------
    name
        One of :func:`classification_dataset_names`: ``digits``, ``mnist``,
        ``fashion-mnist``, ``cifar10``, ``cifar100``, ``svhn``.
    split
        ``"train"`` or ``"test"``.
    data_root
        Folder holding the original files (see the module docstring for the
        accepted layouts). Not used by ``digits``; required by the others.
    cache
        Reuse arrays already loaded in this process (keyed by the files' paths,
        sizes and modification times). The arrays are read-only either way.

    Returns
    -------
    ArrayDataset
        uint8 images ``(N, C, H, W)`` and int64 labels; complete or not at all.

    Raises
    ------
    ValueError
        Unknown ``name`` or ``split`` (the message lists the valid values), a
        missing data root, or a corrupt file (bad IDX magic number, wrong size,
        unreadable pickle / .mat, labels out of range); the message names the file.
    FileNotFoundError
        A required file is missing; the message names the data set, the data
        root, the folders searched and the exact file names expected.
    """
    spec = _get_spec(name)
    split = _check_split(split)
    if name == "digits":
        key = ("digits", split)
        x, y = _cached(key, lambda: _digits_arrays(split)) if cache else _digits_arrays(split)
        mean, std = _digits_mean_std()
    else:
        root = _resolve_root(spec, data_root)
        files = _locate(spec, root, split)
        parser = _PARSERS[name]

        def make() -> tuple[np.ndarray, np.ndarray]:
            return parser(spec, files, split)

        if cache:
            stats = tuple((str(p.resolve()), p.stat().st_size, p.stat().st_mtime_ns) for p in files)
            x, y = _cached((name, split, stats), make)
        else:
            x, y = make()
        mean, std = spec.mean, spec.std
    return ArrayDataset(
        x=x, y=y, num_classes=spec.num_classes, name=name, mean=mean, std=std, scale=spec.scale
    )


# --------------------------------------------------------------------------------------
# Long-tailed training sets
# --------------------------------------------------------------------------------------
def long_tail_counts(num_samples: int, num_classes: int, imbalance_factor: float) -> list[int]:
    """Target sample count per class of the exponential long-tail profile.

    ``n_c = floor(n_max * (1 / IF) ** (c / (C - 1)))`` with ``n_max = N / C``,
    computed in Python floats exactly as FairFAL/LoGo ``get_img_num_per_cls``
    (``imb_ratio = 1 / IF``; FairFAL's ``--imb_ratio 0.05`` is ``IF = 20``).
    With 6000 per class (Fashion-MNIST) and IF 20 the counts sum to 20,428; with
    5000 (CIFAR-10) 17,023; CIFAR-100 (500 x 100) 15,907.

    Parameters
    ----------
    num_samples
        ``N``, the size of the full (balanced) training set.
    num_classes
        ``C``.
    imbalance_factor
        ``IF = n_0 / n_{C-1} >= 1`` (1 = no imbalance).
    """
    C = _check_num_classes(num_classes)
    factor = _check_imbalance_factor(imbalance_factor)
    if isinstance(num_samples, bool) or not isinstance(num_samples, numbers.Integral) \
            or num_samples < 0:
        raise ValueError(f"num_samples must be a non-negative integer, got {num_samples!r}")
    n_max = num_samples / C
    ratio = 1.0 / factor
    if C == 1:
        return [int(n_max)]
    return [int(n_max * (ratio ** (c / (C - 1.0)))) for c in range(C)]


def long_tail_indices(
    y: np.ndarray | Sequence[int], num_classes: int, imbalance_factor: float, seed: int
) -> np.ndarray:
    """Indices of a long-tailed subsample of a training set.

    Class ``c`` keeps ``min(n_c, count_c)`` samples, ``n_c`` from
    :func:`long_tail_counts` with ``N = len(y)`` (so a class with fewer samples
    than ``n_c`` keeps all of them). The samples kept are a uniform random
    subset drawn with a Generator seeded from ``seed`` (stream ``"long-tail"``).

    Parameters
    ----------
    y
        Integer labels in ``[0, num_classes)``, shape ``(N,)``.
    num_classes
        ``C``; class ``c`` gets the ``c``-th count (class 0 is the head).
    imbalance_factor
        ``IF >= 1``; 20 for FairFAL's ``--imb_ratio 0.05``.
    seed
        Run seed (non-negative integer).

    Returns
    -------
    numpy.ndarray
        Sorted int64 indices into ``y``.
    """
    y = _check_labels(y, "y")
    C = _check_num_classes(num_classes)
    if y.size and (y.min() < 0 or y.max() >= C):
        raise ValueError(f"labels must lie in [0, {C}) (num_classes={C}), got [{y.min()}, {y.max()}]")
    counts = long_tail_counts(int(y.size), C, imbalance_factor)
    rng = make_rng(seed, "long-tail")
    keep = []
    for c in range(C):
        idx = np.flatnonzero(y == c)
        keep.append(rng.permutation(idx)[: counts[c]])
    return np.sort(np.concatenate(keep)).astype(np.int64)


def _check_labels(y: object, setting: str) -> np.ndarray:
    arr = np.asarray(y)
    if arr.ndim != 1 or not (np.issubdtype(arr.dtype, np.integer) or arr.size == 0):
        raise ValueError(f"{setting} must be a 1-D integer label array, got dtype {arr.dtype} "
                         f"and shape {arr.shape}")
    return arr.astype(np.int64, copy=False)


def _check_num_classes(num_classes: object) -> int:
    if isinstance(num_classes, bool) or not isinstance(num_classes, numbers.Integral) \
            or num_classes < 1:
        raise ValueError(f"num_classes must be an integer >= 1, got {num_classes!r}")
    return int(num_classes)


def _check_imbalance_factor(imbalance_factor: object) -> float:
    try:
        factor = float(imbalance_factor)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        factor = float("nan")
    if not math.isfinite(factor) or factor < 1.0:
        raise ValueError(
            f"imbalance_factor must be a finite number >= 1 (n_max / n_min; FairFAL's "
            f"imb_ratio 0.05 is imbalance_factor 20), got {imbalance_factor!r}"
        )
    return factor
