"""What every ``ref_*.py`` shares: the fixture inputs, the interface adapters, writing results.

Only the *interface* between our models/data and the authors' functions is
adapted here (what a forward returns, how a dataset yields a sample); their
selection code is called unchanged.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.utils.data import Dataset

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from tests import parity_fixture as pf  # noqa: E402


def parse_args(doc: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=doc)
    parser.add_argument("--reference-root", type=Path, required=True)
    parser.add_argument("--data-root", type=Path, default=ROOT.parent / "shared" / "datasets")
    parser.add_argument("--out", type=Path, default=pf.FIXTURES)
    parser.add_argument("--methods", default="", help="comma-separated subset of the methods (default: all)")
    args = parser.parse_args()
    args.methods = [m for m in args.methods.split(",") if m]
    torch.set_num_threads(1)
    return args


def use_reference(root: Path, *folders: str) -> None:
    """Put the authors' checkout (and the extra packages they import) first on ``sys.path``."""
    for folder in reversed(folders):
        path = root / folder
        if not path.is_dir():
            raise SystemExit(f"missing reference checkout {path} (see benchmarks/parity/make_fixtures.py)")
        sys.path.insert(0, str(path))
    if (root / "pydeps").is_dir():
        sys.path.append(str(root / "pydeps"))


class FixtureImages(Dataset):
    """Fashion-MNIST train images by their **global** index, as the tensors our client feeds its models.

    Only the fixture's ids are materialised; ``dataset[i]`` returns ``(x, label)``
    like torchvision's datasets. ``targets`` are all 60,000 labels.
    """

    def __init__(self, ds, ids: np.ndarray) -> None:
        ids = np.unique(np.asarray(ids))
        self._pos = {int(i): k for k, i in enumerate(ids)}
        self._x = pf.input_tensor(ds, ids)
        self.targets = [int(v) for v in ds.y]

    def __len__(self) -> int:
        return len(self.targets)

    def __getitem__(self, i: int):
        return self._x[self._pos[int(i)]], self.targets[int(i)]


class ListFeatures(nn.Module):
    """Our model with dgitj/FAL's interface: ``(logits, [features])`` (their resnets return a list of block outputs)."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, x):
        logits, features = self.model(x)
        return logits, [features]


class WithEmbeddingDim(nn.Module):
    """Our model with LoGo's / FairFAL's interface: ``(logits, features)`` and ``get_embedding_dim()``."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, x):
        return self.model(x)

    def get_embedding_dim(self) -> int:
        return int(self.model.feature_dim)


def models(inputs: pf.ParityInputs, wrap=lambda m: m) -> dict[str, nn.Module]:
    return {kind: wrap(pf.build(inputs.weights[kind])).eval() for kind in ("global", "local")}


def run_methods(methods: dict, wanted: list[str]) -> None:
    """Run the named method functions (all when ``wanted`` is empty)."""
    unknown = set(wanted) - set(methods)
    if unknown:
        raise SystemExit(f"unknown method(s) {sorted(unknown)}; known: {', '.join(methods)}")
    for name, fn in methods.items():
        if not wanted or name in wanted:
            fn()


def save(out: Path, name: str, **arrays: Any) -> None:
    path = out / f"{name}.npz"
    clean = {}
    for k, v in arrays.items():
        a = np.asarray(v)
        if a.dtype == np.float64:
            a = a.astype(np.float32)  # scores: float32 is what both sides compute in
        clean[k] = a
    np.savez_compressed(path, **clean)
    print(f"wrote {path} ({path.stat().st_size / 1024:.1f} KiB): {', '.join(sorted(clean))}", flush=True)


def ids_array(values) -> np.ndarray:
    return np.asarray([int(v) for v in values], dtype=np.int64)
