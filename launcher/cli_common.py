"""Shared command-line handling: run-config overrides, early validation, result checks."""

from __future__ import annotations

import argparse
import json
import shlex
import shutil
import sys
import time
import tomllib
from collections.abc import Callable
from pathlib import Path
from typing import Any

from fal_shared.config import ConfigError, RunConfig, parse_run_config
from launcher.flower_processes import FlowerEnvironment, RunFailed

__all__ = ["add_run_arguments", "resolve_overrides", "check_results", "print_summary", "server_error"]

DEFAULT_NODES = 10  # nodes a launcher starts when neither --num-supernodes nor num-clients says


def add_run_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--app", default=".", help="the Flower app folder (default: .)")
    parser.add_argument("--config", action="append", default=[], metavar="FILE.toml",
                        help="TOML file of run-config overrides (repeatable; later files win)")
    parser.add_argument("--run-config", default="", metavar='"key=value ..."',
                        help="run-config overrides in flwr's syntax; strings in double quotes")
    parser.add_argument("--timeout", type=float, default=3 * 3600, help="seconds before the run is stopped")
    parser.add_argument("--verbose", action="store_true", help="echo the whole Flower log, not only [FAL] lines")


def _parse_pairs(text: str) -> dict[str, Any]:
    pairs: dict[str, Any] = {}
    for token in shlex.split(text, posix=False):
        if "=" not in token:
            raise ConfigError(f"--run-config: expected key=value, got {token!r}")
        key, value = token.split("=", 1)
        try:
            pairs[key] = tomllib.loads(f"v = {value}")["v"]
        except tomllib.TOMLDecodeError:
            pairs[key] = value  # an unquoted string
    return pairs


def resolve_overrides(
    args: argparse.Namespace, *, num_clients: int | None = None
) -> tuple[RunConfig, dict[str, Any], Path]:
    """Merge files and --run-config, validate everything before any process starts.

    Fills in ``run-name``, ``output-dir`` and ``state-dir`` so the launcher knows
    where the results land, and ``num-clients``: a launcher starts the nodes itself,
    so the run waits for exactly that many (``num_clients``, else the config's
    num-clients, else :data:`DEFAULT_NODES`). Returns the config, the overrides
    and the results folder.
    """
    overrides: dict[str, Any] = {}
    for path in args.config:
        try:
            overrides.update(tomllib.loads(Path(path).read_text()))
        except FileNotFoundError:
            raise ConfigError(f"--config: no such file {path}") from None
    overrides.update(_parse_pairs(args.run_config))
    if num_clients is not None:
        overrides["num-clients"] = num_clients  # the processes started decide how many clients there are
    elif not overrides.get("num-clients"):
        overrides["num-clients"] = DEFAULT_NODES
    parse_run_config(overrides)  # bad keys and values fail here, before the heavy imports
    from server_app.app import output_folder, resolve_run_name  # heavy imports after cheap checks
    from strategies import create_strategy, resolve_run_config

    # the keys given here are the ones flwr run passes on as the run's override config, so the
    # ServerApp resolves the strategy's own defaults the same way
    cfg, _ = resolve_run_config(overrides, explicit=set(overrides))
    create_strategy(cfg)  # unknown strategy / unsupported task / a value the strategy cannot run with fail here
    from fal_shared.experiment_data import check_data
    from fal_shared.models import check_model_fits

    test = check_data(cfg)  # a missing or corrupt data (or partition) file fails here, before any Flower process starts
    check_model_fits(cfg.resolved_model(), input_shape=test.input_shape, num_outputs=test.num_classes, dataset=cfg.dataset)
    check_campaign(cfg)  # audit samples that do not fit a site, a tracker that cannot be reached
    run_name = resolve_run_name(cfg)
    folder = output_folder(cfg, run_name).resolve()
    overrides.update({
        "run-name": run_name,
        "output-dir": str(folder.parent),
        "state-dir": str(cfg.state_root()),
    })
    return resolve_run_config(overrides, explicit=set(overrides))[0], overrides, folder


