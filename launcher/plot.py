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


def build_parser() -> argparse.ArgumentParser:
    """The command line (the docs' command reference is generated from it)."""
    parser = argparse.ArgumentParser(prog="fal-plot", description=__doc__)
    parser.add_argument("results", nargs="+", help="results.json files or folders")
    parser.add_argument("-o", "--output", default="learning-curves.png", help="PNG file to write")
    parser.add_argument("--group-by", default="strategy", help="run-config key that names a curve")
    parser.add_argument("--metric", default=None, help="accuracy | balanced-accuracy | mse (default: by task)")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        runs = _load(args.results)
    except (FileNotFoundError, ValueError) as err:
        print(f"fal-plot: {err}", file=sys.stderr)
        return 1
    if not runs:
        print("fal-plot: no run with completed cycles", file=sys.stderr)
        return 1
    from launcher.report import RunResult, plot_curves

    metric = args.metric or ("mse" if "mse" in runs[0]["cycles"][0]["evaluation"] else "accuracy")
    groups: dict[str, list] = defaultdict(list)
    for run in runs:
        name = str(run["config"].get(args.group_by, "?"))
        groups[name].append(RunResult(run.get("run-name", "?"), name, (), int(run["config"].get("seed", 0)),
                                      run.get("status", "?"), "", run["config"], run["cycles"], float("nan")))
    cfg = runs[0]["config"]
    title = f"{cfg['dataset']}, {cfg['num-clients']} clients, {cfg['partition']} alpha={cfg['alpha']}"
    plot_curves(groups, metric, Path(args.output), title)
    print(f"fal-plot: wrote {args.output} ({len(runs)} runs, {len(groups)} curves)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
