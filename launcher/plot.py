"""``fal-plot``: learning curves (accuracy or MSE vs labeled fraction) from results files.

Each argument is a ``results.json`` or a folder searched for them. Runs are
grouped by strategy (or by ``--group-by`` key of the run config); a group of
several seeds is drawn as its mean with a +-1 std band.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections import defaultdict
from pathlib import Path

import numpy as np


def _load(paths: list[str]) -> list[dict]:
    runs = []
    for p in map(Path, paths):
        files = sorted(p.rglob("results.json")) if p.is_dir() else [p]
        if not files:
            raise FileNotFoundError(f"no results.json under {p}")
        for f in files:
            data = json.loads(f.read_text())
            if data.get("cycles"):
                runs.append(data)
    return runs


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="fal-plot", description=__doc__)
    parser.add_argument("results", nargs="+", help="results.json files or folders")
    parser.add_argument("-o", "--output", default="learning-curves.png", help="PNG file to write")
    parser.add_argument("--group-by", default="strategy", help="run-config key that names a curve")
    parser.add_argument("--metric", default=None, help="accuracy | balanced-accuracy | mse (default: by task)")
    args = parser.parse_args(argv)
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    try:
        runs = _load(args.results)
    except (FileNotFoundError, ValueError) as err:
        print(f"fal-plot: {err}", file=sys.stderr)
        return 1
    if not runs:
        print("fal-plot: no run with completed cycles", file=sys.stderr)
        return 1
    metric = args.metric or ("mse" if "mse" in runs[0]["cycles"][0]["evaluation"] else "accuracy")
    groups: dict[str, list[dict]] = defaultdict(list)
    for run in runs:
        groups[str(run["config"].get(args.group_by, "?"))].append(run)
    fig, ax = plt.subplots(figsize=(6, 4))
    for name, members in sorted(groups.items()):
        n = min(len(r["cycles"]) for r in members)
        x = np.mean([[c["labeled-fraction"] for c in r["cycles"][:n]] for r in members], axis=0)
        y = np.array([[c["evaluation"][metric] for c in r["cycles"][:n]] for r in members])
        mean, std = y.mean(0), y.std(0)
        ax.plot(x * 100, mean, marker="o", label=f"{name} (n={len(members)})")
        if len(members) > 1:
            ax.fill_between(x * 100, mean - std, mean + std, alpha=0.2)
    ax.set_xlabel("labeled data (%)")
    ax.set_ylabel(metric)
    cfg = runs[0]["config"]
    ax.set_title(f"{cfg['dataset']}, {cfg['num-clients']} clients, {cfg['partition']} alpha={cfg['alpha']}")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(args.output, dpi=120)
    print(f"fal-plot: wrote {args.output} ({len(runs)} runs, {len(groups)} curves)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