def check_campaign(cfg: RunConfig) -> None:
    """Raise ValueError for an audit sample that does not fit some site's data, or a tracker that cannot work."""
    from server_app.tracking import check_tracker

    if cfg.audit_on:
        from fal_shared.experiment_data import client_data

        sizes = {p: len(client_data(cfg, p, cfg.num_clients).ids) for p in range(cfg.num_clients)}
        problem = cfg.audit_size_error(sizes)
        if problem:
            raise ValueError(problem)
    check_tracker(cfg)


def check_results(folder: Path) -> dict[str, Any]:
    path = folder / "results.json"
    if not path.exists():
        raise RuntimeError(f"the run wrote no results file ({path}); the ServerApp failed before it started")
    data = json.loads(path.read_text())
    if data["status"] != "completed":
        raise RuntimeError(f"the run ended as {data['status']!r}: {data.get('error')}")
    return data


def server_error(folder: Path, log: Path) -> str | None:
    """The ServerApp's own error message of a failed run: from its results file, else its log."""
    try:
        data = json.loads((folder / "results.json").read_text())
        if data.get("status") == "failed" and data.get("error"):
            return str(data["error"])
    except (OSError, ValueError):
        pass
    try:
        lines = log.read_text(errors="replace").splitlines()
    except OSError:
        return None
    for line in reversed(lines):  # the ServerApp prints "[FAL] run <name> FAILED: <error>"
        if "[FAL] run" in line and "FAILED:" in line:
            return line.split("FAILED:", 1)[1].strip()
    for line in reversed(lines):  # else the last exception line of a traceback
        stripped = line.strip()
        if stripped and ("Error:" in stripped or "Exception:" in stripped) and not stripped.startswith("File "):
            return stripped
    return None


def print_summary(data: dict[str, Any], folder: Path, started: float) -> None:
    final = data["cycles"][-1]["evaluation"]
    metric = f"MSE {final['mse']:.4f}" if "mse" in final else f"accuracy {final['accuracy']:.4f}"
    print(f"[FAL] completed {len(data['cycles'])} cycles in {time.time() - started:.0f} s; final {metric}")
    print(f"[FAL] results: {folder / 'results.json'} and {folder / 'cycles.csv'}")


def keep_log(log: Path, folder: Path) -> None:
    """Keep the Flower log beside the results (the private Flower home is deleted)."""
    if log.exists():
        folder.mkdir(parents=True, exist_ok=True)
        shutil.copy(log, folder / "flower.log")
        print(f"[FAL] Flower log: {folder / 'flower.log'}")


def fail(message: str) -> int:
    print(f"[FAL] FAILED: {message}", file=sys.stderr)
    return 1


def launch(
    args: argparse.Namespace,
    *,
    simulation: bool,
    num_clients: int | None = None,
    federation_config: Callable[[RunConfig], str | None] = lambda cfg: None,
    start_nodes: Callable[[FlowerEnvironment, RunConfig, dict[str, Any]], None] = lambda env, cfg, o: None,
    label: str = "",
    tls: bool = False,
) -> int:
    """Validate, start the Flower processes, run, check, stop everything; the exit code."""
    started = time.time()
    try:
        cfg, overrides, folder = resolve_overrides(args, num_clients=num_clients)
    except (ConfigError, ValueError, OSError) as err:  # bad config, data missing or corrupt
        return fail(str(err))
    with FlowerEnvironment(Path(args.app), simulation=simulation, tls=tls) as env:
        try:
            env.start_superlink()
            start_nodes(env, cfg, overrides)
            run_id = env.run(overrides, federation_config=federation_config(cfg), timeout=args.timeout, verbose=args.verbose)
        except (RunFailed, RuntimeError) as err:
            cause = server_error(folder, env.log_dir / "flwr-run.log")
            return fail(str(err) + (f"\n[FAL] the ServerApp's error: {cause}" if cause else ""))
        finally:
            keep_log(env.log_dir / "flwr-run.log", folder)
    try:
        data = check_results(folder)
    except RuntimeError as err:
        return fail(str(err))
    print(f"[FAL] Flower run {run_id}" + (f" ({label.format(n=cfg.num_clients)})" if label else ""))
    print_summary(data, folder, started)
    return 0
