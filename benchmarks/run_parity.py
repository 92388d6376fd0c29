"""Run parity with the authors' code: their scripts and ours at one setting, the same partitions, the curves compared.

A parity spec (``experiments/parity/*.toml``) names a reference repository and its runner
(``benchmarks/parity/<runner>.py``, which runs the authors' unmodified script with its config set and its
phases timed), the setting both sides get (``[shared]``), this project's own run-config keys (``[ours]``),
the methods (their strategy name and our run-config keys) and our arms (``bn-statistics`` average /
recompute). Per seed, the reference run dumps its partition and initial labels as a ``fal-partition/1``
file, and our runs read it (``partition = "file"``), so the two sides train on the same split.

    # every run not yet done, two at a time, lane i pinned to core i (ours wait for their reference run):
    python benchmarks/run_parity.py run experiments/parity/dgitj-fal-mnist.toml --out OUT \\
        --checkout /scratch/FAL --data-root /scratch/data --parallel 2
    python benchmarks/run_parity.py queue ...   # the same runs as commands, one per line
    python benchmarks/run_parity.py theirs SPEC --method random --seed 1 --out OUT --checkout ... --data-root ...
    python benchmarks/run_parity.py ours SPEC --method random --arm average --seed 1 --out OUT --data-root ...
    python benchmarks/run_parity.py report SPEC --out OUT [--markdown table.md] [--plot curves.png]

``report`` (benchmarks/parity/report.py) prints, per method, arm and cycle, the accuracy mean +- sample std
over seeds of both sides, Welch's t-test and Mann-Whitney's U test (two-sided) of ours against theirs, and the
seconds of both sides split into training, query, evaluation, BatchNorm statistics and fixed cost (everything
else in the process: imports, data, partition, setup). ``run`` pins each run to one core (``--prefix``).
"""

from __future__ import annotations

import time

_STARTED = time.perf_counter()  # before the heavy imports: they are part of a run's fixed cost

import argparse  # noqa: E402
import importlib  # noqa: E402
import json  # noqa: E402
import resource  # noqa: E402
import shlex  # noqa: E402
import sys  # noqa: E402
import tomllib  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import Any  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "benchmarks"))

from parity.report import ours_record, report, run_dir, theirs_record  # noqa: E402

def cpu_seconds() -> float:
    """CPU seconds of this process and its children (whole process: interpreter start included)."""
    own, kids = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + kids.ru_utime + kids.ru_stime


def load_spec(path: str | Path) -> dict[str, Any]:
    spec = tomllib.loads(Path(path).read_text())
    for table in ("shared", "reference", "ours", "methods"):
        if table not in spec:
            raise SystemExit(f"{path}: parity spec lacks the [{table}] table")
    spec.setdefault("arms", {"default": {}})
    spec["name"] = Path(path).stem
    return spec


def _check_method(spec: dict[str, Any], method: str) -> dict[str, Any]:
    if method not in spec["methods"]:
        raise SystemExit(f"unknown method {method!r}; the spec has {', '.join(spec['methods'])}")
    return spec["methods"][method]


# ------------------------------------------------------------------------------------------ run one side
def run_theirs(spec: dict[str, Any], method: str, seed: int, out: Path, checkout: str, data_root: str) -> int:
    """The reference runner of the spec, in this process (it imports the authors' modules)."""
    entry = _check_method(spec, method)
    runner = importlib.import_module(f"parity.{spec['reference']['runner']}")
    return runner.main(runner.arguments(spec, entry, seed, run_dir(out, "theirs", method, seed), checkout, data_root))


def our_overrides(spec: dict[str, Any], method: str, arm: str, seed: int, out: Path, data_root: str) -> dict[str, Any]:
    """This project's run config for one run: [ours] + the shared setting + the method + the arm + the partition file."""
    shared, entry = spec["shared"], _check_method(spec, method)
    if arm not in spec["arms"]:
        raise SystemExit(f"unknown arm {arm!r}; the spec has {', '.join(spec['arms'])}")
    source = entry.get("partition-from", method)  # a method without a reference run uses another's partition
    partition = run_dir(out, "theirs", source, seed) / "partition.json"
    if not partition.exists():
        raise SystemExit(f"{partition} does not exist: run the reference side of {source} seed {seed} first")
    initial = {len(c.get("initial-labeled", [])) for c in json.loads(partition.read_text())["clients"]}
    if initial != {shared["initial-per-client"]}:
        raise SystemExit(f"{partition}: initial labels per client {sorted(initial)}, the spec says "
                         f"{shared['initial-per-client']}")
    return {
        **spec["ours"],
        "dataset": shared["dataset"], "data-root": data_root, "seed": seed, "num-clients": shared["clients"],
        "partition": "file", "partition-file": str(partition.resolve()),
        "test-subset-size": shared.get("test-subset", 0),
        "budget-mode": "count", "budget-count": shared["budget-per-client"], "num-cycles": shared["trainings"] - 1,
        "rounds-per-cycle": shared["rounds"], "local-epochs": shared["epochs"], "batch-size": shared["batch"],
        "lr": shared["lr"], "device": "cpu", "client-threads": 1,
        **entry["ours"], **spec["arms"][arm],
        "output-dir": str((out / "ours" / arm).resolve()), "run-name": f"{method}-seed{seed}",
        "state-dir": str((out / "state" / arm).resolve()),
    }


