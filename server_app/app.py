"""The Flower ServerApp: parse the run config once, run the FAL experiment."""

from __future__ import annotations

import re
import time
import traceback
from pathlib import Path

from flwr.app import Context
from flwr.serverapp import Grid, ServerApp

from fal_shared.config import RunConfig
from server_app.checkpoint import Checkpoint
from server_app.experiment import Experiment
from server_app.labels import LabelsPending
from server_app.results import ResultsRecorder
from strategies import resolve_run_config

app = ServerApp()


def resolve_run_name(cfg: RunConfig) -> str:
    if cfg.run_name:
        if not re.fullmatch(r"[A-Za-z0-9._-]+", cfg.run_name):
            raise ValueError(f"run-name: use letters, digits, '.', '_' and '-' only, got {cfg.run_name!r}")
        return cfg.run_name
    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
    return f"{cfg.strategy}-{cfg.dataset.replace(':', '_').replace('/', '_')}-seed{cfg.seed}-{stamp}"


def output_folder(cfg: RunConfig, run_name: str) -> Path:
    return cfg.output_root() / run_name


def explicit_keys(grid: Grid) -> set[str] | None:
    """The run-config keys the user set (``flwr run --run-config``), if the grid knows them.

    Flower's simulation and deployment grids carry the run's override config; a grid without a
    run (tests) gives None, and :func:`strategies.resolve_run_config` then compares with the
    generic defaults.
    """
    try:
        override = grid.run.override_config
    except (NotImplementedError, AttributeError, TypeError):
        return None
    return None if override is None else set(override)


def run_experiment(grid: Grid, run_config: dict) -> dict:
    """Validate the config, run (or resume) the experiment, always leave a results file.

    A run name with a checkpoint in its results folder resumes from it
    (``server_app.checkpoint``); one that completed is refused. The checkpoint
    holds the config with the strategy's defaults applied, so a resumed run
    given the same settings resolves to the same config.
    """
    # bad keys/values fail here, before anything runs; the strategy fills in its own defaults
    cfg, strategy_defaults = resolve_run_config(run_config, explicit_keys(grid))
    run_name = resolve_run_name(cfg)
    folder = output_folder(cfg, run_name)
    checkpoint = Checkpoint(folder)
    resume = checkpoint.load(cfg.to_flower())
    recorder = ResultsRecorder(folder, run_name=run_name, config=cfg.to_flower(),
                               restore=resume["results"] if resume else None)
    recorder.mark("serverapp-main")
    print(f"[FAL] run {run_name}: results in {recorder.folder}", flush=True)
    if strategy_defaults:
        recorder.data["strategy-defaults"] = strategy_defaults
        print(f"[FAL] strategy {cfg.strategy!r} supplies its defaults for keys not set: "
              + " ".join(f"{k}={v!r}" for k, v in strategy_defaults.items()), flush=True)
    try:
        experiment = Experiment(grid, cfg, run_name=run_name, recorder=recorder, checkpoint=checkpoint, resume=resume,
                                strategy_defaults=strategy_defaults)
        return experiment.run()
    except LabelsPending as err:
        recorder.finish("waiting-for-labels", error=str(err))
        print(f"[FAL] run {run_name} STOPPED: {err}", flush=True)
        raise
    except BaseException as err:
        recorder.finish("failed", error=f"{type(err).__name__}: {err}")
        print(f"[FAL] run {run_name} FAILED: {type(err).__name__}: {err}", flush=True)
        traceback.print_exc()
        raise


@app.main()
def main(grid: Grid, context: Context) -> None:
    run_experiment(grid, dict(context.run_config))
