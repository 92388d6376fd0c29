"""The inputs of the selection-parity fixtures (``tests/fixtures/parity``), for the tests and the harness.

``inputs.npz`` holds one client of a Fashion-MNIST federation, as indices into
the Fashion-MNIST **training** set (no pixels), and two small trained models:

* ``global``: the aggregated model; ``local``: the client's model after its
  local training (also served as the ``local-only`` model, see the fixture
  README), both the project's ``resnet8`` with fp16-stored weights that are
  loaded as float32 on both sides (the rounding happened once, when the
  fixture was written, so both sides run the very same network);
* ``pool_ids`` (in the order both sides iterate them), ``labeled_ids``,
  ``labeled_y``, ``budget``; ``missing_classes``: classes dropped from the
  labeled set in the "missing" variant (a client that never labeled them);
* ``histograms``: the labeled-class histograms of the other clients of the
  federation (the server statistics of AHFAL are computed from them and ours).

Everything here is the project's own code; the authors' code runs only in
``benchmarks/parity/make_fixtures.py``.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from fal_shared.config import RunConfig
from fal_shared.data.classification import ArrayDataset, load_classification
from fal_shared.models import build_model
from fal_shared.training import Prediction, predict, to_tensor
from query.base import PoolContext
from query.models import ModelBank

FIXTURES = Path(__file__).resolve().parent / "fixtures" / "parity"
DATASET = "fashion-mnist"
MODEL = "resnet8"
NUM_CLASSES = 10
INPUT_SHAPE = (1, 28, 28)
SCORE_BATCH = 512  # the run config's default score-batch-size
_DEFAULTS = RunConfig().to_flower()


@dataclass(frozen=True)
class ParityInputs:
    pool_ids: np.ndarray
    labeled_ids: np.ndarray
    labeled_y: np.ndarray
    budget: int
    missing_classes: np.ndarray
    histograms: np.ndarray  # (other clients, C)
    weights: dict[str, dict[str, np.ndarray]]  # kind -> state dict (fp16 floats)

    def labeled(self, variant: str = "full") -> tuple[np.ndarray, np.ndarray]:
        """(ids, labels) of the labeled set; ``missing`` drops ``missing_classes``."""
        if variant == "full":
            return self.labeled_ids, self.labeled_y
        if variant == "missing":
            keep = ~np.isin(self.labeled_y, self.missing_classes)
            return self.labeled_ids[keep], self.labeled_y[keep]
        raise ValueError(f"labeled-set variant {variant!r}: expected 'full' or 'missing'")

    def client_histogram(self, variant: str = "full") -> np.ndarray:
        return np.bincount(self.labeled(variant)[1], minlength=NUM_CLASSES).astype(np.int64)


def save_inputs(path: Path, inputs: ParityInputs) -> None:
    arrays: dict[str, Any] = {
        "pool_ids": inputs.pool_ids.astype(np.uint16),  # Fashion-MNIST has 60,000 training images < 2**16
        "labeled_ids": inputs.labeled_ids.astype(np.uint16),
        "labeled_y": inputs.labeled_y.astype(np.uint8),
        "budget": np.int64(inputs.budget),
        "missing_classes": inputs.missing_classes.astype(np.int64),
        "histograms": inputs.histograms.astype(np.int64),
    }
    for kind, state in inputs.weights.items():
        for name, value in state.items():
            arrays[f"weights/{kind}/{name}"] = value
    np.savez_compressed(path, **arrays)


def load_inputs(path: Path = FIXTURES / "inputs.npz") -> ParityInputs:
    with np.load(path) as z:
        weights: dict[str, dict[str, np.ndarray]] = {}
        for key in z.files:
            if key.startswith("weights/"):
                _, kind, name = key.split("/", 2)
                weights.setdefault(kind, {})[name] = z[key]
        return ParityInputs(
            pool_ids=z["pool_ids"].astype(np.int64), labeled_ids=z["labeled_ids"].astype(np.int64),
            labeled_y=z["labeled_y"].astype(np.int64), budget=int(z["budget"]),
            missing_classes=z["missing_classes"], histograms=z["histograms"], weights=weights,
        )


def fp16_state(model: nn.Module) -> dict[str, np.ndarray]:
    """A state dict with every floating tensor rounded to fp16 (integers, e.g. BN counters, kept)."""
    return {
        k: v.detach().cpu().numpy().astype(np.float16) if v.dtype.is_floating_point else v.detach().cpu().numpy()
        for k, v in model.state_dict().items()
    }


def build(state: dict[str, np.ndarray] | None = None, seed: int = 0) -> nn.Module:
    """The fixture's network (the project's resnet8 for 28x28 grey images), in eval mode, fp32."""
    model = build_model(MODEL, input_shape=INPUT_SHAPE, num_outputs=NUM_CLASSES, seed=seed)
    if state is not None:
        model.load_state_dict({k: torch.as_tensor(np.asarray(v, dtype=np.float32 if v.dtype == np.float16 else v.dtype))
                               for k, v in state.items()})
    return model.eval()


@cache
def _train_set(root: str) -> ArrayDataset:
    return load_classification(DATASET, "train", root)


def train_set(shared_datasets: Path) -> ArrayDataset:
    """Fashion-MNIST train from ``../shared/datasets`` (uint8 codes + labels)."""
    return _train_set(str(Path(shared_datasets) / DATASET))


def normalize_of(ds: ArrayDataset) -> tuple[float, tuple[float, ...], tuple[float, ...]]:
    return (ds.scale, ds.mean, ds.std)


def input_tensor(ds: ArrayDataset, ids: np.ndarray) -> torch.Tensor:
    """float32 inputs of ``ids`` exactly as a client's ``predict`` normalises them (the harness feeds these)."""
    return to_tensor(ds.x[np.asarray(ids)], torch.device("cpu"), normalize_of(ds))


