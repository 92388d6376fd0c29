"""``fal-simulate``: run an experiment in Flower's simulation runtime (Ray), fail loudly.

Starts a private SuperLink, runs ``flwr run --stream``, checks the run's
final status and the results file, stops the SuperLink. Exit code 0 only if
the experiment completed.
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
    parser = argparse.ArgumentParser(prog="fal-simulate", description=__doc__)
    add_run_arguments(parser)
    parser.add_argument("--cpus-per-client", type=float, default=1.0,
                        help="Ray CPUs per ClientApp (1 on 2 cores runs two clients at once)")
    args = parser.parse_args(argv)
    started = time.time()
    try:
        cfg, overrides = resolve_overrides(args)
    except (ConfigError, ValueError, OSError) as err:  # bad config, data missing or corrupt
        return fail(str(err))
    folder = Path(overrides["output-dir"]) / overrides["run-name"]
    cpus = int(args.cpus_per_client) if float(args.cpus_per_client).is_integer() else args.cpus_per_client
    federation = f"num-supernodes={cfg.num_clients} client-resources-num-cpus={cpus}"
    with FlowerEnvironment(Path(args.app), simulation=True) as env:
        try:
            env.start_superlink()
            run_id = env.run(overrides, federation_config=federation, timeout=args.timeout, verbose=args.verbose)
        except (RunFailed, RuntimeError) as err:
            keep_log(env.log_dir / "flwr-run.log", folder)
            return fail(str(err))
        keep_log(env.log_dir / "flwr-run.log", folder)
    try:
        data = check_results(folder)
    except RuntimeError as err:
        return fail(str(err))
    print(f"[FAL] Flower run {run_id}")
    print_summary(data, folder, started)
    return 0


if __name__ == "__main__":
    sys.exit(main())
