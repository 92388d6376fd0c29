"""Random vs Entropy on the default experiment, and where the wall time goes.

Runs the default experiment (pyproject defaults: digits, 10 clients, Dirichlet
alpha 0.5, 3 query cycles) for each strategy and seed, through the real Flower
simulation runtime (``fal-simulate``: SuperLink + Ray), and prints:

* final global accuracy, mean +- std over seeds;
* the wall time split: the clients' own compute (sum of the seconds the
  ClientApp handlers measured), the server's own compute (central evaluation),
  and the rest, which is Ray/Flower overhead (process start, serialisation,
  scheduling, the SuperLink round trips). With ``P`` ClientApps running at once
  (``--cpus-per-client 1`` on 2 cores: P = 2), the overhead is
  ``wall - server compute - client compute / P``.

``--runtime inprocess`` runs the same experiments on the in-process grid (no
Ray, no SuperLink) for comparison.

Usage::

    python benchmarks/random_vs_entropy.py                 # 2 strategies x 3 seeds, Flower simulation
    python benchmarks/random_vs_entropy.py --seeds 0 --runtime inprocess
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def run_one(strategy: str, seed: int, out: Path, runtime: str, cpus_per_client: int, extra: str) -> tuple[dict, float]:
    name = f"bench-{strategy}-seed{seed}-{runtime}"
    started = time.perf_counter()
    if runtime == "inprocess":
        from server_app.inprocess import run_inprocess

        overrides = {"strategy": strategy, "seed": seed, "output-dir": str(out), "state-dir": str(out / "state"),
                     "run-name": name}
        for pair in extra.split():
            key, value = pair.split("=", 1)
            overrides[key] = json.loads(value) if value[:1] in '"0123456789-tf' else value
        data = run_inprocess(overrides)
    else:
        from launcher import simulate

        rc = simulate.main([
            "--app", str(ROOT), "--cpus-per-client", str(cpus_per_client),
            "--run-config", f'strategy="{strategy}" seed={seed} output-dir="{out}" state-dir="{out}/state" '
                            f'run-name="{name}" {extra}',
        ])
        if rc != 0:
            raise SystemExit(f"run {name} failed")
        data = json.loads((out / name / "results.json").read_text())
    return data, time.perf_counter() - started


def split(data: dict, wall: float, parallel: int) -> dict[str, float]:
    client = sum(c["seconds"].get("train-client-compute-sum", 0) + c["seconds"].get("query-client-compute-sum", 0)
                 for c in data["cycles"])
    server = sum(c["seconds"].get("evaluate", 0) for c in data["cycles"])
    return {"wall": wall, "client": client, "server": server, "overhead": wall - server - client / parallel}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--strategies", default="random,entropy")
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--runtime", choices=["simulation", "inprocess"], default="simulation")
    parser.add_argument("--cpus-per-client", type=int, default=1)
    parser.add_argument("--run-config", default="", help="extra run-config overrides (key=value ...)")
    parser.add_argument("--out", default=None, help="folder for the results files (default: a temp folder)")
    args = parser.parse_args()
    out = Path(args.out or tempfile.mkdtemp(prefix="fal-bench-")).resolve()
    parallel = 1 if args.runtime == "inprocess" else max(1, (os.cpu_count() or 1) // args.cpus_per_client)
    rows = {}
    t0 = time.perf_counter()
    for strategy in args.strategies.split(","):
        for seed in (int(s) for s in args.seeds.split(",")):
            data, wall = run_one(strategy, seed, out, args.runtime, args.cpus_per_client, args.run_config)
            rows.setdefault(strategy, []).append((data["cycles"][-1]["evaluation"]["accuracy"], split(data, wall, parallel),
                                                  data["cycles"][-1]["labeled-fraction"]))
    print(f"\nmachine: {platform.node()} {os.cpu_count()} cores, {platform.processor() or platform.machine()}; "
          f"runtime {args.runtime}, {parallel} ClientApps in parallel; total {time.perf_counter() - t0:.0f} s")
    print(f"results in {out}\n")
    print("| strategy | final accuracy (mean +- std) | labeled | wall s | client compute s (sum) | server compute s | overhead s |")
    print("|---|---|---|---|---|---|---|")
    for strategy, runs in rows.items():
        accs = [a for a, _, _ in runs]
        std = statistics.stdev(accs) if len(accs) > 1 else 0.0
        mean = lambda key: statistics.mean(s[key] for _, s, _ in runs)  # noqa: E731
        print(f"| {strategy} | {statistics.mean(accs):.4f} +- {std:.4f} (n={len(accs)}) | {runs[0][2]:.1%} | "
              f"{mean('wall'):.0f} | {mean('client'):.1f} | {mean('server'):.1f} | {mean('overhead'):.0f} |")


if __name__ == "__main__":
    main()
