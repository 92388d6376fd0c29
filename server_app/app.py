"""The Flower ServerApp: parse the run config once, run the FAL experiment."""

from __future__ import annotations

import re
import time
import traceback
from pathlib import Path

from flwr.app import Context
from flwr.serverapp import Grid, ServerApp

from fal_shared.config import RunConfig, parse_run_config
from server_app.checkpoint import Checkpoint
from server_app.experiment import Experiment
from server_app.labels import LabelsPending
from server_app.results import ResultsRecorder

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


def run_experiment(grid: Grid, run_config: dict) -> dict:
    """Validate the config, run (or resume) the experiment, always leave a results file.

    A run name with a checkpoint in its results folder resumes from it
    (``server_app.checkpoint``); one that completed is refused.
    """
    cfg = parse_run_config(run_config)  # bad keys/values fail here, before anything runs
    run_name = resolve_run_name(cfg)
    folder = output_folder(cfg, run_name)
    checkpoint = Checkpoint(folder)
    resume = checkpoint.load(cfg.to_flower())
    recorder = ResultsRecorder(folder, run_name=run_name, config=cfg.to_flower(),
                               restore=resume["results"] if resume else None)
    print(f"[FAL] run {run_name}: results in {recorder.folder}", flush=True)
    try:
        experiment = Experiment(grid, cfg, run_name=run_name, recorder=recorder, checkpoint=checkpoint, resume=resume)
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
