"""``fal-simulate``: run an experiment in Flower's simulation runtime (Ray), fail loudly.

Starts a private SuperLink, runs ``flwr run --stream``, checks the run's
final status and the results file, stops the SuperLink. Exit code 0 only if
the experiment completed.
"""

from __future__ import annotations

import argparse
import math
import os
import sys

from launcher.cli_common import add_run_arguments, launch


def build_parser() -> argparse.ArgumentParser:
    """The command line (the docs' command reference is generated from it)."""
    parser = argparse.ArgumentParser(prog="fal-simulate", description=__doc__)
    add_run_arguments(parser)
    parser.add_argument("--cpus-per-client", type=float, default=1.0,
                        help="Ray CPUs per ClientApp (1 on 2 cores runs two clients at once)")
    parser.add_argument("--num-cpus", type=int, default=None,
                        help="CPUs Ray may give ClientApps (default: the CPUs this process may run on, so "
                             "`taskset -c 0 fal-simulate` runs one ClientApp at a time)")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    cpus = int(args.cpus_per_client) if float(args.cpus_per_client).is_integer() else args.cpus_per_client
    # Ray counts every core of the machine, not the ones this process is pinned to: pinned to one core it
    # started two actors that shared it, each paying the imports (seconds of CPU) and contending
    ray_cpus = args.num_cpus or max(len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1,
                                    math.ceil(float(args.cpus_per_client)))
    return launch(
        args, simulation=True,
        federation_config=lambda cfg: (f"num-supernodes={cfg.num_clients} client-resources-num-cpus={cpus} "
                                       f"init-args-num-cpus={ray_cpus}"),
    )


if __name__ == "__main__":
    sys.exit(main())
