"""Campaign numbers measured in simulation: audit-interval coverage, when the stopping rules fire, calibration flags.

::

    python benchmarks/campaign_coverage.py --seeds 10 --out /tmp/coverage.json

Runs ``--seeds`` in-process experiments (the real ServerApp loop and ClientApp handlers,
real Flower messages) at a CPU-sized setting (digits, 5 sites, Dirichlet 0.5, entropy,
audit sample 15% of each site, ``--cycles`` cycles of 10 FedAvg rounds x 5 epochs, the default schedule), and
prints, over all (seed, cycle) pairs:

* how often the pooled audit interval covers the central test accuracy (the whole digits
  test set, 450 images), and how often it would if the test accuracy had no noise of its own
  (the expected coverage of a noisy target, from the two standard errors);
* per rule, the first cycle it fired in each seed (rules are evaluated every cycle; none stops
  these runs), and one run per rule with ``stop-when`` naming it, to show where it stops;
* the calibration check's flags on these (sane) models.
"""

from __future__ import annotations

import argparse
import json
import math
import resource
import tempfile
import time
from pathlib import Path

from scipy.stats import norm

from server_app.inprocess import run_inprocess

SETTING = {
    "dataset": "digits", "strategy": "entropy", "alpha": 0.5, "rounds-per-cycle": 10, "local-epochs": 5,
    "initial-labeled-fraction": 0.1, "budget-fraction": 0.05, "audit-size": 0.15, "score-batch-size": 512,
}


def _run(folder: Path, name: str, seed: int, cycles: int, clients: int, extra: dict | None = None) -> dict:
    return run_inprocess({**SETTING, "num-cycles": cycles, "seed": seed, "run-name": name,
                          "output-dir": str(folder / "results"), "state-dir": str(folder / "state"), **(extra or {})},
                         num_clients=clients)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", type=int, default=10)
    parser.add_argument("--cycles", type=int, default=6)
    parser.add_argument("--clients", type=int, default=5)
    parser.add_argument("--out", default="")
    args = parser.parse_args()
    start, cpu0 = time.time(), resource.getrusage(resource.RUSAGE_SELF)
    rows, fired = [], {}
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        for seed in range(args.seeds):
            results = _run(folder, f"coverage-seed{seed}", seed, args.cycles, args.clients)
            for c in results["cycles"]:
                camp = c["campaign"]
                pooled = camp["audit"]["pooled"]
                rows.append({
                    "seed": seed, "cycle": c["cycle"], "test-accuracy": c["evaluation"]["accuracy"],
                    "test-n": c["evaluation"].get("num-examples", 450), **{k: pooled[k] for k in ("estimate", "ci-low", "ci-high", "n", "n-effective")},
                    "ece": camp["calibration"].get("ece"), "auroc": camp["calibration"].get("auroc"),
                    "flags": camp["calibration"]["flags"],
                    "rules": {r: {"value": v["value"], "fired": v["fired"]} for r, v in camp["rules"].items()},
                })
                for rule, v in camp["rules"].items():
                    if v["fired"]:
                        fired.setdefault(rule, {}).setdefault(seed, c["cycle"])
            print(f"seed {seed}: done ({time.time() - start:.0f} s)", flush=True)
        stops = {}
        for rule, extra in {
            "stabilizing-predictions": {"stop-when": "stabilizing-predictions"},
            "gain-per-label": {"stop-when": "gain-per-label"},
            "max-uncertainty": {"stop-when": "max-uncertainty", "stop-max-uncertainty": 0.5},
            "budget-exhausted": {"stop-when": "budget-exhausted", "label-budget": 300},
        }.items():
            r = _run(folder, f"stop-{rule}", 0, args.cycles, args.clients, extra)
            stops[rule] = {"settings": extra, "status": r["status"], "stop": r.get("stop"), "cycles-run": len(r["cycles"]),
                           "labels": r["cycles"][-1]["labeled"]}
    z = norm.ppf(0.975)
    covered = [r["ci-low"] <= r["test-accuracy"] <= r["ci-high"] for r in rows]
    expected = []
    for r in rows:  # P(|audit - test| <= half-width) when both are unbiased with their own standard errors
        p = r["estimate"]
        se_audit = math.sqrt(max(p * (1 - p), 1e-12) / r["n-effective"])
        t = r["test-accuracy"]
        se_test = math.sqrt(max(t * (1 - t), 1e-12) / r["test-n"])
        expected.append(2 * norm.cdf(z * se_audit / math.hypot(se_audit, se_test)) - 1)
    cpu = resource.getrusage(resource.RUSAGE_SELF)
    summary = {
        "setting": {**SETTING, "num-cycles": args.cycles, "clients": args.clients, "seeds": args.seeds},
        "intervals": len(rows), "covered": int(sum(covered)), "coverage": sum(covered) / len(rows),
        "expected-coverage-with-test-noise": sum(expected) / len(expected),
        "mean-half-width": sum((r["ci-high"] - r["ci-low"]) / 2 for r in rows) / len(rows),
        "mean-abs-error": sum(abs(r["estimate"] - r["test-accuracy"]) for r in rows) / len(rows),
        "first-cycle-fired": fired, "stop-when-runs": stops,
        "calibration-flags": sum(1 for r in rows if r["flags"]), "mean-ece": sum(r["ece"] for r in rows) / len(rows),
        "mean-auroc": sum(r["auroc"] for r in rows if r["auroc"] is not None) / max(1, sum(1 for r in rows if r["auroc"] is not None)),
        "wall-seconds": time.time() - start, "cpu-seconds": (cpu.ru_utime - cpu0.ru_utime) + (cpu.ru_stime - cpu0.ru_stime),
        "rows": rows,
    }
    print(json.dumps({k: v for k, v in summary.items() if k != "rows"}, indent=1))
    if args.out:
        Path(args.out).write_text(json.dumps(summary, indent=1))


if __name__ == "__main__":
    main()