def run_ours(spec: dict[str, Any], method: str, arm: str, seed: int, out: Path, data_root: str) -> int:
    from server_app.inprocess import run_inprocess

    overrides = our_overrides(spec, method, arm, seed, out, data_root)
    folder = Path(overrides["output-dir"]) / overrides["run-name"]
    result = run_inprocess(overrides, num_clients=spec["shared"]["clients"])
    timing = {"wall-total": time.perf_counter() - _STARTED, "cpu-total": cpu_seconds()}
    (folder / "timing.json").write_text(json.dumps(timing))
    accuracy = [round(100 * c["evaluation"]["accuracy"], 2) for c in result["cycles"]]
    print(f"[parity] ours {method} {arm} seed {seed}: {result['status']}, accuracy {accuracy} "
          f"({timing['wall-total']:.0f} s wall, {timing['cpu-total']:.0f} s CPU)")
    return 0 if result["status"] == "completed" else 1


# ------------------------------------------------------------------------------------------ queue
def jobs(spec_path: str, spec: dict[str, Any], out: Path, checkout: str, data_root: str,
         methods: list[str], seeds: list[int], arms: list[str]) -> list[tuple[str, list[str], str | None]]:
    """(name, command, the reference run it needs) of every run not yet done; references first."""
    me = [sys.executable, str(Path(__file__).resolve())]
    common = [str(Path(spec_path).resolve()), "--out", str(out.resolve()), "--data-root", data_root]
    theirs, ours = [], []
    for seed in seeds:
        for method in methods:
            source = spec["methods"][method].get("partition-from", method)
            ref = f"theirs-{source}-seed{seed}"
            if source == method and theirs_record(spec, out, method, seed) is None:
                theirs.append((ref, [*me, "theirs", *common, "--checkout", checkout, "--method", method,
                                     "--seed", str(seed)], None))
            for arm in arms:
                if ours_record(out, arm, method, seed) is None:
                    ours.append((f"ours-{arm}-{method}-seed{seed}", [*me, "ours", *common, "--method", method,
                                 "--arm", arm, "--seed", str(seed)], ref))
    return sorted(theirs + ours, key=lambda job: not job[0].startswith("theirs"))


def run_queue(todo: list[tuple[str, list[str], str | None]], out: Path, parallel: int, prefix: list[str]) -> int:
    """Run the jobs, ``parallel`` at a time, each behind ``prefix`` (e.g. taskset -c {lane}); a run waits for its reference."""
    import subprocess

    logs = out / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    pending, running, done, failed = list(todo), {}, set(), set()
    lanes = list(range(parallel))
    while pending or running:
        for name, (proc, lane) in list(running.items()):
            if proc.poll() is not None:
                (done if proc.returncode == 0 else failed).add(name)
                lanes.append(lane)
                del running[name]
                print(f"[parity] {name}: {'done' if proc.returncode == 0 else f'FAILED (rc {proc.returncode})'} "
                      f"({len(done)} done, {len(failed)} failed, {len(pending)} to go)", flush=True)
        for job in list(pending):
            name, cmd, needs = job
            if needs in failed:
                pending.remove(job)
                failed.add(name)
                print(f"[parity] {name}: skipped, {needs} failed", flush=True)
                continue
            if not lanes or (needs is not None and any(n == needs for n, _, _ in pending) or needs in running):
                continue
            lane = lanes.pop(0)
            argv = [part.format(lane=lane) for part in prefix] + cmd
            with open(logs / f"{name}.log", "w") as log:
                running[name] = (subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT), lane)
            pending.remove(job)
        time.sleep(2)
    return 1 if failed else 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    for name in ("queue", "run", "theirs", "ours", "report"):
        p = sub.add_parser(name)
        p.add_argument("spec", help="experiments/parity/<name>.toml")
        p.add_argument("--out", required=True, help="folder of every run's files")
        if name in ("queue", "run", "theirs", "ours"):
            p.add_argument("--data-root", required=True, help="folder with MNIST/raw/ (FashionMNIST/raw/) unzipped IDX files")
        if name in ("queue", "run", "theirs"):
            p.add_argument("--checkout", required=True, help="the reference repository's working tree (outside this repository)")
        if name in ("theirs", "ours"):
            p.add_argument("--method", required=True)
            p.add_argument("--seed", type=int, required=True)
        if name == "ours":
            p.add_argument("--arm", required=True)
        if name == "run":
            p.add_argument("--parallel", type=int, default=1, help="runs at a time")
            p.add_argument("--prefix", default="taskset -c {lane}",
                           help="command before each run, {lane} = 0..parallel-1 (default: pin lane i to core i); '' for none")
        if name in ("queue", "run"):
            p.add_argument("--methods", nargs="*", help="default: every method of the spec")
            p.add_argument("--seeds", nargs="*", type=int, help="default: the spec's seeds")
            p.add_argument("--arms", nargs="*", help="default: every arm of the spec")
        if name == "report":
            p.add_argument("--markdown", help="also write the table here")
            p.add_argument("--plot", help="also write a PNG of the curves here")
    args = parser.parse_args(argv)
    spec, out = load_spec(args.spec), Path(args.out)
    if args.command in ("queue", "run"):
        todo = jobs(args.spec, spec, out, args.checkout, args.data_root, args.methods or list(spec["methods"]),
                    args.seeds or spec["shared"]["seeds"], args.arms or list(spec["arms"]))
        if args.command == "queue":
            print("\n".join(shlex.join(cmd) for _, cmd, _ in todo))
            return 0
        return run_queue(todo, out, args.parallel, shlex.split(args.prefix))
    if args.command == "theirs":
        return run_theirs(spec, args.method, args.seed, out, args.checkout, args.data_root)
    if args.command == "ours":
        return run_ours(spec, args.method, args.arm, args.seed, out, args.data_root)
    print(report(spec, out, args.markdown, args.plot), end="")
    return 0


if __name__ == "__main__":
    sys.exit(main())
