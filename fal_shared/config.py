"""The run configuration: one typed, validated, documented source of truth.

Flower passes run config as a flat dict of scalars (``[tool.flwr.app.config]``
in ``pyproject.toml``, overridden with ``flwr run . --run-config``). Both the
ServerApp and the ClientApp parse it into :class:`RunConfig` here, so every
key has one name, type, unit, default and source.

Method-specific settings live in their own mixin classes (``ahfal_*``,
``fairfal_*``, ...) which :class:`RunConfig` inherits; a method adds its
settings by adding a mixin; the pyproject table is generated from the model
(``python -m fal_shared.config --write``, checked by tests/test_config.py) and
so is the docs' run-config reference page (at docs build time, from
:func:`settings_table`), so code, pyproject and docs cannot drift.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path
from typing import Any, Literal

from pydantic import ValidationError, model_validator

from fal_shared.settings.ahfal import AhfalSettings
from fal_shared.settings.baselines import BaselineSettings
from fal_shared.settings.campaign import CampaignSettings
from fal_shared.settings.common import SettingsBase as _Base
from fal_shared.settings.common import setting
from fal_shared.settings.fairfal import FairfalSettings
from fal_shared.settings.fale import FaleSettings
from fal_shared.settings.feal import FealSettings
from fal_shared.settings.kafal import KafalSettings
from fal_shared.settings.failures import FailureSettings
from fal_shared.settings.labeling import LabelingSettings, NodeLabelingConfig
from fal_shared.settings.regression import RegressionBaselineSettings

__all__ = [
    "ConfigError",
    "RunConfig",
    "CLASSIFICATION_DATASETS",
    "REGRESSION_DATASETS",
    "parse_run_config",
    "settings_table",
]

CLASSIFICATION_DATASETS = ("digits", "mnist", "fashion-mnist", "cifar10", "cifar100", "svhn")
REGRESSION_DATASETS = ("diabetes", "protein", "kegg-undirected")


class ConfigError(ValueError):
    """A run-config value is invalid; the message names the key and the allowed values."""


class ExperimentSettings(_Base):
    """What is learned, from which data, split how."""

    strategy: str = setting("entropy", "strategy", "Query strategy, by registry name (see the strategies table).")
    dataset: str = setting(
        "digits", "dataset",
        "Dataset name: classification " + ", ".join(CLASSIFICATION_DATASETS)
        + "; regression " + ", ".join(REGRESSION_DATASETS) + ", or csv:<path>[:<target column>].",
    )
    data_root: str = setting("", "data-root", "Folder holding the dataset files (not needed for digits/diabetes).", unit="path")
    model: str = setting(
        "auto", "model",
        "Model: auto, resnet8, preact-resnet8 (the AHFAL reference code's pre-activation ResNet-8), cnn4conv, "
        "mobilenetv2, small-cnn, mlp, linear. auto = small-cnn for digits, cnn4conv for (fashion-)mnist, resnet8 for "
        "cifar/svhn, linear for regression.",
    )
    seed: int = setting(0, "seed", "Seed of partitions, initial labels, model inits, shuffles and selections.")
    num_clients: int = setting(
        0, "num-clients",
        "Clients (SuperNodes) the experiment starts with; each serves its own partition. 0 = the federation the "
        "nodes declare: the server waits up to node-wait-seconds for a node of every partition 0..num-partitions-1 "
        "(their node config; in simulation num-supernodes) and starts with those connected (see train-min-fraction). "
        "N > 0 = exactly N nodes must connect.", ge=0,
    )
    partition: Literal["iid", "dirichlet", "dirichlet-balanced", "file"] = setting(
        "dirichlet", "partition",
        "Split of the training set over clients: iid, dirichlet (label Dirichlet, Hsu et al. 2019), "
        "dirichlet-balanced (equal-size clients, LoGo/FairFAL dir_balance), file (the clients' samples, and "
        "optionally their initial labels, read from partition-file).",
        source="Hsu et al. 2019; LoGo util/data_simulator.py",
    )
    partition_file: str = setting(
        "", "partition-file",
        "With partition=file: absolute path of a fal-partition/1 JSON file naming each client's training sample "
        "ids (positions in the training split) and optionally its initial labeled ids, which then replace the "
        "seeded initial-labeled-fraction draw; an agreed split, or another code base's (benchmarks/run_parity.py). "
        "Checked before any process starts (fal-simulate, fal-sweep) and by every client.",
        unit="path", source="fal_shared/data/partition_file.py (format)",
    )
    alpha: float = setting(0.5, "alpha", "Dirichlet concentration over labels (smaller = more non-IID).", source="AHFAL 0.1-1.0; FairFAL 0.1/100")
    long_tail_factor: float = setting(
        1.0, "long-tail-factor",
        "Global imbalance applied to the training set before partitioning: n_max/n_min of an exponential "
        "profile; 1 = none.", unit="ratio", source="FairFAL --imb_ratio 0.05 = factor 20",
    )
    train_subset_size: int = setting(
        0, "train-subset-size",
        "Use a seeded random subset of this many training samples (before long-tail and partitioning), "
        "for CPU-sized schedules; 0 = the whole training set.", unit="samples", ge=0,
    )
    test_subset_size: int = setting(
        0, "test-subset-size",
        "Classification: evaluate on a seeded random subset of this many test samples (CPU-sized runs); 0 = the whole test set.",
        unit="samples", ge=0,
    )
    test_fraction: float = setting(0.2, "test-fraction", "Regression: uniform held-out test fraction.", unit="fraction", source="FALE Sec. 5.1")
    regression_alpha: float = setting(5.0, "regression-alpha", "Regression: Dirichlet concentration over target bins per client.", source="FALE Sec. 5.1")


class ScheduleSettings(_Base):
    """Labels, budgets and the cycle schedule."""

    initial_labeled_fraction: float = setting(
        0.1, "initial-labeled-fraction", "Random, seeded fraction of each client's data labeled before the first cycle.",
        unit="fraction of the client's data", source="AHFAL 10%; LoGo/FairFAL 5%; FALE regression 1%",
    )
    budget_mode: Literal["fraction", "count"] = setting(
        "fraction", "budget-mode", "Per-cycle budget per client: a fraction of its data, or an absolute count."
    )
    budget_fraction: float = setting(
        0.05, "budget-fraction", "Labels bought per client per query, as a fraction of the client's data (rounded up).",
        unit="fraction of the client's data", source="AHFAL/LoGo/FairFAL/KAFAL 5%",
    )
    budget_count: int = setting(0, "budget-count", "Labels bought per client per query when budget-mode=count.", unit="samples", ge=0)
    num_cycles: int = setting(
        3, "num-cycles", "Number of query phases. The run trains and evaluates num-cycles+1 times "
        "(initial labels, then after each query).", ge=0,
    )
    rounds_per_cycle: int = setting(10, "rounds-per-cycle", "FedAvg rounds per cycle (R).", unit="rounds", source="papers: 100; AHFAL MNIST 10", ge=1)
    model_init: Literal["reinit", "continue"] = setting(
        "reinit", "model-init", "Re-initialise the global model every cycle (LoGo/FairFAL/KAFAL protocol) or continue from the last cycle.",
        source="spec Sec. 10.1",
    )


class TrainingSettings(_Base):
    """Local training on the clients."""

    local_epochs: int = setting(5, "local-epochs", "Local epochs per FedAvg round (E).", unit="epochs", source="papers: 5", ge=1)
    batch_size: int = setting(16, "batch-size", "Local training batch size.", unit="samples", source="LoGo 64; AHFAL 128", ge=1)
    optimizer: Literal["sgd", "adam"] = setting("sgd", "optimizer", "Local optimiser (FALE's regression model: adam).", source="FALE: Adam lr 0.01")
    lr: float = setting(0.05, "lr", "Local learning rate.", source="LoGo/FairFAL 0.01; AHFAL 0.1; 0.05 for the digits default", gt=0)
    momentum: float = setting(0.9, "momentum", "SGD momentum.", source="LoGo/AHFAL 0.9", ge=0)
    weight_decay: float = setting(1e-5, "weight-decay", "Weight decay.", source="LoGo 1e-5", ge=0)
    lr_decay_fraction: float = setting(
        0.75, "lr-decay-fraction", "The lr is multiplied by lr-decay-gamma from round int(fraction*R)+1 of each cycle on; 1 = never.",
        unit="fraction of rounds", source="LoGo util/misc.py:adjust_learning_rate",
    )
    lr_decay_gamma: float = setting(0.1, "lr-decay-gamma", "Multiplier of the per-round lr decay.", source="LoGo", gt=0)
    local_only_epochs: int = setting(50, "local-only-epochs", "Max epochs of a local-only model (trained from scratch on the client's labels).", source="LoGo/FairFAL strategy.py:training_local_only", ge=1)
    local_only_lr_milestone: int = setting(37, "local-only-lr-milestone", "Epoch after which the local-only model's lr is multiplied by 0.1 (per epoch, not per batch as in the authors' code).", unit="epochs", source="LoGo MultiStepLR([37])", ge=1)
    local_only_stop_accuracy: float = setting(0.99, "local-only-stop-accuracy", "Early stop of the local-only model at this training accuracy.", unit="fraction", source="LoGo/FairFAL")
    bn_statistics: Literal["recompute", "average"] = setting(
        "recompute", "bn-statistics",
        "BatchNorm running statistics of the models used in eval mode (evaluation, scoring). recompute: after each "
        "cycle's FedAvg rounds the clients run the global model over their own data (a seeded subset of "
        "bn-statistics-samples per client) and send per-channel moment sums, the server installs the pooled mean and variance (and a client's local / local-only model gets its "
        "own data's statistics) - precise BN (Wu & Johnson 2021) made federated; average: the running buffers are "
        "averaged with the weights, as the LoGo, FairFAL and AHFAL reference code does. No effect on models without BatchNorm.",
        source="docs: the BatchNorm collapse; reference code: average",
    )
    bn_statistics_samples: int = setting(
        1024, "bn-statistics-samples",
        "With bn-statistics=recompute: how many samples of its partition each client runs through a model to "
        "recompute its BatchNorm statistics (a seeded random subset per client and cycle, drawn without replacement; "
        "a client's moment sums are scaled by partition size / samples, so the pooled statistics estimate those of "
        "the union of the clients' data). 0 = the whole partition (exact, and the cost of a forward pass over all of "
        "it every cycle). The default gives 8 or more full-sized clients at least 8,192 samples in all, the "
        "precise-BN sample count of pycls (BN.NUM_SAMPLES_PRECISE) and mmpretrain's PreciseBNHook; Wu & Johnson 2021 "
        "(end of Sec. 3.2, App. A3) find statistics from such a subset of the training data precise enough, more "
        "precise ones not improving accuracy. Measured here: docs/scale/scaling.md.",
        unit="samples per client", source="Wu & Johnson 2021 (arXiv 2105.07576); pycls, mmpretrain: 8192 in all", ge=0,
    )
    optimizer_state: Literal["reset", "keep"] = setting(
        "reset", "optimizer-state",
        "reset: a fresh optimiser every FedAvg round (Flower's usual client); keep: each client keeps its optimiser "
        "state (SGD momentum, Adam moments) across the rounds of a cycle, as the AHFAL/KAFAL reference code does "
        "(optimisers created once per cycle). Kept in the node's memory; a restarted node starts afresh.",
        source="dgitj/FAL main.py; KAFAL config.py",
    )
    augment_crop_padding: int = setting(
        0, "augment-crop-padding",
        "Training augmentation: pad each image by this many zero pixels and crop a random window of the original size "
        "(torchvision RandomCrop(padding=p)), per sample on the device; 0 = off.",
        unit="pixels", source="AHFAL code: MNIST 2, CIFAR-10/100 and SVHN 4", ge=0,
    )
    augment_flip: bool = setting(
        False, "augment-flip", "Training augmentation: random horizontal flip with probability 0.5 (not for digits).",
        source="AHFAL code: CIFAR-10/100; LoGo/FairFAL main.py",
    )
    local_objective: str = setting(
        "auto", "local-objective",
        "Loss of local training, by registry name: cross-entropy (MSE for regression), kcfu (KAFAL), edl (FEAL, "
        "evidential outputs); auto = the strategy's own (kcfu for kafal, edl for feal, cross-entropy otherwise). "
        "Any strategy can train with any objective, e.g. strategy=ahfal local-objective=kcfu (AHFAL App. D).",
        source="AHFAL App. D (KCFU applies to every query strategy)",
    )
    precision: Literal["fp32", "bf16"] = setting(
        "fp32", "precision",
        "Arithmetic of training, scoring and evaluation: fp32, or bf16 autocast (mixed precision: weights, optimiser "
        "and losses stay fp32). bf16 is faster on GPUs with bf16 units; results differ from fp32 in the last digits.",
    )


class QuerySettings(_Base):
    """Scoring and selection shared by strategies."""

    query_model: Literal["global", "local", "local-only"] = setting(
        "global", "query-model",
        "Model scored by entropy/badge/coreset/noise-stability: the global model, the client's model after its local "
        "training this cycle (local), or a model trained from scratch on the client's labels (local-only).",
        source="LoGo --query_model_mode",
    )
    score_batch_size: int = setting(512, "score-batch-size", "Batch size of inference when scoring the pool and evaluating.", unit="samples", ge=1)


class RuntimeSettings(_Base):
    """Where things are written, devices, time-outs."""

    output_dir: str = setting("", "output-dir", "Absolute folder for result files; empty = ~/fal-results.", unit="path")
    run_name: str = setting("", "run-name", "Name of the experiment; empty = <strategy>-<dataset>-seed<seed>-<UTC time>. Reusing a name resumes its client ledgers.")
    state_dir: str = setting("", "state-dir", "Folder of the client label ledgers when the node config sets none; empty = ~/.fal-state.", unit="path")
    evaluation: Literal["central", "federated"] = setting(
        "central", "evaluation", "central: the server evaluates the global model on the test set; federated: clients evaluate on their held-out split.",
    )
    device: Literal["auto", "cpu", "cuda"] = setting("auto", "device", "Torch device for training and scoring; auto = GPU when present.")
    client_threads: int = setting(1, "client-threads", "torch threads per ClientApp (2 clients on 2 cores: 1).", ge=1)
    node_wait_seconds: float = setting(
        120.0, "node-wait-seconds",
        "How long the server waits for the clients' nodes to connect at the start (num-clients), and for a "
        "restarted node before a query is re-sent.", unit="s", gt=0,
    )
    reply_timeout_seconds: float = setting(3600.0, "reply-timeout-seconds", "How long the server waits for the replies of one round.", unit="s", gt=0)
    query_retries: int = setting(1, "query-retries", "Times a failed query message is re-sent (queries are idempotent, no label is bought twice).", ge=0)
    record_label_histograms: bool = setting(
        True, "record-label-histograms",
        "Clients report per-class label counts for the results file. Turn off for privacy experiments: the counts "
        "are exactly what AHFAL's DP protects.",
    )


class RunConfig(
    CampaignSettings, FealSettings, KafalSettings, RegressionBaselineSettings, FaleSettings, FairfalSettings, AhfalSettings,
    BaselineSettings, FailureSettings, LabelingSettings,
    RuntimeSettings, QuerySettings, TrainingSettings, ScheduleSettings, ExperimentSettings):
    """Every run-config key.

    Method settings are added as mixins at the *front* of the bases (pydantic
    orders fields from the last base to the first, so core settings come first
    in the generated tables and method settings after them).
    """

    @property
    def task(self) -> str:
        return "regression" if self.dataset in REGRESSION_DATASETS or self.dataset.startswith("csv:") else "classification"

    @model_validator(mode="after")
    def _check(self) -> "RunConfig":
        known = CLASSIFICATION_DATASETS + REGRESSION_DATASETS
        if self.dataset not in known and not self.dataset.startswith("csv:"):
            raise ValueError(f"dataset: unknown dataset {self.dataset!r}; valid: {', '.join(known)}, csv:<path>")
        if self.alpha <= 0:
            raise ValueError(f"alpha: must be > 0, got {self.alpha}")
        if self.regression_alpha <= 0:
            raise ValueError(f"regression-alpha: must be > 0, got {self.regression_alpha}")
        for key, value in (
            ("initial-labeled-fraction", self.initial_labeled_fraction),
            ("budget-fraction", self.budget_fraction),
            ("lr-decay-fraction", self.lr_decay_fraction),
            ("local-only-stop-accuracy", self.local_only_stop_accuracy),
        ):
            if not 0 < value <= 1:
                raise ValueError(f"{key}: must be in (0, 1], got {value}")
        if not 0 < self.test_fraction < 1:
            raise ValueError(f"test-fraction: must be in (0, 1), got {self.test_fraction}")
        if self.long_tail_factor < 1:
            raise ValueError(f"long-tail-factor: must be >= 1 (1 = balanced), got {self.long_tail_factor}")
        self._check_partition_file()
        if self.budget_mode == "fraction":
            total = self.initial_labeled_fraction + self.num_cycles * self.budget_fraction
            if total > 1 + 1e-9:
                raise ValueError(
                    f"budget-fraction: initial-labeled-fraction + num-cycles x budget-fraction = "
                    f"{self.initial_labeled_fraction} + {self.num_cycles} x {self.budget_fraction} = {total:.3f} "
                    "is more than every client's whole data (1.0)"
                )
        elif self.budget_count < 1 and self.num_cycles > 0:
            raise ValueError("budget-count: must be >= 1 when budget-mode=count")
        for key in ("output_dir", "state_dir"):
            value = getattr(self, key)
            if value and not Path(value).expanduser().is_absolute():
                raise ValueError(
                    f"{key.replace('_', '-')}: must be an absolute path (relative paths land wherever the "
                    f"SuperLink was started), got {value!r}"
                )
        from fal_shared.models import MODEL_NAMES  # local import: torch is heavy

        if self.model != "auto" and self.model not in MODEL_NAMES:
            raise ValueError(f"model: unknown model {self.model!r}; valid: auto, {', '.join(MODEL_NAMES)}")
        if self.local_objective != "auto":
            from fal_shared.objectives import OBJECTIVES

            if self.local_objective not in OBJECTIVES:
                raise ValueError(
                    f"local-objective: unknown objective {self.local_objective!r}; valid: auto, {', '.join(sorted(OBJECTIVES))}"
                )
            if self.task not in OBJECTIVES[self.local_objective].tasks:
                raise ValueError(
                    f"local-objective: {self.local_objective!r} trains classifiers only, but dataset {self.dataset!r} "
                    f"is a {self.task} dataset"
                )
        if self.model not in ("auto", "linear") and self.task == "regression":
            raise ValueError(
                f"model: {self.model!r} is an image model, but dataset {self.dataset!r} is a regression dataset "
                'of flat feature vectors; use model="linear" (or "auto")'
            )
        if self.model == "linear" and self.task == "classification":
            image_models = ", ".join(m for m in MODEL_NAMES if m != "linear")
            raise ValueError(
                f"model: 'linear' is the regression model (flat inputs), but dataset {self.dataset!r} is image "
                f'classification; use one of {image_models} (or "auto")'
            )
        return self

    def _check_partition_file(self) -> None:
        if self.partition != "file":
            if self.partition_file:
                raise ValueError(f'partition-file: is set ({self.partition_file!r}) but partition is {self.partition!r}; '
                                 'set partition = "file" to use it')
            return
        if not self.partition_file:
            raise ValueError('partition-file: partition = "file" needs partition-file = "<absolute path of a '
                             'fal-partition/1 JSON file>"')
        if not Path(self.partition_file).expanduser().is_absolute():
            raise ValueError(f"partition-file: must be an absolute path (clients may run in other folders), "
                             f"got {self.partition_file!r}")
        if self.task != "classification":
            raise ValueError('partition: "file" is for classification data sets (regression splits its own test set)')
        for key, value, neutral in (("train-subset-size", self.train_subset_size, 0),
                                    ("long-tail-factor", self.long_tail_factor, 1.0)):
            if value != neutral:
                raise ValueError(f'{key}: must be {neutral} with partition = "file" (the file already names every '
                                 f"client's samples), got {value}")

    # ----------------------------------------------------------------- helpers
    def budget_for(self, client_size: int, remaining_pool: int) -> int:
        """Labels to buy for one client in one query, never more than its remaining pool."""
        if self.budget_mode == "count":
            wanted = self.budget_count
        else:
            wanted = math.ceil(self.budget_fraction * client_size - 1e-9)
        return max(0, min(wanted, remaining_pool))

    def initial_count(self, client_size: int) -> int:
        """Initial labeled samples of a client (at least 1 when it has data)."""
        if client_size == 0:
            return 0
        return min(client_size, max(1, math.ceil(self.initial_labeled_fraction * client_size - 1e-9)))

    def lr_for_round(self, server_round: int) -> float:
        """LoGo's per-round step schedule (rounds are 1-based within a cycle)."""
        if server_round > int(self.lr_decay_fraction * self.rounds_per_cycle) and self.lr_decay_fraction < 1:
            return self.lr * self.lr_decay_gamma
        return self.lr

    def output_root(self) -> Path:
        """Where result folders go: ``output-dir``, else ``~/fal-results``."""
        return Path(self.output_dir).expanduser() if self.output_dir else Path.home() / "fal-results"

    def state_root(self) -> Path:
        """Where client ledgers go when the node config names none: ``state-dir``, else ``~/.fal-state``."""
        return Path(self.state_dir).expanduser() if self.state_dir else Path.home() / ".fal-state"

    def resolved_model(self) -> str:
        from fal_shared.models import default_model_for

        return default_model_for(self.dataset, self.task) if self.model == "auto" else self.model

    def resolved_objective(self) -> str:
        """The local training objective: ``local-objective``, or for ``auto`` the strategy's own.

        Server and clients resolve it from the same run config (like the model),
        so nothing about it has to travel in messages.
        """
        if self.local_objective != "auto":
            return self.local_objective
        from strategies import STRATEGIES  # the strategy declares its objective (FALStrategy.objective)

        return STRATEGIES.lookup(self.strategy).objective

    def resolved_head(self) -> str:
        """How the global and local models' logits are read (:mod:`fal_shared.heads`): the objective's head."""
        from fal_shared.objectives import OBJECTIVES

        return OBJECTIVES.lookup(self.resolved_objective()).head

    def to_flower(self) -> dict[str, Any]:
        """The config as Flower run-config keys (for messages and results)."""
        return self.model_dump(by_alias=True)


