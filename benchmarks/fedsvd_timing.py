"""FedSVD wall time and peak memory versus numpy's thin SVD of the same matrix.

Usage::

    python benchmarks/fedsvd_timing.py                 # k=10 clients, n=100000, d=50, block 1000
    python benchmarks/fedsvd_timing.py --n 20000 --d 20 --k 4 --block-size 500
    python benchmarks/fedsvd_timing.py --blas-threads 1   # needs threadpoolctl

Everything runs in one process (all roles of :func:`fedsvd.federated_svd`), sequentially, so the
FedSVD time is the sum of the work of every client plus the server; in a deployment the clients'
masking/recovery runs in parallel on their own machines. Timings are taken without tracemalloc;
peak memory is measured in a separate run with ``tracemalloc`` (numpy reports its buffers to it),
counting allocations made after the input matrix exists.

FedSVD's cost is dominated by generating the ``n / b`` Haar blocks (one ``b x b`` Householder QR
each, twice: masking and recovery), ``O(n b^2)`` against ``O(n d^2)`` for the SVD itself, so the
ratio grows with ``b / d``. Many small BLAS calls suffer badly from an oversubscribed machine with
multi-threaded OpenBLAS (busy-waiting threads); ``--blas-threads 1`` gives stabler numbers on a
shared box.
"""

from __future__ import annotations

import argparse
import os
import platform
import time
import tracemalloc
from collections.abc import Callable
from typing import Any

import numpy as np

try:
    import fedsvd  # noqa: F401
except ModuleNotFoundError:  # run as a script from a checkout without installing the project
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from fedsvd import FedSVDClient, TrustedAuthority, federated_svd, server_svd


def _timed(fn: Callable[[], Any], repeats: int) -> tuple[float, Any]:
    best, out = float("inf"), None
    for _ in range(repeats):
        t0 = time.perf_counter()
        out = fn()
        best = min(best, time.perf_counter() - t0)
    return best, out


def _peak_mib(fn: Callable[[], Any]) -> float:
    tracemalloc.start()
    tracemalloc.reset_peak()
    out = fn()
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    del out
    return peak / 2**20


def _stage_times(parts: list[np.ndarray], block_size: int, seed: int) -> dict[str, float]:
    """Time the protocol stages separately (same steps as ``federated_svd``)."""
    ta = TrustedAuthority(len(parts), seed=seed)
    clients = [FedSVDClient(x, **ta.client_package(i), block_size=block_size)
               for i, x in enumerate(parts)]
    t0 = time.perf_counter()
    masked = [c.mask_data() for c in clients]
    t1 = time.perf_counter()
    u_masked, _, vt_masked = server_svd(masked)
    t2 = time.perf_counter()
    _ = [c.recover_left(u) for c, u in zip(clients, u_masked, strict=True)]
    _ = clients[0].recover_right(vt_masked)
    t3 = time.perf_counter()
    return {
        "clients: mask P_i X_i Q (all k)": t1 - t0,
        "server: thin SVD of X'": t2 - t1,
        "clients: recover U_i, V (all k)": t3 - t2,
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--n", type=int, default=100_000, help="total rows (samples)")
    parser.add_argument("--d", type=int, default=50, help="columns (features)")
    parser.add_argument("--k", type=int, default=10, help="number of clients")
    parser.add_argument("--block-size", type=int, default=1000, help="mask block size")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--repeats", type=int, default=1, help="timing repeats (best of)")
    parser.add_argument(
        "--blas-threads",
        type=int,
        default=None,
        help="limit BLAS threads (numpy's and scipy's OpenBLAS) with threadpoolctl; "
        "default: leave the libraries' own setting",
    )
    args = parser.parse_args(argv)
    if args.blas_threads is not None:
        try:
            from threadpoolctl import threadpool_limits
        except ModuleNotFoundError:
            parser.error("--blas-threads needs threadpoolctl; or set OPENBLAS_NUM_THREADS instead")
        with threadpool_limits(limits=args.blas_threads, user_api="blas"):
            _run(args)
    else:
        _run(args)


def _run(args: argparse.Namespace) -> None:
    """Run the comparison and print the table."""
    rng = np.random.default_rng(args.seed)
    x = rng.standard_normal((args.n, args.d))
    parts = np.array_split(x, args.k, axis=0)  # views: no copy of the data

    def numpy_svd() -> Any:
        return np.linalg.svd(x, full_matrices=False)

    def fed_svd() -> Any:
        return federated_svd(parts, block_size=args.block_size, seed=args.seed)

    t_np, (u_np, s_np, vt_np) = _timed(numpy_svd, args.repeats)
    t_fed, (u_parts, s_fed, vt_fed) = _timed(fed_svd, args.repeats)
    mem_np = _peak_mib(numpy_svd)
    mem_fed = _peak_mib(fed_svd)
    stages = _stage_times(parts, args.block_size, args.seed)

    u_fed = np.vstack(u_parts)
    sv_err = float(np.max(np.abs(s_fed - s_np) / s_np))
    rec_err = float(np.linalg.norm((u_fed * s_fed) @ vt_fed - x) / np.linalg.norm(x))
    sub_err = float(np.max(np.abs(np.abs(u_fed.T @ u_np) - np.eye(args.d))))

    print(f"machine: {platform.machine()} {platform.system()}, os.cpu_count()={os.cpu_count()}, "
          f"numpy {np.__version__}, OPENBLAS_NUM_THREADS="
          f"{os.environ.get('OPENBLAS_NUM_THREADS', 'unset')}, --blas-threads={args.blas_threads}")
    print(f"X: n={args.n} d={args.d}, k={args.k} clients, block_size={args.block_size}, "
          f"input {x.nbytes / 2**20:.1f} MiB")
    print()
    print(f"| {'method':<28} | {'wall s':>8} | {'peak MiB':>9} |")
    print(f"|{'-' * 30}|{'-' * 10}|{'-' * 11}|")
    print(f"| {'numpy thin SVD':<28} | {t_np:8.3f} | {mem_np:9.1f} |")
    print(f"| {'FedSVD (all roles, 1 proc)':<28} | {t_fed:8.3f} | {mem_fed:9.1f} |")
    print(f"| {'ratio FedSVD / numpy':<28} | {t_fed / t_np:8.1f} | {mem_fed / mem_np:9.2f} |")
    print()
    print("FedSVD stages (separate run):")
    for name, sec in stages.items():
        print(f"  {name:<34} {sec:8.3f} s")
    print()
    print(f"max relative singular-value error vs numpy: {sv_err:.2e}")
    print(f"relative reconstruction error ||U S Vt - X|| / ||X||: {rec_err:.2e}")
    print(f"max | |U^T U_np| - I |: {sub_err:.2e}")


if __name__ == "__main__":
    main()
