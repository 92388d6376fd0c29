"""Tests of fal_shared.data.regression: loaders, FALE split, standardisation."""

from __future__ import annotations

import gzip
from pathlib import Path

import numpy as np
import pytest

from fal_shared.data.regression import (
    Standardizer,
    constant_columns,
    load_regression,
    moment_sums,
    quantile_bins,
    regression_dataset_names,
    regression_split,
    standardize,
)

SHARED_DATASETS = Path(__file__).resolve().parents[2] / "shared" / "datasets"


def test_diabetes() -> None:
    X, y, name = load_regression("diabetes")
    assert X.shape == (442, 10) and y.shape == (442,) and name == "diabetes"
    assert X.dtype == np.float64 and y.dtype == np.float64
    from sklearn.datasets import load_diabetes  # read without importing scikit-learn: the same numbers

    bunch = load_diabetes(scaled=False)
    assert np.array_equal(X, bunch.data) and np.array_equal(y, bunch.target)


@pytest.mark.skipif(not (SHARED_DATASETS / "uci" / "protein.csv.gz").is_file(),
                    reason="shared UCI copy not present")
def test_real_protein_shape() -> None:
    ds = load_regression("protein", SHARED_DATASETS)
    assert ds.X.shape == (45730, 9) and ds.y.shape == (45730,)
    assert np.isfinite(ds.X).all()
    # also found with the uci folder itself as the data root
    assert load_regression("protein", SHARED_DATASETS / "uci").X.shape == (45730, 9)


@pytest.mark.skipif(not (SHARED_DATASETS / "uci" / "keggundirected.csv.gz").is_file(),
                    reason="shared UCI copy not present")
def test_real_kegg_shape() -> None:
    ds = load_regression("kegg-undirected", SHARED_DATASETS)
    # the shared copy drops duplicate rows (paper: 64608 rows); 27 features + target
    assert ds.X.shape == (63608, 27) and ds.y.shape == (63608,)
    # column 9 is constant (all zeros): X is not column-full-rank as FALE assumes
    assert constant_columns(ds.X).tolist() == [9]


def _write(path: Path, text: str, gz: bool = False) -> Path:
    data = text.encode()
    path.write_bytes(gzip.compress(data) if gz else data)
    return path


def test_csv_path_target_column_header_gz(tmp_path: Path) -> None:
    rows = "1,2,3\n4,5,6\n\n7,8,9.5\n"
    p = _write(tmp_path / "plain.csv", rows)
    X, y, name = load_regression(f"csv:{p}")
    assert name == f"csv:{p}"
    assert X.tolist() == [[1, 2], [4, 5], [7, 8]] and y.tolist() == [3, 6, 9.5]
    X, y, _ = load_regression(f"csv:{p}:0")
    assert X.tolist() == [[2, 3], [5, 6], [8, 9.5]] and y.tolist() == [1, 4, 7]
    X, y, _ = load_regression(f"csv:{p}:-2")
    assert y.tolist() == [2, 5, 8]
    h = _write(tmp_path / "header.csv.gz", "a,b,target\n" + rows, gz=True)
    X, y, _ = load_regression(f"csv:{h}")
    assert X.shape == (3, 2) and y.tolist() == [3, 6, 9.5]
    # relative path: relative to the data root
    X, _, _ = load_regression("csv:plain.csv", tmp_path)
    assert X.shape == (3, 2)


def test_csv_errors(tmp_path: Path) -> None:
    p = _write(tmp_path / "bad.csv", "1,2,3\n4,x,6\n")
    with pytest.raises(ValueError, match=r"bad\.csv: line 2, column 2: 'x' is not a number"):
        load_regression(f"csv:{p}")
    p = _write(tmp_path / "ragged.csv", "1,2,3\n4,5,6\n7,8\n")
    with pytest.raises(ValueError, match=r"ragged\.csv: line 3 has 2 columns, expected 3"):
        load_regression(f"csv:{p}")
    p = _write(tmp_path / "nan.csv", "h1,h2\n1,2\n\n3,nan\n")
    with pytest.raises(ValueError, match=r"nan\.csv: line 4, column 2: value .* is not finite"):
        load_regression(f"csv:{p}")
    p = _write(tmp_path / "one.csv", "1\n2\n")
    with pytest.raises(ValueError, match="at least 2 columns"):
        load_regression(f"csv:{p}")
    p = _write(tmp_path / "ok.csv", "1,2\n3,4\n")
    with pytest.raises(ValueError, match=r"target column index must lie in \[-2, 1\]"):
        load_regression(f"csv:{p}:5")
    (tmp_path / "trunc.csv.gz").write_bytes(gzip.compress(b"1,2\n3,4\n" * 100)[:-8])
    with pytest.raises(ValueError, match=r"trunc\.csv\.gz: corrupt or truncated gzip"):
        load_regression(f"csv:{tmp_path / 'trunc.csv.gz'}")
    with pytest.raises(FileNotFoundError, match=r"file '.*missing\.csv' not found"):
        load_regression(f"csv:{tmp_path / 'missing.csv'}")


def test_unknown_and_missing(tmp_path: Path) -> None:
    with pytest.raises(ValueError) as exc:
        load_regression("boston", tmp_path)
    for n in regression_dataset_names():
        assert n in str(exc.value)
    assert "csv:<path>" in str(exc.value)
    with pytest.raises(FileNotFoundError) as exc:
        load_regression("kegg-undirected", tmp_path)
    msg = str(exc.value)
    for p in (tmp_path / "keggundirected.csv.gz", tmp_path / "keggundirected.csv",
              tmp_path / "uci" / "keggundirected.csv.gz", tmp_path / "uci" / "keggundirected.csv"):
        assert str(p) in msg
    with pytest.raises(ValueError, match="set the data root"):
        load_regression("protein", None)


