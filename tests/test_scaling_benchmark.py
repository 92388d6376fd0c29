"""benchmarks/scaling.py's own logic: the points it measures, the fitted exponents, the report."""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

import pytest

from benchmarks import scaling

REPO = Path(__file__).resolve().parents[1]


def _args(axis: str, **overrides: str) -> argparse.Namespace:
    """The arguments main() would parse for ``axis`` (small sizes), with ``overrides``."""
    ns = argparse.Namespace(axis=axis, data_root=Path("/data"), selectors="", sizes="10000,100000", budget=100,
                            budgets="100,300", budget_pool=1000, d=5, k=3, block_size=10, n_query=5,
                            clients="10,100", runtimes="inprocess,simulation", rounds=2, cycles=1,
                            bn_samples="1024,0", seeds="0,1", bn_rounds=5)
    for key, value in overrides.items():
        setattr(ns, key, value)
    return ns


def test_points_are_smallest_first_and_unknown_selectors_are_refused():
    pool = scaling.points_of(_args("pool", selectors="coreset,badge"))
    assert [(p["n"], p["selector"]) for p in pool] == [(10000, "coreset"), (10000, "badge"),
                                                       (100000, "coreset"), (100000, "badge")]
    assert len(scaling.points_of(_args("pool"))) == 2 * len(scaling.POOL_SELECTORS)
    clients = scaling.points_of(_args("clients"))
    assert [(p["axis"], p["k"]) for p in clients] == [("clients-inprocess", 10), ("clients-simulation", 10),
                                                      ("clients-inprocess", 100), ("clients-simulation", 100)]
    with pytest.raises(SystemExit, match="unknown"):
        scaling.points_of(_args("pool", selectors="entropy,nosuch"))


def _row(axis: str, grow: str, size: int, result: dict, **extra) -> dict:
    return {"point": {"axis": axis, grow: size, "data-root": "/x", **extra}, "result": result}


def test_fit_recovers_the_growth_exponent_per_series_and_skips_errors_and_repeats():
    rows = [_row("pool", "n", n, {"cpu-seconds": 2e-6 * n ** 1.5, "peak-rss-mib": 100.0 + 0 * n},
                 selector="coreset", budget=100) for n in (10_000, 100_000, 1_000_000)]
    rows += [_row("pool", "n", n, {"cpu-seconds": 3e-4 * n}, selector="entropy", budget=100)
             for n in (10_000, 100_000)]
    rows.append(_row("pool", "n", 1_000_000, {"error": "timed out after 600 s"}, selector="entropy", budget=100))
    rows += [_row("bn", "seed", s, {"cpu-seconds": 10.0 + s}, samples=0) for s in (0, 1, 2)]
    fits = scaling.fit_exponents(rows)
    by_selector = {json.loads(k)["selector"]: v for k, v in fits.items()}
    assert set(by_selector) == {"coreset", "entropy"}  # bn (seeds) is not a size
    assert by_selector["coreset"]["cpu-seconds"] == pytest.approx(1.5, abs=1e-9)
    assert by_selector["coreset"]["peak-rss-mib"] == pytest.approx(0.0, abs=1e-9)
    assert by_selector["entropy"]["cpu-seconds"] == pytest.approx(1.0, abs=1e-9)  # the timed-out point left out


def test_report_prints_the_tables_of_a_results_file(tmp_path):
    rows = [_row("fedsvd", "n", n, {"wall-seconds": 1e-4 * n, "cpu-seconds": 1e-4 * n, "peak-rss-mib": 50.0,
                                     "peak-over-before-mib": 5.0, "max-relative-singular-value-error": 1e-12},
                 d=5, k=3, **{"block-size": 10}) for n in (1000, 10_000)]
    rows.append(_row("fedsvd", "n", 100_000, {"error": "exit 1; see log"}, d=5, k=3, **{"block-size": 10}))
    out = tmp_path / "fedsvd.json"
    out.write_text(json.dumps({"rows": rows}))
    text = subprocess.run([sys.executable, str(REPO / "benchmarks" / "scaling.py"), "--axis", "fedsvd", "--out",
                           str(out), "--report"], capture_output=True, text=True, check=True, cwd=REPO).stdout
    assert "| block-size=10 d=5 k=3 n=1000 | 0.1 | 0.1 | 50 | 5 | 1e-12 |" in text
    assert "| block-size=10 d=5 k=3 n=100000 | exit 1; see log |" in text
    assert "cpu-seconds 1.00" in text
