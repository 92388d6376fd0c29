"""Collect the runs of a parity spec (both sides) and print the comparison (``run_parity.py report``).

Reads ``<out>/theirs/<method>-seed<s>/reference.json`` (the reference runners) and
``<out>/ours/<arm>/<method>-seed<s>/{results.json,timing.json}`` (this project, completed runs only), and prints

* the curves: one row per method, arm and cycle: labeled count and fraction, mean +- sample std over seeds of
  theirs and ours, ours - theirs, and two two-sided tests of ours against theirs: Welch's t-test (the two sides'
  spreads differ, up to 3x here, so no equal-variance t-test) and Mann-Whitney's U (no normality assumed; with
  5 + 5 seeds its smallest possible p is 0.008, so it can only confirm a large, consistent gap);
* the seconds: per side and arm, the mean over seeds of training, query, evaluation, BatchNorm statistics
  (ours, recompute) and fixed cost (everything else in the process: interpreter, imports, data, partition,
  in-process Flower), wall seconds per phase, whole-process wall and CPU seconds;
* a summary: one row per method and arm, the per-cycle means and Welch p (the run-parity column of the parity
  table in docs/results/parity-runs.md);
* our arms against the spec's first arm (what ``bn-statistics`` or ``model`` alone changes).

Arms without a completed run are left out.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

PHASES = ("train", "query", "evaluate", "bn-statistics")


def run_dir(out: Path, side: str, method: str, seed: int) -> Path:
    return out / side / f"{method}-seed{seed}"


def theirs_record(spec: dict[str, Any], out: Path, method: str, seed: int) -> dict[str, Any] | None:
    path = run_dir(out, "theirs", method, seed) / "reference.json"
    if not path.exists():
        return None
    ref = json.loads(path.read_text())
    trainings = spec["shared"]["trainings"]
    summary = ref["seconds"]["summary"]  # the runner's split; its unused last query is left out of the total
    seconds = {"train": summary["train"], "query": summary["query"], "evaluate": summary["evaluate"],
               "bn-statistics": 0.0, "total": ref["seconds"]["wall-total"] - summary["unused-query"],
               "cpu-total": ref["seconds"]["cpu-total"], "unused-query": summary["unused-query"]}
    return {"accuracy": ref["accuracy"][:trainings], "labeled": ref["labeled"][:trainings], "seconds": seconds,
            "partition-file": ref.get("partition-file")}


def ours_record(out: Path, arm: str, method: str, seed: int) -> dict[str, Any] | None:
    folder = out / "ours" / arm / f"{method}-seed{seed}"
    if not (folder / "results.json").exists() or not (folder / "timing.json").exists():
        return None
    res = json.loads((folder / "results.json").read_text())
    if res.get("status") != "completed":
        return None
    timing = json.loads((folder / "timing.json").read_text())
    seconds = {p: float(sum(c.get("seconds", {}).get(p, 0.0) for c in res["cycles"])) for p in PHASES}
    seconds.update(total=timing["wall-total"], **{"cpu-total": timing["cpu-total"]})
    return {"accuracy": [100 * c["evaluation"]["accuracy"] for c in res["cycles"]],
            "labeled": [c["labeled"] for c in res["cycles"]],
            "fraction": [c.get("labeled-fraction") for c in res["cycles"]], "seconds": seconds}


def collect(spec: dict[str, Any], out: Path) -> dict[str, Any]:
    """{method: {"theirs": {seed: record}, "ours-<arm>": {seed: record}}} of every completed run."""
    seeds = spec["shared"]["seeds"]
    data: dict[str, Any] = {}
    for method in spec["methods"]:
        theirs = {s: r for s in seeds if (r := theirs_record(spec, out, method, s))}
        arms = {arm: {s: r for s in seeds if (r := ours_record(out, arm, method, s))} for arm in spec["arms"]}
        data[method] = {"theirs": theirs, **{f"ours-{a}": v for a, v in arms.items()}}
    return data


def pool_size(out: Path, data: dict[str, Any]) -> int | None:
    """Training samples over all clients, from any run's partition file (the same size for every seed)."""
    for sides in data.values():
        for r in sides["theirs"].values():
            if r.get("partition-file") and Path(r["partition-file"]).exists():
                return sum(len(c["ids"]) for c in json.loads(Path(r["partition-file"]).read_text())["clients"])
    return None