def predict_fn(ds: ArrayDataset):
    def run(model: nn.Module, x: np.ndarray) -> Prediction:
        return predict(model, x, batch_size=SCORE_BATCH, device=torch.device("cpu"), normalize=normalize_of(ds))

    return run


_BANKS: dict[tuple, ModelBank] = {}


def model_bank(inputs: ParityInputs, ds: ArrayDataset, pool_ids: np.ndarray, labeled_ids: np.ndarray) -> ModelBank:
    """The real ModelBank of a client: global, local, and local-only (= the local model's weights).

    One bank per (inputs, pool, labeled set) in this process: its cached outputs are read-only, so
    tests share them instead of running the same inference again.
    """
    key = (id(inputs), id(ds), np.asarray(pool_ids).tobytes(), np.asarray(labeled_ids).tobytes())
    if key not in _BANKS:
        _BANKS[key] = _new_bank(inputs, ds, pool_ids, labeled_ids)
    return _BANKS[key]


def _new_bank(inputs: ParityInputs, ds: ArrayDataset, pool_ids: np.ndarray, labeled_ids: np.ndarray) -> ModelBank:
    loaders = {
        "global": lambda: build(inputs.weights["global"]),
        "local": lambda: build(inputs.weights["local"]),
        "local-only": lambda: build(inputs.weights["local"]),
    }
    return ModelBank(loaders, predict_fn(ds), ds.x[pool_ids], ds.x[labeled_ids])


def context(
    inputs: ParityInputs,
    ds: ArrayDataset,
    params: dict[str, Any],
    *,
    variant: str = "full",
    pool_ids: np.ndarray | None = None,
    budget: int | None = None,
    seed: int = 0,
) -> PoolContext:
    """A client's PoolContext on the fixture: run-config defaults + ``params``."""
    pool = inputs.pool_ids if pool_ids is None else np.asarray(pool_ids)
    lab_ids, lab_y = inputs.labeled(variant)
    return PoolContext(
        pool_ids=pool, labeled_ids=lab_ids, labeled_y=lab_y,
        budget=min(inputs.budget if budget is None else budget, len(pool)), num_classes=NUM_CLASSES,
        rng=np.random.default_rng(seed), models=model_bank(inputs, ds, pool, lab_ids),
        params={**_DEFAULTS, **params},
    )


def load_reference(name: str) -> dict[str, np.ndarray]:
    """The arrays the authors' code produced (``<name>.npz``)."""
    with np.load(FIXTURES / f"{name}.npz", allow_pickle=False) as z:
        return {k: z[k] for k in z.files}
