"""``fal-deploy``: run an experiment as a local deployment, one process per role.

Starts one SuperLink and N SuperNodes as separate processes on this machine
(SuperNode i serves ``--node-config "partition-id=i num-partitions=N"`` and
keeps its label ledger in ``<state-dir>``), runs the experiment with
``flwr run``, checks it completed, and stops every process it started. This
is the same app and the same messages as on separate machines; only the
addresses differ (see README "Deployment").
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from fal_shared.config import ConfigError
from launcher.cli_common import add_run_arguments, check_results, fail, keep_log, print_summary, resolve_overrides
from launcher.flower_processes import FlowerEnvironment, RunFailed


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="fal-deploy", description=__doc__)
    add_run_arguments(parser)
    parser.add_argument("--num-supernodes", type=int, default=None,
                        help="SuperNodes to start (default: the run config's num-clients)")
    args = parser.parse_args(argv)
    started = time.time()
    try:
        cfg, overrides = resolve_overrides(args, num_clients=args.num_supernodes)
    except (ConfigError, ValueError, OSError) as err:  # bad config, data missing or corrupt
        return fail(str(err))
    n = args.num_supernodes or cfg.num_clients
    folder = Path(overrides["output-dir"]) / overrides["run-name"]
    with FlowerEnvironment(Path(args.app), simulation=False) as env:
        try:
            env.start_superlink()
            for i in range(n):
                env.start_supernode(i, n, state_dir=Path(overrides["state-dir"]))
            run_id = env.run(overrides, timeout=args.timeout, verbose=args.verbose)
        except (RunFailed, RuntimeError) as err:
            keep_log(env.log_dir / "flwr-run.log", folder)
            return fail(str(err))
        keep_log(env.log_dir / "flwr-run.log", folder)
    try:
        data = check_results(folder)
    except RuntimeError as err:
        return fail(str(err))
    print(f"[FAL] Flower run {run_id} (deployment: 1 SuperLink + {n} SuperNodes)")
    print_summary(data, folder, started)
    return 0


if __name__ == "__main__":
    sys.exit(main())
