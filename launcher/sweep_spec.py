"""Sweep files: a base run config and a grid, expanded into validated runs (no Ray, no torch here).

A sweep file is TOML::

    [sweep]
    name = "ahfal-mnist-cpu"            # default: the file name without .toml
    configs = ["../ahfal-mnist.toml"]   # run-config override files, relative to this file, applied in order
    runtime = "inprocess"               # inprocess (the real ServerApp loop and ClientApp handlers in one
                                        # process) | simulation (Flower's simulation runtime via fal-simulate)
    cpus-per-run = 1                    # Ray resources of one run; torch threads = cpus-per-run
    gpus-per-run = 0.0                  # e.g. 0.25: four runs share one GPU
    reference = "random"                # the method every other is tested against (paired t-tests)
    compare = "strategy"                # the axis whose values are a table's rows (e.g. "bn-statistics";
                                        # then reference = "bn-statistics=average")

    [base]                              # run-config keys for every run (after the configs)
    train-subset-size = 12000

    [grid]                              # every combination of these values is one run
    strategy = ["random", "entropy", "entropy-local", "ahfal"]
    seed = [0, 1, 2]

    [variants]                          # named methods: a value of the strategy axis that sets several keys
    entropy-local = { strategy = "entropy", query-model = "local" }

The ``strategy`` axis names *methods*: a registered strategy or a variant.
Runs are named from their method and the other axes (``<method>-alpha0.1-seed2``)
and identified by their full run config: a finished run is skipped only when
its recorded config equals the one the sweep would run now.
"""

from __future__ import annotations

import itertools
import re
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from fal_shared.config import ConfigError, RunConfig

__all__ = ["SweepSettings", "Sweep", "RunSpec", "read_sweep", "load_sweep"]


class SweepSettings(BaseModel):
    """The ``[sweep]`` table."""

    model_config = ConfigDict(extra="forbid", populate_by_name=True)

    name: str = ""
    configs: list[str] = Field(default_factory=list)
    runtime: Literal["inprocess", "simulation"] = "inprocess"
    cpus_per_run: float = Field(1.0, alias="cpus-per-run", gt=0)
    gpus_per_run: float = Field(0.0, alias="gpus-per-run", ge=0)
    reference: str = "random"
    compare: str = "strategy"
    metric: Literal["auto", "accuracy", "balanced-accuracy", "mse"] = "auto"
    minority_classes: int = Field(3, alias="minority-classes", ge=1)
    timeout_per_run: float = Field(7 * 24 * 3600.0, alias="timeout-per-run", gt=0)


@dataclass(frozen=True)
class RunSpec:
    """One point of the grid."""

    name: str  # run name: unique in the sweep, safe as a folder name
    method: str  # the value of the strategy axis (a strategy or a variant)
    axes: dict[str, Any]  # the other grid values, seed included
    config: dict[str, Any]  # the complete run-config overrides (output-dir, run-name, state-dir included)

    @property
    def group(self) -> tuple[tuple[str, Any], ...]:
        """What a report table compares within: every axis but the method and the seed."""
        return tuple((k, v) for k, v in self.axes.items() if k != "seed")


@dataclass
class Sweep:
    path: Path
    settings: SweepSettings
    base: dict[str, Any]
    grid: dict[str, list[Any]]
    variants: dict[str, dict[str, Any]]
    runs: list[RunSpec] = field(default_factory=list)

    @property
    def name(self) -> str:
        return self.settings.name or self.path.stem

    def expand(self, output: Path, overrides: dict[str, Any] | None = None) -> list[RunSpec]:
        """Every grid point as a validated run writing under ``output`` (``overrides`` win over the file)."""
        if overrides:
            self.base.update(overrides)
        self.runs = _expand(self, output)
        compare = self.settings.compare
        if compare != "strategy" and compare not in self.grid:
            raise ConfigError(f"{self.path} [sweep] compare: {compare!r} is not a [grid] axis; axes: {', '.join(self.grid)}")
        rows = {r.method if compare == "strategy" else f"{compare}={r.axes[compare]}" for r in self.runs}
        if len(rows) > 1 and self.settings.reference not in rows:
            raise ConfigError(
                f"{self.path} [sweep] reference: {self.settings.reference!r} is not one of the compared "
                f"{'methods' if compare == 'strategy' else 'values'}: {', '.join(sorted(rows))}"
            )
        return self.runs