def test_uci_layout_generated(tmp_path: Path) -> None:
    (tmp_path / "uci").mkdir()
    rng = np.random.default_rng(0)
    data = rng.normal(size=(20, 10))
    text = "\n".join(",".join(f"{v:.6g}" for v in row) for row in data)
    _write(tmp_path / "uci" / "protein.csv", text)
    X, y, name = load_regression("protein", tmp_path)
    assert X.shape == (20, 9) and name == "protein"
    assert np.allclose(y, data[:, -1], atol=1e-5)


# --------------------------------------------------------------------------------------
# split
# --------------------------------------------------------------------------------------
def test_quantile_bins() -> None:
    y = np.random.default_rng(0).normal(size=103)
    b = quantile_bins(y, 10)
    assert sorted(np.bincount(b).tolist()) == [10] * 7 + [11] * 3
    # bins are ordered by value
    maxes = [y[b == i].max() for i in range(10)]
    mins = [y[b == i].min() for i in range(10)]
    assert all(maxes[i] < mins[i + 1] for i in range(9))
    # heavy ties still give equal-frequency bins
    assert np.bincount(quantile_bins(np.zeros(20), 4)).tolist() == [5, 5, 5, 5]


def _split_data(n: int = 2000, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(n, 3))
    return X, X @ np.array([1.0, -2.0, 0.5]) + rng.normal(size=n)


def test_regression_split_sizes_and_cover() -> None:
    X, y = _split_data()
    test, clients = regression_split(X, y, 10, seed=1)
    assert test.size == 400 and len(clients) == 10
    allidx = np.concatenate([test] + clients)
    assert np.array_equal(np.sort(allidx), np.arange(2000))
    assert min(c.size for c in clients) >= 10
    assert len({c.size for c in clients}) > 1  # non-IID: sizes differ
    t2, c2 = regression_split(X, y, 4, test_fraction=0.25, seed=1, scheme="iid")
    assert t2.size == 500 and [c.size for c in c2] == [375] * 4


def test_regression_split_deterministic() -> None:
    X, y = _split_data()
    a_test, a = regression_split(X, y, 10, seed=3)
    b_test, b = regression_split(X, y, 10, seed=3)
    c_test, c = regression_split(X, y, 10, seed=4)
    assert np.array_equal(a_test, b_test) and all(np.array_equal(p, q) for p, q in zip(a, b))
    assert not np.array_equal(a_test, c_test)


def test_regression_split_skew_follows_alpha() -> None:
    X, y = _split_data(4000)

    def mean_max_bin_share(alpha: float) -> float:
        test, clients = regression_split(X, y, 10, alpha=alpha, seed=0)
        pool = np.setdiff1d(np.arange(y.size), test)
        bins = np.empty(y.size, dtype=np.int64)
        bins[pool] = quantile_bins(y[pool], 10)
        return float(np.mean([np.bincount(bins[c], minlength=10).max() / c.size for c in clients]))

    assert mean_max_bin_share(0.1) > 0.4 > 0.2 > mean_max_bin_share(1000.0)
    s5 = mean_max_bin_share(5.0)  # the paper's setting: mild skew
    assert 0.12 < s5 < 0.4


def test_regression_split_errors() -> None:
    X, y = _split_data(100)
    with pytest.raises(ValueError, match=r"test_fraction must lie in \[0, 1\)"):
        regression_split(X, y, 4, test_fraction=1.0, seed=0)
    with pytest.raises(ValueError, match="X has 99 rows but y has 100"):
        regression_split(X[:99], y, 4, seed=0)
    with pytest.raises(ValueError, match="alpha .* must be a finite number > 0"):
        regression_split(X, y, 4, alpha=0, seed=0)
    with pytest.raises(ValueError, match=r"num_partitions must be an integer in \[1, 80\]"):
        regression_split(X, y, 81, seed=0)
    with pytest.raises(ValueError, match="scheme must be one of dirichlet, iid"):
        regression_split(X, y, 4, seed=0, scheme="dirichlet-balanced")


# --------------------------------------------------------------------------------------
# standardisation
# --------------------------------------------------------------------------------------
def test_standardize() -> None:
    rng = np.random.default_rng(0)
    tr = rng.normal(3.0, 2.0, size=(50, 3))
    tr[:, 2] = 7.0  # constant column
    te = rng.normal(size=(10, 3))
    a, b, st = standardize(tr, te)
    assert np.allclose(a[:, :2].mean(axis=0), 0) and np.allclose(a[:, :2].std(axis=0), 1)
    assert np.all(a[:, 2] == 0) and st.scale[2] == 1.0
    assert constant_columns(tr).tolist() == [2]
    assert np.allclose(b, (te - tr.mean(axis=0)) / np.where(tr.std(axis=0) > 0, tr.std(axis=0), 1))
    assert np.allclose(st.inverse_transform(a), tr)
    # 1-D target
    y = rng.normal(5, 3, size=40)
    ys, none, sty = standardize(y)
    assert none is None and abs(ys.mean()) < 1e-12 and abs(ys.std() - 1) < 1e-12
    # pooled sums of the clients give the same statistics
    parts = [tr[:20], tr[20:35], tr[35:]]
    sums = [moment_sums(p) for p in parts]
    pooled = Standardizer.from_sums(sum(s[0] for s in sums), sum(s[1] for s in sums),
                                    sum(s[2] for s in sums))
    assert np.allclose(pooled.mean, st.mean) and np.allclose(pooled.scale, st.scale)
