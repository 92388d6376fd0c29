"""Data layer shared by the server and client apps (no Flower imports).

* :mod:`.classification`: image data sets as uint8 arrays (:func:`load_classification`),
  long-tailed training subsets (:func:`long_tail_indices`).
* :mod:`.partition`: client partitions (:func:`partition_indices`: ``iid``,
  ``dirichlet``, ``dirichlet-balanced``) and initial labeled sets.
* :mod:`.regression`: FALE regression sets (:func:`load_regression`), their
  test/client split (:func:`regression_split`) and standardisation.

Importing this package loads only numpy; scikit-learn and scipy are imported when
a data set that needs them is loaded.
"""

from .classification import (
    CLASSIFICATION_DATASETS,
    ArrayDataset,
    classification_dataset_names,
    clear_cache,
    expected_files,
    load_classification,
    long_tail_counts,
    long_tail_indices,
)
from .partition import (
    PARTITION_SCHEMES,
    dirichlet_balanced_counts,
    initial_labeled,
    logo_per_client_count,
    partition_indices,
)
from .regression import (
    REGRESSION_DATASETS,
    RegressionDataset,
    Standardizer,
    constant_columns,
    load_regression,
    moment_sums,
    quantile_bins,
    regression_dataset_names,
    regression_split,
    standardize,
)

__all__ = [
    "ArrayDataset",
    "CLASSIFICATION_DATASETS",
    "PARTITION_SCHEMES",
    "REGRESSION_DATASETS",
    "RegressionDataset",
    "Standardizer",
    "classification_dataset_names",
    "clear_cache",
    "constant_columns",
    "dirichlet_balanced_counts",
    "expected_files",
    "initial_labeled",
    "load_classification",
    "load_regression",
    "logo_per_client_count",
    "long_tail_counts",
    "long_tail_indices",
    "moment_sums",
    "partition_indices",
    "quantile_bins",
    "regression_dataset_names",
    "regression_split",
    "standardize",
]