def _safe(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", text).strip("_") or "x"


def _run_name(method: str, axes: dict[str, Any]) -> str:
    parts = [method] + [f"{k}{v}" for k, v in axes.items() if k != "seed"]
    if "seed" in axes:
        parts.append(f"seed{axes['seed']}")
    return _safe("-".join(str(p) for p in parts))


def read_sweep(path: str | Path) -> Sweep:
    """Read and check a sweep file (no runs yet: see :meth:`Sweep.expand`).

    Raises :class:`ConfigError` naming the file and the table at fault.
    """
    path = Path(path)
    try:
        data = tomllib.loads(path.read_text())
    except FileNotFoundError:
        raise ConfigError(f"sweep file not found: {path}") from None
    except tomllib.TOMLDecodeError as err:
        raise ConfigError(f"{path}: not valid TOML: {err}") from None
    unknown = set(data) - {"sweep", "base", "grid", "variants"}
    if unknown:
        raise ConfigError(f"{path}: unknown table(s) {sorted(unknown)}; a sweep file has [sweep], [base], [grid], [variants]")
    try:
        settings = SweepSettings.model_validate(data.get("sweep", {}))
    except ValidationError as err:
        problems = "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in err.errors())
        raise ConfigError(f"{path} [sweep]: {problems}") from None
    base: dict[str, Any] = {}
    for rel in settings.configs:
        cfg_path = (path.parent / rel).resolve()
        try:
            base.update(tomllib.loads(cfg_path.read_text()))
        except FileNotFoundError:
            raise ConfigError(f"{path} [sweep] configs: no such file {cfg_path}") from None
    base.update(data.get("base", {}))
    grid = {k: (v if isinstance(v, list) else [v]) for k, v in data.get("grid", {}).items()}
    for key, values in grid.items():
        if not values:
            raise ConfigError(f"{path} [grid] {key}: an empty list gives no runs")
    variants = data.get("variants", {})
    for name, table in variants.items():
        if not isinstance(table, dict):
            raise ConfigError(f"{path} [variants] {name}: expected a table of run-config keys")
    return Sweep(path=path, settings=settings, base=base, grid=grid, variants=variants)


def load_sweep(path: str | Path, output: Path, overrides: dict[str, Any] | None = None) -> Sweep:
    """Read a sweep file and expand it into validated runs; every run config is checked before anything starts."""
    sweep = read_sweep(path)
    sweep.expand(output, overrides)
    return sweep


def _expand(sweep: Sweep, output: Path) -> list[RunSpec]:
    from strategies import create_strategy, resolve_run_config  # heavy import, after the file checks

    methods = sweep.grid.get("strategy", [sweep.base.get("strategy", RunConfig().strategy)])
    axes = {k: v for k, v in sweep.grid.items() if k != "strategy"}
    runs: list[RunSpec] = []
    seen: dict[str, RunSpec] = {}
    for method in methods:
        variant = sweep.variants.get(method, {"strategy": method})
        for values in itertools.product(*axes.values()) if axes else [()]:
            point = dict(zip(axes, values))
            config = {**sweep.base, **variant, **point}
            config.setdefault("client-threads", max(1, int(sweep.settings.cpus_per_run)))
            name = _run_name(str(method), point)
            if name in seen:
                raise ConfigError(f"{sweep.path}: two grid points are both named {name!r}; rename a variant")
            config.update({
                "run-name": name,
                "output-dir": str(output / "runs"),
                "state-dir": str(output / "state"),
            })
            try:
                # the sweep file's keys are the ones set; the strategy supplies its defaults for the rest
                # (e.g. fale: num-cycles=10, evaluation="federated"), so every run gets them as set keys
                cfg, _ = resolve_run_config(config, explicit=set(config))
                create_strategy(cfg)
            except (ConfigError, ValueError) as err:
                raise ConfigError(f"{sweep.path}: run {name!r}: {err}") from None
            spec = RunSpec(name=name, method=str(method), axes=point, config=cfg.to_flower())
            seen[name] = spec
            runs.append(spec)
    return runs
