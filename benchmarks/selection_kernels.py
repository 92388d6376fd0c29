"""Time and peak memory of the selection kernels at client-pool scale (a script, not a test).

Runs

* ``k_center_greedy`` on :class:`DenseFeatures` (n x d), starting from the origin,
  then reports the covering radius reached;
* ``kmeans_pp_seeding`` on factorised :class:`GradientEmbeddings` (h: n x d, C classes),
  whose dense form (n x C*d) is never built;

on synthetic data, and prints wall time and the peak of numpy/Python allocations
made *during* the call (``tracemalloc``; numpy reports its array buffers to it),
next to the sizes of the input arrays and of the dense embedding that was avoided.

float32 is the default: both kernels only compare and sample squared distances,
whose float32 round-off (about 1e-7 of the squared norms, see
``query/distances.py``) matters only for near-ties; ``--dtype float64`` checks it.

Usage::

    python benchmarks/selection_kernels.py                 # n=50000, d=256, k=2500, C=10
    python benchmarks/selection_kernels.py --n 5000 --k 250 --dtype float64
"""

from __future__ import annotations

import argparse
import os
import sys
import time
import tracemalloc
from pathlib import Path
from typing import Callable

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from anywhere in the repo

from query.kernels import DenseFeatures, GradientEmbeddings, k_center_greedy, kmeans_pp_seeding  # noqa: E402

MiB = 1024.0**2


def measure(fn: Callable[[], np.ndarray]) -> tuple[np.ndarray, float, float]:
    """Run ``fn`` once; return (result, seconds, peak MiB allocated above the baseline)."""
    tracemalloc.start()
    tracemalloc.reset_peak()
    base, _ = tracemalloc.get_traced_memory()
    t0 = time.perf_counter()
    out = fn()
    elapsed = time.perf_counter() - t0
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    return out, elapsed, (peak - base) / MiB


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--n", type=int, default=50_000, help="pool size")
    parser.add_argument("--d", type=int, default=256, help="feature dimension (h for BADGE)")
    parser.add_argument("--k", type=int, default=2_500, help="budget (picks)")
    parser.add_argument("--classes", type=int, default=10, help="C for the gradient embeddings")
    parser.add_argument("--dtype", choices=["float32", "float64"], default="float32")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--skip", choices=["kcenter", "kmeanspp"], action="append", default=[])
    args = parser.parse_args(argv)
    dtype = np.dtype(args.dtype)
    rng = np.random.default_rng(args.seed)
    n, d, k, c = args.n, args.d, args.k, args.classes

    print(
        f"numpy {np.__version__}, {os.cpu_count()} CPU(s), n={n}, d={d}, k={k}, C={c}, "
        f"dtype={dtype.name}; memory = tracemalloc peak during the call, inputs excluded"
    )

    if "kcenter" not in args.skip:
        X = rng.standard_normal((n, d), dtype=np.float32).astype(dtype, copy=False)
        pts = DenseFeatures(X)
        picks, secs, peak = measure(lambda: k_center_greedy(pts, k))
        # Covering radius after the k picks (origin excluded): max over points of the
        # distance to the nearest pick. Computed in blocks, outside the timed call.
        radius = float(np.sqrt(pts.min_sq_dists_to(pts.subset(picks)).max()))
        print(
            f"k_center_greedy  DenseFeatures: {secs:7.2f} s, peak {peak:7.2f} MiB | "
            f"X {X.nbytes / MiB:.1f} MiB; picks {len(picks)} unique {len(np.unique(picks))}; "
            f"covering radius {radius:.4f}"
        )
        del X, pts

    if "kmeanspp" not in args.skip:
        h = np.maximum(rng.standard_normal((n, d), dtype=np.float32), 0).astype(dtype, copy=False)
        logits = rng.standard_normal((n, c), dtype=np.float32) * 3.0
        probs = np.exp(logits - logits.max(axis=1, keepdims=True))
        probs = (probs / probs.sum(axis=1, keepdims=True)).astype(dtype, copy=False)
        g = GradientEmbeddings(h, probs)
        picks, secs, peak = measure(lambda: kmeans_pp_seeding(g, k, np.random.default_rng(args.seed)))
        dense_mib = n * c * d * dtype.itemsize / MiB
        print(
            f"kmeans_pp_seeding GradientEmb.: {secs:7.2f} s, peak {peak:7.2f} MiB | "
            f"h {h.nbytes / MiB:.1f} MiB + probs {probs.nbytes / MiB:.1f} MiB; "
            f"dense n x C*d embedding avoided: {dense_mib:.0f} MiB; "
            f"picks {len(picks)} unique {len(np.unique(picks))}"
        )


if __name__ == "__main__":
    main()
