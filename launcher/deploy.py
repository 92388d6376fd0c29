"""``fal-deploy``: run an experiment as a local deployment, one process per role.

Starts one SuperLink and N SuperNodes as separate processes on this machine
(SuperNode i serves ``--node-config "partition-id=i num-partitions=N"`` and
keeps its label ledger in ``<state-dir>``), runs the experiment with
``flwr run``, checks it completed, and stops every process it started. This
is the same app and the same messages as on separate machines; only the
addresses differ (see the docs: Deploy sites). ``--tls`` runs it as a site
should: TLS with a private CA, and SuperNode authentication (each SuperNode
has its own key pair, registered with the SuperLink before it connects).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from launcher.cli_common import add_run_arguments, launch


def build_parser() -> argparse.ArgumentParser:
    """The command line (the docs' command reference is generated from it)."""
    parser = argparse.ArgumentParser(prog="fal-deploy", description=__doc__)
    add_run_arguments(parser)
    parser.add_argument("--num-supernodes", type=int, default=None,
                        help="SuperNodes to start (default: the run config's num-clients, else 10)")
    parser.add_argument("--tls", action="store_true",
                        help="TLS (a private CA made for this run) and SuperNode authentication")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)

    def start_nodes(env, cfg, overrides) -> None:
        for i in range(cfg.num_clients):
            env.start_supernode(i, cfg.num_clients, state_dir=Path(overrides["state-dir"]))

    return launch(
        args, simulation=False, num_clients=args.num_supernodes, start_nodes=start_nodes,
        label="deployment: 1 SuperLink + {n} SuperNodes" + (", TLS, SuperNode authentication" if args.tls else ""),
        tls=args.tls,
    )


if __name__ == "__main__":
    sys.exit(main())
