"""Break-on-purpose check of the selection-parity tests: each change below makes one of our selectors pick
differently; the script applies it, runs that group's tests in tests/test_parity_selection.py, restores the
file and reports. Every group must FAIL (exit status 1 if one passes). Run from a clean worktree:

    OMP_NUM_THREADS=1 python benchmarks/parity/break_selectors.py [name ...]

Results: docs/results/parity-selection.md. The file is restored even if pytest is interrupted (``finally``);
``git status`` is printed at the end.
"""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
# (name, file, original text, broken text, pytest -k expression)
BREAKS = [
    (
        'entropy',
        'query/simple.py',
        'return top_k(entropy(probs), ctx.budget)',
        'return top_k(entropy(probs), ctx.budget + 1)[1:]',
        'entropy',
    ),
    (
        'coreset',
        'query/baselines.py',
        'return k_center_greedy(DenseFeatures(pool), ctx.budget, anchors=anchors)',
        'return k_center_greedy(DenseFeatures(pool), ctx.budget, anchors=None)',
        'coreset',
    ),
    (
        'ksas',
        'query/kafal.py',
        'scores = ksas_scores(log_p["local"], log_p["global"], counts, tau)',
        'scores = ksas_scores(log_p["local"], log_p["global"], counts, 0.0)',
        'ksas',
    ),
    (
        'ahfal',
        'query/ahfal.py',
        'REF_TIERS = ((0.5, 0.5), (0.8, 0.3))',
        'REF_TIERS = ((0.5, 0.4), (0.8, 0.3))',
        'ahfal',
    ),
    (
        'feal',
        'query/feal.py',
        'k = min(neighbors, n - 1)',
        'k = min(neighbors - 1, n - 1)',
        'feal',
    ),
    (
        'fairfal-choice',
        'query/fairfal.py',
        'bool(g_bar < g_bar_threshold))',
        'bool(g_bar >= g_bar_threshold))',
        'fairfal',
    ),
    (
        'fairfal-quotas',
        'query/kernels.py',
        'order = np.argsort(-sizes, kind="stable")  # largest bucket first',
        'order = np.argsort(sizes, kind="stable")  # largest bucket first',
        'fairfal',
    ),
    (
        'badge',
        'query/baseline_variants.py',
        'budget: int, random_state: int, *, n_init: int = 10,',
        'budget: int, random_state: int, *, n_init: int = 1,',
        'badge',
    ),
    (
        'noise-stability',
        'query/baseline_variants.py',
        'xi_norm = torch.randn(param.shape, generator=generator, dtype=param.dtype).norm()',
        'xi_norm = xi.norm()',
        'noise',
    ),
    (
        'logo',
        'query/baselines.py',
        'order = np.lexsort((idx, -scores, labels))',
        'order = np.lexsort((idx, scores, labels))',
        'logo',
    ),
]


def main(only: list[str]) -> int:
    unknown = set(only) - {b[0] for b in BREAKS}
    if unknown:
        raise SystemExit(f"unknown break(s) {sorted(unknown)}; known: {', '.join(b[0] for b in BREAKS)}")
    unnoticed = []
    for name, path, old, new, k in BREAKS:
        if only and name not in only:
            continue
        f = ROOT / path
        text = f.read_text()
        if text.count(old) != 1:
            raise SystemExit(f"{name}: {path} no longer contains {old!r} once; update BREAKS")
        f.write_text(text.replace(old, new))
        try:
            start = time.perf_counter()
            r = subprocess.run([sys.executable, "-m", "pytest", "-q", "-rf", "--tb=line", "-p", "no:cacheprovider",
                                "tests/test_parity_selection.py", "-k", k], cwd=ROOT, capture_output=True, text=True)
        finally:
            f.write_text(text)
        lines = r.stdout.strip().splitlines()
        print(f"== {name}: {path}: {old!r} -> {new!r} (pytest -k {k}: exit {r.returncode}, "
              f"{time.perf_counter() - start:.0f} s)")
        print("\n".join(x for x in lines if x.startswith(("FAILED", "/")) or x == lines[-1]), flush=True)
        if r.returncode == 0:
            unnoticed.append(name)
    status = subprocess.run(["git", "status", "--short"], cwd=ROOT, capture_output=True, text=True).stdout
    print(status or "git status clean")
    if unnoticed:
        print(f"NOT NOTICED by the parity tests: {', '.join(unnoticed)}")
        return 1
    print("every break made its tests fail")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
