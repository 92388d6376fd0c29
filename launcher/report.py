"""``fal-report``: tables, paired tests and learning curves of a sweep folder (or any folder of runs).

::

    fal-report ~/fal-results/sweeps/ahfal-mnist-cpu            # writes <folder>/report/
    fal-report FOLDER --reference random --metric balanced-accuracy

Runs are grouped by every grid axis but the method and the seed (e.g. one
table per alpha). For each group and method: the metric's mean +- std over
seeds at every labeled fraction (the cycles) and at the end; balanced accuracy,
and minority recall when the training set is long-tailed; a paired t-test
(scipy, over seeds paired by seed) of every method against the reference at
every checkpoint, counted as wins / ties / losses at p < 0.05 as in FALE's
Table 2; query time and bytes; learning curves (PNG, mean +- std bands).
Classification metrics are higher-is-better, MSE lower-is-better. Works for a
folder without ``sweep.json`` too (methods = strategies, groups = none).
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import math
import sys
from collections import defaultdict
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import numpy as np

__all__ = ["RunResult", "load_runs", "write_report", "plot_curves", "paired_wtl", "main"]

LOWER_IS_BETTER = {"mse", "median-squared-error"}
NOT_QUERY_PHASE = {"query.setup", "query.bn_stats"}  # query.* messages that are not the labeling phase
TIME_KEYS = ("train", "train-client-compute-sum", "bn-statistics", "evaluate", "query", "query-client-compute-sum")
P_VALUE = 0.05


@dataclass
class RunResult:
    name: str
    method: str
    group: tuple[tuple[str, Any], ...]
    seed: int
    status: str
    error: str
    config: dict[str, Any]
    cycles: list[dict[str, Any]]
    wall_seconds: float

    def metric(self, key: str, cycle: int) -> float:
        ev = self.cycles[cycle]["evaluation"]
        if key == "minority-recall":
            return minority_recall(ev, self.config)
        return float(ev.get(key, math.nan))


def minority_recall(evaluation: dict[str, Any], config: dict[str, Any], classes: int = 3) -> float:
    """Mean recall of the rarest classes of a long-tailed training set (the profile falls with the class index)."""
    per_class = evaluation.get("per-class-accuracy")
    if not per_class or float(config.get("long-tail-factor", 1.0)) <= 1:
        return math.nan
    return float(np.nanmean(np.asarray(per_class, dtype=float)[-classes:]))


def _wall(data: dict[str, Any]) -> float:
    if "wall-seconds" in data.get("totals", {}):
        return float(data["totals"]["wall-seconds"])
    try:
        fmt = "%Y-%m-%dT%H:%M:%SZ"
        return (datetime.strptime(data["finished"], fmt) - datetime.strptime(data["started"], fmt)).total_seconds()
    except (KeyError, TypeError, ValueError):
        return math.nan


def _method_and_group(method: str, axes: dict[str, Any], compare: str) -> tuple[str, tuple[tuple[str, Any], ...]]:
    """What a table row is (the method, or ``compare``'s value) and which table it is in (the other axes)."""
    if compare == "strategy":
        return method, tuple((k, v) for k, v in axes.items() if k != "seed")
    label = f"{compare}={axes.get(compare)}"
    rest = tuple((k, v) for k, v in axes.items() if k not in ("seed", compare))
    return label, (("method", method), *rest)


def load_runs(folder: Path, compare: str | None = None) -> tuple[dict[str, Any], list[RunResult]]:
    """The sweep manifest (or {}) and every run with a results file under ``folder``.

    ``compare`` (default: the sweep's ``compare`` setting, else ``strategy``) is the grid axis whose values
    are the rows of a table; every other axis but the seed makes its own table.
    """
    manifest_path = folder / "sweep.json"
    manifest = json.loads(manifest_path.read_text()) if manifest_path.exists() else {}
    compare = compare or manifest.get("settings", {}).get("compare", "strategy")
    declared = {r["name"]: r for r in manifest.get("runs", [])}
    if compare != "strategy" and declared and any(compare not in r["axes"] for r in declared.values()):
        raise ValueError(f"compare: {compare!r} is not a grid axis of this sweep")
    root = folder / "runs" if (folder / "runs").is_dir() else folder
    runs = []
    for path in sorted(root.rglob("results.json")):
        data = json.loads(path.read_text())
        name = data.get("run-name", path.parent.name)
        if declared and name not in declared:
            continue  # left from an older version of the sweep
        entry = declared.get(name, {"method": data["config"].get("strategy", "?"), "axes": {"seed": data["config"].get("seed", 0)}})
        axes = entry["axes"]
        method, group = _method_and_group(entry["method"], axes, compare)
        runs.append(RunResult(
            name=name, method=method, group=group,
            seed=int(axes.get("seed", data["config"].get("seed", 0))), status=data.get("status", "?"),
            error=data.get("error") or "", config=data["config"], cycles=data.get("cycles", []),
            wall_seconds=_wall(data),
        ))
    missing = sorted(set(declared) - {r.name for r in runs})
    for name in missing:  # declared but never started (or its folder was removed)
        entry = declared[name]
        method, group = _method_and_group(entry["method"], entry["axes"], compare)
        runs.append(RunResult(name, method, group, int(entry["axes"].get("seed", 0)), "missing", "no results file", {}, [], math.nan))
    return manifest, runs


def paired_wtl(values: dict[int, list[float]], reference: dict[int, list[float]], lower_is_better: bool) -> tuple[int, int, int, float]:
    """Wins, ties, losses over checkpoints (paired t-test over seeds, p < 0.05) and the last checkpoint's p.

    ``values[cycle]`` and ``reference[cycle]`` are per-seed lists in the same seed order.
    """
    from scipy.stats import ttest_rel

    wins = ties = losses = 0
    p_last = math.nan
    for cycle in sorted(set(values) & set(reference)):
        a, b = np.asarray(values[cycle], float), np.asarray(reference[cycle], float)
        ok = ~(np.isnan(a) | np.isnan(b))
        a, b = a[ok], b[ok]
        if len(a) < 2 or np.allclose(a, b):
            ties += 1
            p = math.nan if len(a) < 2 else 1.0
        else:
            p = float(ttest_rel(a, b).pvalue)
            better = a.mean() < b.mean() if lower_is_better else a.mean() > b.mean()
            if p < P_VALUE:
                wins, losses = (wins + 1, losses) if better else (wins, losses + 1)
            else:
                ties += 1
        p_last = p
    return wins, ties, losses, p_last


def _by_seed(runs: list[RunResult], key: str) -> dict[int, list[float]]:
    """cycle -> values ordered by seed (runs sorted by seed)."""
    n = min(len(r.cycles) for r in runs)
    return {c: [r.metric(key, c) for r in runs] for c in range(n)}


def _mean_std(values: list[float], scale: float) -> str:
    v = np.asarray(values, float)
    v = v[~np.isnan(v)]
    if not len(v):
        return "-"
    if len(v) == 1:
        return f"{v[0] * scale:.2f}"
    return f"{v.mean() * scale:.2f} +- {v.std(ddof=1) * scale:.2f}"


def _query_totals(run: RunResult) -> tuple[float, float, float]:
    """(query seconds, query-phase MB, all MB) summed over the run's cycles (setup and BN rounds are not the query phase)."""
    q_s = sum(c.get("seconds", {}).get("query", 0.0) for c in run.cycles)
    q_b = tot_b = 0
    for c in run.cycles:
        for kind, t in c.get("traffic", {}).items():
            b = t.get("bytes-sent", 0) + t.get("bytes-received", 0)
            tot_b += b
            q_b += b if kind.startswith("query.") and kind not in NOT_QUERY_PHASE else 0
    return q_s, q_b / 1e6, tot_b / 1e6


def _group_label(group: tuple[tuple[str, Any], ...]) -> str:
    return ", ".join(f"{k}={v}" for k, v in group) or "all runs"


def _slug(group: tuple[tuple[str, Any], ...]) -> str:
    import re

    return re.sub(r"[^A-Za-z0-9._-]+", "_", "-".join(f"{k}{v}" for k, v in group)) or "all"


def plot_curves(runs_by_method: dict[str, list[RunResult]], metric: str, path: Path, title: str) -> None:
    """Metric vs labeled fraction, one line per method, mean +- std (over seeds) band."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    scale = 1.0 if metric in LOWER_IS_BETTER else 100.0
    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    for method, members in sorted(runs_by_method.items()):
        members = [r for r in members if r.cycles]
        if not members:
            continue
        n = min(len(r.cycles) for r in members)
        x = np.mean([[c["labeled-fraction"] for c in r.cycles[:n]] for r in members], axis=0) * 100
        y = np.array([[r.metric(metric, c) for c in range(n)] for r in members]) * scale
        mean = np.nanmean(y, axis=0)
        ax.plot(x, mean, marker="o", label=f"{method} (n={len(members)})")
        if len(members) > 1:
            std = np.nanstd(y, axis=0, ddof=1)
            ax.fill_between(x, mean - std, mean + std, alpha=0.2)
    ax.set_xlabel("labeled data (%)")
    ax.set_ylabel(metric + ("" if scale == 1 else " (%)"))
    ax.set_title(title, fontsize=9)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _where_runs_ran(manifest: dict[str, Any]) -> str:
    """``host / Ray node <id> (<ip>, resources ...): N runs`` for each node sweep.json names, or ''."""
    counts: dict[str, int] = defaultdict(int)
    for run in manifest.get("runs", []):
        node = run.get("node")
        if not node:
            continue
        label = str(node.get("host", "?"))
        if node.get("ray-node-id"):
            label += f" / Ray node {node['ray-node-id'][:8]}"
            details = [str(node["ray-node-ip"])] if node.get("ray-node-ip") else []
            details += [f"{k}={v:g}" for k, v in sorted(node.get("ray-node-resources", {}).items())]
            label += f" ({', '.join(details)})" if details else ""
        counts[label] += 1
    return "; ".join(f"{label}: {n} run(s)" for label, n in sorted(counts.items()))


def write_report(folder: Path, *, reference: str | None = None, metric: str | None = None, out: Path | None = None,
                 compare: str | None = None) -> dict[str, Path]:
    """Write ``report.md``, ``checkpoints.csv``, ``final.csv`` and ``curves-*.png``; their paths."""
    folder = Path(folder)
    manifest, runs = load_runs(folder, compare)
    out = Path(out or folder / "report")
    out.mkdir(parents=True, exist_ok=True)
    for old in out.glob("curves-*.png"):  # plots of another grouping would otherwise sit beside the new ones
        old.unlink()
    settings = manifest.get("settings", {})
    reference = reference or settings.get("reference", "random")
    done = [r for r in runs if r.status == "completed" and r.cycles]
    if metric is None or metric == "auto":
        metric = settings.get("metric", "auto")
    if metric == "auto":
        metric = "mse" if done and "mse" in done[0].cycles[0]["evaluation"] else "accuracy"
    lower = metric in LOWER_IS_BETTER
    scale = 1.0 if lower else 100.0
    unit = "" if lower else " (%)"
    lines = [f"# Sweep report: {manifest.get('name', folder.name)}", ""]
    walls = [inv.get("wall-seconds") for inv in manifest.get("invocations", []) if inv.get("wall-seconds") is not None]
    interrupted = len(manifest.get("invocations", [])) - len(walls)  # killed before the end (or still running)
    machine = manifest.get("machine", {})
    lines.append(
        f"{len(runs)} runs: {len(done)} completed, {sum(r.status == 'failed' for r in runs)} failed, "
        f"{sum(r.status not in ('completed', 'failed') for r in runs)} not finished. "
        + (f"Sweep wall time {sum(walls) / 60:.1f} min over {len(walls)} invocation(s)" if walls else "")
        + (f" on {machine.get('host')} ({machine.get('cpus')} CPUs)" if machine else "")
        + (f", not counting {interrupted} interrupted invocation(s) that recorded no wall time" if interrupted else "")
        + f". The completed runs' own times add up to {np.nansum([r.wall_seconds for r in done]) / 60:.1f} min."
    )
    where = _where_runs_ran(manifest)
    if where:
        lines += ["", "Where the runs ran (last execution of each): " + where + "."]
    lines += ["", f"Metric: {metric}{unit}, mean +- std over seeds (sample std). Paired t-tests against "
              f"`{reference}` over seeds at every checkpoint, p < {P_VALUE}: wins/ties/losses (W/T/L).", ""]
    checkpoint_rows, final_rows, plots = [], [], []
    groups: dict[tuple, dict[str, list[RunResult]]] = defaultdict(lambda: defaultdict(list))
    for r in sorted(done, key=lambda r: (r.seed, r.name)):
        groups[r.group][r.method].append(r)
    method_order = {m: i for i, m in enumerate(dict.fromkeys(r.method for r in runs))}
    for group, by_method in groups.items():
        label = _group_label(group)
        methods = sorted(by_method, key=lambda m: (m != reference, method_order.get(m, 99), m))
        n_cycles = min(len(r.cycles) for rs in by_method.values() for r in rs)
        fractions = [np.mean([r.cycles[c]["labeled-fraction"] for rs in by_method.values() for r in rs]) for c in range(n_cycles)]
        lines += [f"## {label}", "", f"### {metric}{unit} at each labeled fraction", ""]
        lines.append("| method | seeds | " + " | ".join(f"{f * 100:.1f}%" for f in fractions) + " |")
        lines.append("|---|---:|" + "---:|" * n_cycles)
        ref_runs = by_method.get(reference, [])
        ref_seeds = {r.seed: r for r in ref_runs}
        for m in methods:
            rs = by_method[m]
            per_cycle = _by_seed(rs, metric)
            cells = [_mean_std(per_cycle[c], scale) if c in per_cycle else "-" for c in range(n_cycles)]
            lines.append(f"| {m} | {len(rs)} | " + " | ".join(cells) + " |")
            for c in range(n_cycles):
                vals = per_cycle.get(c, [])
                checkpoint_rows.append({
                    "group": label, "method": m, "cycle": c, "labeled-fraction": round(fractions[c], 6), "metric": metric,
                    "mean": float(np.nanmean(vals)) if vals else math.nan,
                    "std": float(np.nanstd(vals, ddof=1)) if len(vals) > 1 else math.nan,
                    "n": len(vals), "values": json.dumps([float(v) for v in vals]),
                })
        lines += ["", f"### At the end ({fractions[-1] * 100:.1f}% labeled)", ""]
        has_lt = any(float(r.config.get("long-tail-factor", 1)) > 1 for rs in by_method.values() for r in rs)
        extra = [k for k in ("balanced-accuracy",) if k != metric and all(k in rs[0].cycles[-1]["evaluation"] for rs in by_method.values())]
        if has_lt:
            extra.append("minority-recall")
        lines.append(f"| method | {metric}{unit} | " + "".join(f"{k}{unit} | " for k in extra)
                     + f"W/T/L vs {reference} | p (end) | query s | query MB | total MB | run s |")
        lines.append("|---|---:|" + "---:|" * len(extra) + "---|---:|---:|---:|---:|---:|")
        for m in methods:
            rs = by_method[m]
            last = n_cycles - 1
            final = [r.metric(metric, last) for r in rs]
            extras = {k: [r.metric(k, last) for r in rs] for k in extra}
            if m == reference or not ref_runs:
                wtl, p = "reference" if m == reference else "-", math.nan
            else:
                paired = [r for r in rs if r.seed in ref_seeds]
                w, t, l, p = paired_wtl(_by_seed(paired, metric), _by_seed([ref_seeds[r.seed] for r in paired], metric), lower) \
                    if paired else (0, 0, 0, math.nan)
                wtl = f"{w}/{t}/{l}"
            q = np.array([_query_totals(r) for r in rs])
            wall = np.nanmean([r.wall_seconds for r in rs])
            lines.append(
                f"| {m} | {_mean_std(final, scale)} | " + "".join(f"{_mean_std(extras[k], scale)} | " for k in extra)
                + f"{wtl} | {'-' if math.isnan(p) else f'{p:.3f}'} | {q[:, 0].mean():.1f} | {q[:, 1].mean():.2f} | "
                f"{q[:, 2].mean():.1f} | {wall:.0f} |"
            )
            final_rows.append({
                "group": label, "method": m, "seeds": len(rs), "metric": metric,
                "final-mean": float(np.nanmean(final)), "final-std": float(np.nanstd(final, ddof=1)) if len(rs) > 1 else math.nan,
                **{f"{k}-mean": float(np.nanmean(v)) for k, v in extras.items()},
                "wtl": wtl, "p-end": p, "query-seconds": float(q[:, 0].mean()), "query-mb": float(q[:, 1].mean()),
                "total-mb": float(q[:, 2].mean()), "run-seconds": float(wall),
            })
        lines += ["", "Where the time of a run goes (s, mean over seeds; client compute is summed over clients):", "",
                  "| method | run | train | client train compute | BN statistics | evaluate | query | client query compute |",
                  "|---|---:|---:|---:|---:|---:|---:|---:|"]
        for m in methods:
            t = {k: np.mean([sum(c.get("seconds", {}).get(k, 0.0) for c in r.cycles) for r in by_method[m]]) for k in TIME_KEYS}
            wall = np.nanmean([r.wall_seconds for r in by_method[m]])
            lines.append(f"| {m} | {wall:.0f} | " + " | ".join(f"{t[k]:.1f}" for k in TIME_KEYS) + " |")
        png = out / f"curves-{_slug(group)}.png"
        plot_curves(by_method, metric, png, f"{manifest.get('name', folder.name)}: {label}")
        plots.append(png)
        lines += ["", f"![learning curves, {label}]({png.name})", ""]
    bad = [r for r in runs if r.status != "completed"]
    if bad:
        lines += ["## Runs not completed", "", "| run | status | error |", "|---|---|---|"]
        lines += [f"| {r.name} | {r.status} | {r.error.replace('|', '/')[:300]} |" for r in sorted(bad, key=lambda r: r.name)]
        lines.append("")
    paths = {"markdown": out / "report.md", "checkpoints": out / "checkpoints.csv", "final": out / "final.csv"}
    paths["markdown"].write_text("\n".join(lines) + "\n")
    for key, rows in (("checkpoints", checkpoint_rows), ("final", final_rows)):
        buf = io.StringIO()
        fields: list[str] = []
        for row in rows:
            fields += [k for k in row if k not in fields]
        writer = csv.DictWriter(buf, fieldnames=fields or ["group"])
        writer.writeheader()
        writer.writerows(rows)
        paths[key].write_text(buf.getvalue())
    for i, png in enumerate(plots):
        paths[f"plot-{i}"] = png
    return paths


def build_parser() -> argparse.ArgumentParser:
    """The command line (the docs' command reference is generated from it)."""
    parser = argparse.ArgumentParser(prog="fal-report", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("folder", help="a sweep folder (with sweep.json) or any folder of runs (results.json)")
    parser.add_argument("--reference", default=None, help="reference method of the paired tests (default: the sweep's)")
    parser.add_argument("--metric", default=None, help="accuracy | balanced-accuracy | mse (default: the sweep's, else by task)")
    parser.add_argument("--output", default=None, help="report folder (default: <folder>/report)")
    parser.add_argument("--compare", default=None,
                        help="grid axis whose values are compared in each table (default: the sweep's, else strategy)")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    folder = Path(args.folder).expanduser()
    if not folder.is_dir():
        print(f"fal-report: no such folder {folder}", file=sys.stderr)
        return 2
    try:
        paths = write_report(folder, reference=args.reference, metric=args.metric,
                             out=Path(args.output) if args.output else None, compare=args.compare)
    except ValueError as err:
        print(f"fal-report: {err}", file=sys.stderr)
        return 2
    print(paths["markdown"].read_text())
    print(f"fal-report: wrote {', '.join(str(p) for p in paths.values())}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
