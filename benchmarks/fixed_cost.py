"""Where a run's fixed cost goes: a timeline of one launcher run, from its processes and its log.

Runs a launcher (default ``fal-simulate``) as a subprocess with a marker in its environment
(``FAL_RUN_SCOPES``, which every process it starts inherits, Ray's workers included), and meanwhile

* samples ``/proc`` every ``--sample-seconds`` for the processes carrying the marker: when each one
  started (the kernel's start time, 10 ms resolution), when it was last seen, and when its title
  changed (a Ray worker goes ``ray::IDLE`` -> ``ray::ClientAppActor`` -> ``ray::ClientAppActor.run``);
* stamps every line the launcher prints (``--verbose``: the whole Flower log) when it arrives;
* reads the run's ``results.json``: the seconds of each cycle, the ServerApp's ``timeline`` and the
  launcher's ``launcher`` phases (both recorded by the product itself).

It prints the breakdown (seconds from the launcher's start) and the fixed cost = wall time minus the
cycles' own seconds, and writes everything as JSON (``--json``).

    python benchmarks/fixed_cost.py --run-config 'strategy="random" num-cycles=1' --json before.json
    /work/bin/core-slot python benchmarks/fixed_cost.py --config experiments/ahfal-mnist.toml \\
        --run-config 'strategy="random" num-cycles=1 rounds-per-cycle=5 local-epochs=1 data-root="..."'

Linux only (``/proc``).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from launcher.stopping import (  # noqa: E402
    SCOPE_VARIABLE, become_subreaper, process_start_time, reap_orphans, scope_processes, stop_processes,
)

#: what a process is, from the start of its command line (first match wins): a process is classified
#: again whenever its command line changes (a fork of ``flwr-simulation`` that becomes the raylet, a
#: fork of the raylet that becomes an agent, a worker that retitles itself ``ray::IDLE``)
TITLES = [("ray-agent", r"^ray::(DashboardAgent|RuntimeEnvAgent)"), ("ray-worker", r"^ray::")]
KINDS = [
    ("ray-worker", r"default_worker\.py"), ("flwr-ls", r"bin/flwr ls"), ("flwr-run", r"bin/flwr run"),
    ("superlink", r"flower-superlink"), ("superexec", r"flower-superexec"), ("flwr-simulation", r"flwr-simulation"),
    ("supernode", r"flower-supernode"), ("clientapp", r"flwr-clientapp"), ("gcs", r"/gcs_server(\s|$)"),
    ("raylet", r"/raylet(\s|$)"), ("ray-dashboard", r"dashboard/dashboard\.py"), ("ray-agent", r"dashboard/agent\.py"),
    ("ray-monitor", r"autoscaler/_private/monitor\.py"), ("ray-log-monitor", r"log_monitor\.py"),
    ("ray-agent", r"runtime_env/agent/main\.py"),
    ("launcher", r"fal-(simulate|deploy|sweep)|launcher\.(simulate|deploy|sweep)"),
]


def kind_of(cmdline: str) -> str:
    """The kind of a process: its title (Ray's), else its executable and script.

    Patterns are tried on the first word that is not an option, then the first two, and so on: the
    raylet's own command line names ``default_worker.py`` further on, a worker's does near its start.
    """
    for kind, pattern in TITLES:
        if re.search(pattern, cmdline):
            return kind
    words = [word for word in cmdline.split() if not word.startswith("-")][:6]
    for n in range(1, len(words) + 1):
        head = " ".join(words[:n])
        for kind, pattern in KINDS:
            if re.search(pattern, head):
                return kind
    return "other"


_CLK_TCK = os.sysconf("SC_CLK_TCK")


def _cpu_seconds(pid: int) -> float | None:
    """User + system CPU seconds ``pid`` has used so far (its own, not its children's)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
    except OSError:
        return None
    return (int(fields[11]) + int(fields[12])) / _CLK_TCK


def _start_ticks(pid: int) -> int | None:
    """When ``pid`` started, in clock ticks since boot (exact, unlike a wall-clock conversion): half its identity."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return int(f.read().rsplit(")", 1)[1].split()[19])
    except (OSError, IndexError, ValueError):
        return None


def _machine_busy() -> float:
    """CPU seconds the whole machine has been busy since boot (every core; /proc/stat)."""
    with open("/proc/stat") as f:
        values = [int(v) for v in f.readline().split()[1:]]
    idle = values[3] + values[4]  # idle + iowait
    return (sum(values[:8]) - idle) / _CLK_TCK


#: the fixed-cost segments, in order: (name, the event that ends it); the cycles lie between "setup" and "cycles"
SEGMENTS = [
    ("launcher start + validation", "superlink-start"),
    ("SuperLink start", "flwr-run-start"),
    ("flwr run: package + submit", "run-submitted"),
    ("SuperExec -> flwr-simulation -> ServerApp loaded", "serverapp-main"),
    ("Ray init + actors start/import + setup round", "first-round"),
    ("cycles (train, BN, evaluate, query)", "last-cycle"),
    ("ServerApp end + Ray shutdown + flwr run exit", "flwr-run-end"),
    ("status check + stopping the processes + launcher exit", "launcher-end"),
]


def events(procs: list[dict], lines: list[tuple[float, str]], wall: float) -> dict[str, float | None]:
    """The moments that bound the segments, from what both old and new launchers show: processes and log lines."""
    def first(kind: str, key: str = "start") -> float | None:
        times = [p[key] for p in procs if p["kind"] == kind]
        return (min if key == "start" else max)(times) if times else None

    def line(text: str, last: bool = False) -> float | None:
        times = [t for t, l in lines if text in l]
        return (times[-1] if last else times[0]) if times else None

    actor_titles = [t for p in procs if p["kind"] == "ray-worker" for t, title in p["titles"] if "ClientAppActor" in title]
    return {
        "superlink-start": first("superlink"), "flwr-run-start": first("flwr-run"),
        "run-submitted": line("Successfully started run"), "serverapp-main": line("[FAL] run "),
        "ray-head-start": first("gcs"), "first-actor": min(actor_titles) if actor_titles else None,
        "first-round": line("[ROUND 1/"), "last-cycle": line("[FAL] cycle ", last=True),
        "flwr-run-end": first("flwr-run", "end"), "launcher-end": wall,
    }


class Sampler(threading.Thread):
    """Every ``period`` s: the marker's processes, their start, last sighting and title changes."""

    def __init__(self, marker: str, period: float) -> None:
        super().__init__(daemon=True)
        self.marker, self.period = marker, period
        self.procs: dict[tuple[int, float], dict] = {}
        self.stop = threading.Event()

    def run(self) -> None:
        while not self.stop.is_set():
            now = time.time()
            for pid, cmdline in scope_processes(self.marker):
                start, ticks = process_start_time(pid), _start_ticks(pid)
                if start is None or ticks is None:
                    continue
                key = (pid, ticks)
                entry = self.procs.setdefault(key, {"pid": pid, "kind": kind_of(cmdline), "start": start,
                                                    "titles": [], "first-seen": now})
                entry["last-seen"] = now
                entry["cpu"] = _cpu_seconds(pid) or entry.get("cpu", 0.0)
                title = cmdline[:200]
                if not entry["titles"] or entry["titles"][-1][1] != title:
                    entry["titles"].append((now, title))
                    if len(entry["titles"]) > 1 and kind_of(cmdline) != "other":
                        entry["kind"] = kind_of(cmdline)  # it exec'd another program or retitled itself
            reap_orphans()  # orphans of the run come to this process (a subreaper): their CPU time counts
            self.stop.wait(self.period)


def _split_setup(report: dict) -> list[tuple[str, float | None]]:
    """The segments, with Ray/actors/setup cut at the first ClientApp actor (from the sampled titles)."""
    actors = [t for p in report["processes"] for t, title in p["titles"] if "ClientAppActor" in title]
    out = []
    for name, seconds in report["segments"]:
        if name.startswith("Ray init") and actors and seconds is not None:
            first_actor, loaded = min(actors), report["events"]["serverapp-main"]
            out += [("Ray head + worker start + first ClientApp actor", round(first_actor - loaded, 2)),
                    ("ClientApp imports + data + setup round", round(seconds - (first_actor - loaded), 2))]
        else:
            out.append((name, seconds))
    return out


#: the CPU rows of the summary: which process kinds each sums
CPU_GROUPS = [
    ("the launcher", {"launcher"}), ("SuperLink + SuperExec", {"superlink", "superexec"}),
    ("flwr run + flwr ls", {"flwr-run", "flwr-ls"}), ("flwr-simulation (ServerApp)", {"flwr-simulation"}),
    ("Ray workers (ClientApp actors, idle workers)", {"ray-worker"}),
    ("Ray's head (GCS, raylet, agents, dashboard, monitors)",
     {"gcs", "raylet", "ray-agent", "ray-dashboard", "ray-monitor", "ray-log-monitor", "ray-runtime-env-agent"}),
]


def _run_cpu(report: dict) -> float:
    """The run's CPU seconds, summed over its processes (an older timeline's ``cpu-seconds`` was the waited-for total)."""
    if "cpu-seconds-waited-for" in report:
        return report["cpu-seconds"]
    return sum(report["cpu-seconds-by-kind"].values())


def _other_load(report: dict) -> float:
    """Cores the rest of the machine kept busy; an older timeline counted the CPU its waited-for total missed as other load."""
    if "cpu-seconds-waited-for" in report:
        return report["other-load-cores"]
    missed = max(0.0, _run_cpu(report) - report["cpu-seconds"])
    return max(0.0, report["other-load-cores"] - missed / report["wall-seconds"])


def summarize(groups: dict[str, list[dict]]) -> str:
    """Mean (min-max) of every segment and total, per group of runs (e.g. before / after)."""
    def cell(values: list[float]) -> str:
        values = [v for v in values if v is not None]
        if not values:
            return "?"
        mean = sum(values) / len(values)
        return f"{mean:.1f} ({min(values):.1f}-{max(values):.1f})" if len(values) > 1 else f"{mean:.1f}"

    rows: dict[str, dict[str, list]] = {}
    for label, reports in groups.items():
        for r in reports:
            actors = {p["pid"] for p in r["processes"] for _, title in p["titles"] if "ClientAppActor" in title}
            for name, seconds in _split_setup(r) + [
                ("**wall, launcher start to exit**", r["wall-seconds"]),
                ("  of which in the cycles' own phases (train, BN, evaluate, query)", r["cycle-seconds"]),
                ("  fixed cost = wall - cycles' own phases", r["fixed-seconds"]),
                ("**CPU seconds, all processes of the run**", _run_cpu(r)),
                *[(f"  CPU of {name}", sum(v for k, v in r["cpu-seconds-by-kind"].items() if k in kinds))
                  for name, kinds in CPU_GROUPS],
                ("ClientApp actors started", len(actors)),
                ("other workers' load meanwhile (cores)", _other_load(r)),
                ("this benchmark's own CPU (sampling /proc)", r.get("benchmark-cpu-seconds")),
            ]:
                rows.setdefault(name, {}).setdefault(label, []).append(seconds)
    labels = list(groups)
    lines = ["| segment (wall seconds; the CPU rows: CPU seconds) | " + " | ".join(f"{l} ({len(groups[l])} runs)" for l in labels) + " |",
             "|---|" + "---:|" * len(labels)]
    for name, by_label in rows.items():
        lines.append(f"| {name} | " + " | ".join(cell(by_label.get(l, [])) for l in labels) + " |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--launcher", default="simulate", choices=["simulate", "deploy"])
    parser.add_argument("--config", action="append", default=[])
    parser.add_argument("--run-config", default="")
    parser.add_argument("--output", default=None, help="results folder (default: a temporary one)")
    parser.add_argument("--sample-seconds", type=float, default=0.05)
    parser.add_argument("--json", default=None, help="write the whole timeline here")
    parser.add_argument("--source", default=str(REPO),
                        help="run the launcher and app of this source tree (e.g. an older commit, `git archive`d)")
    parser.add_argument("--summarize", nargs="+", metavar="LABEL=A.json,B.json", default=None,
                        help="run nothing: a markdown table of earlier --json timelines, one column per label")
    parser.add_argument("--extra", nargs=argparse.REMAINDER, default=[], help="more launcher arguments")
    args = parser.parse_args(argv)
    if args.summarize:
        print(summarize({label: [json.loads(Path(f).read_text()) for f in files.split(",")]
                         for label, files in (group.split("=", 1) for group in args.summarize)}))
        return 0

    output = Path(args.output or f"/tmp/fal-fixed-cost-{uuid.uuid4().hex[:8]}")
    run_name = "fixed-cost"
    run_config = f'{args.run_config} output-dir="{output}" state-dir="{output}/state" run-name="{run_name}"'
    source = Path(args.source).resolve()
    cmd = [sys.executable, "-m", f"launcher.{args.launcher}", "--app", str(source), "--verbose", "--run-config", run_config]
    for c in args.config:
        cmd += ["--config", c]
    cmd += args.extra
    marker = f"fixed-cost-{uuid.uuid4().hex[:12]}"
    env = {**os.environ, SCOPE_VARIABLE: marker, "PYTHONUNBUFFERED": "1",
           "PYTHONPATH": os.pathsep.join(filter(None, [str(source), os.environ.get("PYTHONPATH")]))}
    # every process of the run that loses its parent is reparented to this one and waited for here, so
    # the CPU time of the whole run is in this process's children's times, whichever launcher runs
    become_subreaper()
    sampler = Sampler(marker, args.sample_seconds)
    sampler.start()
    load_before, busy_before, children_before = os.getloadavg(), _machine_busy(), os.times()
    own_before = children_before.user + children_before.system
    t0 = time.time()
    proc = subprocess.Popen(cmd, cwd=source, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    lines = []
    assert proc.stdout is not None
    for line in proc.stdout:
        lines.append((time.time() - t0, line.rstrip("\n")))
    rc = proc.wait()
    wall = time.time() - t0
    time.sleep(3 * args.sample_seconds)
    sampler.stop.set()
    sampler.join()
    reap_orphans()
    left = scope_processes(marker)  # a launcher that leaves processes behind: say so, stop them (by PID)
    if left:
        stop_processes(lambda: [pid for pid, _ in scope_processes(marker)], grace=10.0)
        reap_orphans()
    children = os.times()
    # every process of the run that was waited for (the launcher reaps the orphans of its run: launcher.stopping)
    waited_cpu = (children.children_user - children_before.children_user) + (children.children_system - children_before.children_system)
    own_cpu = children.user + children.system - own_before  # this benchmark's sampling, on the run's core(s)
    busy = _machine_busy() - busy_before
    load_after = os.getloadavg()
    results = json.loads((output / run_name / "results.json").read_text()) if (output / run_name / "results.json").exists() else {}

    def rel(t: float | None) -> float | None:
        return None if t is None else round(t - t0, 2)

    procs = sorted(sampler.procs.values(), key=lambda p: p["start"])
    timeline = []
    for p in procs:
        timeline.append({
            "kind": p["kind"], "pid": p["pid"], "start": rel(p["start"]), "end": rel(p["last-seen"]), "cpu": p.get("cpu", 0.0),
            "titles": [(rel(t), title) for t, title in p["titles"]],
        })
    cycles = results.get("cycles", [])
    in_cycles = sum(sum(v for k, v in c.get("seconds", {}).items() if k in ("train", "bn-statistics", "evaluate", "query"))
                    for c in cycles)
    cpu_by_kind: dict[str, float] = {}
    for p in procs:
        cpu_by_kind[p["kind"]] = round(cpu_by_kind.get(p["kind"], 0.0) + p.get("cpu", 0.0), 2)
    # each process's own CPU at its last sample (up to --sample-seconds of its end are missed)
    run_cpu = max(sum(p.get("cpu", 0.0) for p in procs), 0.0)
    other_cpu = max(0.0, busy - max(run_cpu, waited_cpu) - own_cpu)
    moments = events(timeline, lines, wall)
    segments, previous = [], 0.0
    for name, event in SEGMENTS:
        at = moments.get(event)
        segments.append((name, None if at is None or previous is None else round(at - previous, 2)))
        previous = at
    cycle_span = dict(segments).get("cycles (train, BN, evaluate, query)")
    report = {
        "command": cmd, "exit-code": rc, "wall-seconds": round(wall, 2), "cycle-seconds": round(in_cycles, 2),
        "fixed-seconds": round(wall - in_cycles, 2),
        "fixed-seconds-outside-cycle-span": None if cycle_span is None else round(wall - cycle_span, 2),
        "cpu-seconds": round(run_cpu, 2), "cpu-seconds-waited-for": round(waited_cpu, 2), "benchmark-cpu-seconds": round(own_cpu, 2), "cpu-seconds-by-kind": dict(sorted(cpu_by_kind.items(), key=lambda kv: -kv[1])),
        "other-load-cores": round(other_cpu / wall, 2), "loadavg-before": load_before, "loadavg-after": load_after,
        "events": moments, "segments": segments, "left-behind": [cmd for _, cmd in left],
        "machine": {"host": platform.node(), "cpus": os.cpu_count(), "affinity": sorted(os.sched_getaffinity(0))},
        "processes": timeline,
        "lines": [(round(t, 2), text) for t, text in lines],
        "serverapp-timeline": {k: rel(v) for k, v in results.get("timeline", {}).items()},
        "launcher-phases": {k: rel(v) for k, v in results.get("launcher", {}).get("phases", {}).items()},
        "cycles": [c.get("seconds", {}) for c in cycles],
    }
    print(f"exit code {rc}; wall {wall:.1f} s; in cycles (train + bn + evaluate + query) {in_cycles:.1f} s; "
          f"fixed cost {wall - in_cycles:.1f} s")
    print(f"CPU of the run: {run_cpu:.1f} s (all its processes, sampled; {waited_cpu:.1f} s in the times of "
          f"the processes waited for); of this benchmark (sampling): {own_cpu:.1f} s; "
          f"other load on the machine meanwhile: "
          f"{other_cpu / wall:.2f} cores; load average {load_before[0]:.2f} before, {load_after[0]:.2f} after")
    print("CPU seconds by process kind (sampled):", json.dumps(report["cpu-seconds-by-kind"]))
    if left:
        print(f"{len(left)} process(es) of the run were left behind after the launcher exited (now stopped):",
              "; ".join(cmd[:60] for _, cmd in left))
    print("\nsegments (wall seconds):")
    for name, seconds in segments:
        print(f"  {name:<56} {'?' if seconds is None else f'{seconds:6.2f}'}")
    print("\nprocesses of the run (s from the launcher's start):")
    for p in timeline:
        changes = "; ".join(f"{t}: {title[:40]}" for t, title in p["titles"][1 if p["kind"] != "other" else 0:4])
        print(f"  {p['kind']:<22} pid {p['pid']:>7}  {p['start']:>7} -> {p['end']:>7}" + (f"  [{changes}]" if changes else ""))
    if report["launcher-phases"]:
        print("\nlauncher phases:", json.dumps(report["launcher-phases"]))
    if report["serverapp-timeline"]:
        print("ServerApp timeline:", json.dumps(report["serverapp-timeline"]))
    keys = ("Successfully started run", "Starting Flower Simulation", "[FAL] run ", "[FAL] cycle", "[FAL] completed",
            "[FAL] Flower run", "[FAL] stopped", "FAILED")
    print("\nlog lines as they arrived:")
    for t, text in lines:
        if any(k in text for k in keys):
            print(f"  {t:7.2f}  {text[:110]}")
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=1))
        print(f"\ntimeline: {args.json}")
    return rc


if __name__ == "__main__":
    sys.exit(main())