def tests(a: list[float], b: list[float]) -> tuple[float, float]:
    """Two-sided p of Welch's t-test and of Mann-Whitney's U (nan with fewer than 2 per side)."""
    from scipy import stats

    if len(a) < 2 or len(b) < 2:
        return float("nan"), float("nan")
    if np.std(a) == 0 and np.std(b) == 0:
        return (1.0, 1.0) if np.mean(a) == np.mean(b) else (0.0, float(stats.mannwhitneyu(a, b).pvalue))
    return float(stats.ttest_ind(a, b, equal_var=False).pvalue), float(stats.mannwhitneyu(a, b).pvalue)


def _ms(values: list[float]) -> str:
    if not values:
        return "-"
    return f"{np.mean(values):.1f} +- {np.std(values, ddof=1):.1f}" if len(values) > 1 else f"{values[0]:.1f}"


def _p(p: float) -> str:
    if np.isnan(p):
        return "-"
    return ("< 0.001" if p < 0.001 else f"{p:.3f}") + (" *" if p < 0.05 else "")


def _column(records: dict[int, dict[str, Any]], i: int) -> list[float]:
    return [r["accuracy"][i] for r in records.values() if len(r["accuracy"]) > i]


def _compared(spec: dict[str, Any], data: dict[str, Any]):
    """(method, arm, theirs, ours) of every arm with at least one completed run."""
    for method, sides in data.items():
        for arm in spec["arms"]:
            if sides[f"ours-{arm}"]:
                yield method, arm, sides["theirs"], sides[f"ours-{arm}"]


def _curve_rows(spec: dict[str, Any], data: dict[str, Any], pool: int | None) -> list[str]:
    rows = ["| method | arm | cycle | labeled (fraction) | n theirs / ours | theirs (%) | ours (%) | ours - theirs | "
            "p Welch | p Mann-Whitney |", "|---|---|---|---|---|---|---|---|---|---|"]
    for method, arm, theirs, ours in _compared(spec, data):
        for i in range(spec["shared"]["trainings"]):
            a, b = _column(ours, i), _column(theirs, i)
            counts = {r["labeled"][i] for r in (*ours.values(), *theirs.values()) if len(r["labeled"]) > i}
            labeled = "/".join(str(n) for n in sorted(counts))
            if pool and len(counts) == 1:
                labeled += f" ({100 * next(iter(counts)) / pool:.0f} %)"
            diff = f"{np.mean(a) - np.mean(b):+.1f}" if a and b else "-"
            pw, pm = tests(a, b)
            rows.append(f"| {method} | {arm} | {i} | {labeled} | {len(b)} / {len(a)} | {_ms(b)} | {_ms(a)} | "
                        f"{diff} | {_p(pw)} | {_p(pm)} |")
    return rows


def mean_seconds(records: dict[int, dict[str, Any]]) -> dict[str, float]:
    mean = {k: float(np.mean([r["seconds"][k] for r in records.values()])) for k in (*PHASES, "total", "cpu-total")}
    mean["fixed"] = mean["total"] - sum(mean[p] for p in PHASES)
    return mean


def _time_rows(spec: dict[str, Any], data: dict[str, Any]) -> list[str]:
    rows = ["| method | side | n | training | query | evaluation | BN statistics | fixed | total wall | total CPU |",
            "|---|---|---|---|---|---|---|---|---|---|"]
    for method, sides in data.items():
        for side, records in sides.items():
            if not records:
                continue
            m = mean_seconds(records)
            bn = f"{m['bn-statistics']:.0f}" if m["bn-statistics"] else "-"
            rows.append(f"| {method} | {side} | {len(records)} | {m['train']:.0f} | {m['query']:.0f} | {m['evaluate']:.0f} | "
                        f"{bn} | {m['fixed']:.0f} | {m['total']:.0f} | {m['cpu-total']:.0f} |")
    return rows


def _totals(data: dict[str, Any]) -> str:
    """Runs, wall and CPU hours of each side over everything collected."""
    parts = []
    for side in ("theirs", "ours"):
        runs = [r for sides in data.values() for name, recs in sides.items() if name.split("-")[0] == side
                for r in recs.values()]
        wall, cpu = (sum(r["seconds"][k] for r in runs) / 3600 for k in ("total", "cpu-total"))
        parts.append(f"{side}: {len(runs)} runs, {wall:.2f} h wall, {cpu:.2f} h CPU")
    return "All runs collected: " + "; ".join(parts) + "."