def _format_validation_error(err: ValidationError) -> str:
    lines = []
    for e in err.errors():
        loc = ".".join(str(p) for p in e["loc"])
        msg = e["msg"]
        if e["type"] == "extra_forbidden":
            msg = "unknown run-config key"
        if e["type"] == "literal_error":
            expected = e.get("ctx", {}).get("expected", "")
            msg = f"got {e.get('input')!r}; allowed values: {expected}"
        lines.append(f"{loc}: {msg}" if loc else msg.removeprefix("Value error, "))
    return "invalid run config:\n  " + "\n  ".join(x.replace("Value error, ", "") for x in lines)


def parse_run_config(run_config: dict[str, Any]) -> RunConfig:
    """Parse Flower's run config into a validated :class:`RunConfig`.

    Raises
    ------
    ConfigError
        Naming each bad key and, where they are a closed set, the allowed values.
    """
    try:
        return RunConfig.model_validate(dict(run_config))
    except ValidationError as err:
        raise ConfigError(_format_validation_error(err)) from None


def _fields():
    for name, info in RunConfig.model_fields.items():
        extra = info.json_schema_extra or {}
        yield name, info, extra


def toml_value(value: Any) -> str:
    """A scalar as a TOML literal (for pyproject, the docs and ``flwr run --run-config``)."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return json.dumps(value, ensure_ascii=False)  # JSON string escapes are valid TOML basic-string escapes
    return repr(value)


def pyproject_table() -> str:
    """The ``[tool.flwr.app.config]`` body, generated from the model."""
    return "\n".join(f"{info.alias} = {toml_value(info.default)}" for _, info, _ in _fields())


def settings_table(model: type = RunConfig) -> str:
    """A markdown table of every key of ``model``: name, default, unit, source, meaning."""
    rows = ["| key | default | unit | source | meaning |", "|---|---|---|---|---|"]
    for info in model.model_fields.values():
        extra = info.json_schema_extra or {}
        default = toml_value(info.default)
        cells = [f"`{info.alias}`", f"`{default}`", extra.get("unit", ""), extra.get("source", ""), info.description or ""]
        rows.append("| " + " | ".join(str(c).replace("|", "\\|") for c in cells) + " |")
    return "\n".join(rows)


def strategies_table() -> str:
    """A markdown table of the registered strategies (imports the strategies package)."""
    from strategies import STRATEGIES

    rows = ["| strategy | tasks | what it does | source |", "|---|---|---|---|"]
    for name, cls in sorted(STRATEGIES.items()):
        rows.append(f"| `{name}` | {', '.join(cls.tasks)} | {cls.description} | {cls.source} |")
    return "\n".join(rows)


_PYPROJECT_HEADER = "[tool.flwr.app.config]\n"


def write_generated(root: Path) -> None:
    """Rewrite the generated ``[tool.flwr.app.config]`` table of pyproject.toml from the model."""
    pyproject = root / "pyproject.toml"
    text = pyproject.read_text()
    head = text[: text.index(_PYPROJECT_HEADER) + len(_PYPROJECT_HEADER)]
    pyproject.write_text(head + pyproject_table() + "\n")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Print the generated run-config tables, or write pyproject's.")
    parser.add_argument("--markdown", action="store_true", help="print the markdown table (the docs generate it at build time)")
    parser.add_argument("--toml", action="store_true", help="print the [tool.flwr.app.config] body")
    parser.add_argument("--write", action="store_true", help="update pyproject.toml in place")
    args = parser.parse_args(argv)
    if args.write:
        write_generated(Path(__file__).resolve().parents[1])
        return
    sys.stdout.write((settings_table() if args.markdown else pyproject_table()) + "\n")


if __name__ == "__main__":
    main()