def _summary_rows(spec: dict[str, Any], data: dict[str, Any]) -> list[str]:
    rows = ["| method | arm | accuracy per cycle, theirs | ours | p Welch per cycle | s ours / theirs (wall) |",
            "|---|---|---|---|---|---|"]
    n = spec["shared"]["trainings"]

    def curve(records: dict[int, dict[str, Any]]) -> str:
        return " / ".join(f"{np.mean(_column(records, i)):.1f}" if _column(records, i) else "-" for i in range(n))

    for method, arm, theirs, ours in _compared(spec, data):
        ps = " / ".join(_p(tests(_column(ours, i), _column(theirs, i))[0]) for i in range(n))
        t_theirs = f"{mean_seconds(theirs)['total']:.0f}" if theirs else "-"
        rows.append(f"| {method} | {arm} | {curve(theirs) if theirs else '-'} | {curve(ours)} | {ps} | "
                    f"{mean_seconds(ours)['total']:.0f} / {t_theirs} |")
    return rows


def _arm_rows(spec: dict[str, Any], data: dict[str, Any]) -> list[str]:
    """Each further arm against the spec's first (ours vs ours: what one setting changes), per cycle."""
    first, *others = list(spec["arms"])
    rows = [f"| method | arm vs {first} | " + " | ".join(f"cycle {i}: difference (p Welch)"
                                                       for i in range(spec["shared"]["trainings"])) + " |",
            "|---|---|" + "---|" * spec["shared"]["trainings"]]
    for method, sides in data.items():
        base = sides[f"ours-{first}"]
        for arm in others:
            ours = sides[f"ours-{arm}"]
            if not ours or not base:
                continue
            cells = [f"{np.mean(_column(ours, i)) - np.mean(_column(base, i)):+.1f} "
                     f"({_p(tests(_column(ours, i), _column(base, i))[0])})" for i in range(spec["shared"]["trainings"])]
            rows.append(f"| {method} | {arm} | " + " | ".join(cells) + " |")
    return rows


def report(spec: dict[str, Any], out: Path, markdown: str | None = None, plot: str | None = None) -> str:
    data = collect(spec, out)
    pool = pool_size(out, data)
    lines = [
        f"Parity spec `{spec['name']}` against {spec['reference']['repository']} {spec['reference']['commit']}: "
        "the server model's test accuracy (%) after each cycle's training, mean +- sample std over seeds; "
        "p: two-sided, ours vs theirs (* p < 0.05).", "",
        *_curve_rows(spec, data, pool), "",
        "Seconds per run, mean over seeds (one pinned core each; wall per phase, fixed = total wall - the phases):", "",
        *_time_rows(spec, data), "", _totals(data), "",
        "Summary (per-cycle means; p Welch per cycle; mean total wall seconds):", "",
        *_summary_rows(spec, data), "",
        "Our arms against each other (one setting changed, the same partitions):", "",
        *_arm_rows(spec, data), "",
        "Per seed (accuracy per cycle):", "",
    ]
    for method, sides in data.items():
        for side, records in sides.items():
            for seed, r in sorted(records.items()):
                lines.append(f"- {method} {side} seed {seed}: " + ", ".join(f"{v:.1f}" for v in r["accuracy"]))
    text = "\n".join(lines) + "\n"
    if markdown:
        Path(markdown).write_text(text)
    (out / f"parity-{spec['name']}.json").write_text(json.dumps(data, indent=1, default=str))
    if plot:
        _plot(spec, data, plot, pool)
    return text


def _plot(spec: dict[str, Any], data: dict[str, Any], path: str, pool: int | None) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    methods = list(data)
    fig, axes = plt.subplots(1, len(methods), figsize=(3.4 * len(methods), 3.0), sharey=True, squeeze=False)
    n = spec["shared"]["trainings"]
    for ax, method in zip(axes[0], methods):
        for side, records in data[method].items():
            acc = np.array([r["accuracy"][:n] for r in records.values() if len(r["accuracy"]) >= n])
            if not len(acc):
                continue
            labeled = next(iter(records.values()))["labeled"][:n]
            x = 100 * np.array(labeled) / pool if pool else np.arange(n)
            mean, std = acc.mean(0), acc.std(0, ddof=1) if len(acc) > 1 else np.zeros(n)
            style = {"color": "black", "lw": 2} if side == "theirs" else {}
            ax.plot(x, mean, marker="o", ms=3, label=f"{side} (n={len(acc)})", **style)
            ax.fill_between(x, mean - std, mean + std, alpha=0.12, **({"color": "black"} if side == "theirs" else {}))
        ax.set_title(f"{spec['name']}: {method}", fontsize=8)
        ax.set_xlabel("labeled (%)" if pool else "cycle")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=6)
    axes[0][0].set_ylabel("test accuracy (%)")
    fig.tight_layout()
    fig.savefig(path, dpi=90)
