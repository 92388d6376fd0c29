"""The schema of ``results.json``: what :class:`server_app.results.ResultsRecorder` writes, as pydantic models.

The docs' reference page on results.json is generated from these models at build
time (``docs/hooks/reference.py``), and ``tests/test_results_schema.py`` validates
the results.json of real runs against them, so the page cannot drift from the
file. Every structural level forbids keys it does not name (a new key must be
documented here first); only a strategy's own record (``cycles[].strategy``)
accepts keys it does not name, since a new strategy may record anything: the
keys today's strategies record are named in :class:`StrategyRecord`.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from server_app.results_schema_campaign import MODELS as CAMPAIGN_MODELS
from server_app.results_schema_campaign import Campaign, CampaignWarning, RunStop, Tracking

__all__ = ["ResultsFile", "validate_results", "MODELS"]


def _f(description: str, default: Any = ..., **kw: Any) -> Any:
    return Field(default, description=description, **kw)


class _Closed(BaseModel):
    """A level whose keys are all named: an unnamed key is a validation error."""

    model_config = ConfigDict(extra="forbid", populate_by_name=True)


class Traffic(_Closed):
    """Messages and bytes of one message kind (bytes as Flower serialises the message content)."""

    messages_sent: int = _f("messages the server sent", alias="messages-sent")
    bytes_sent: int = _f("bytes of their content", alias="bytes-sent")
    messages_received: int = _f("replies received", alias="messages-received")
    bytes_received: int = _f("bytes of their content", alias="bytes-received")


class Evaluation(_Closed):
    """The global model's evaluation after a cycle's training (central, or federated on the clients' held-out splits)."""

    where: Literal["central", "federated"] = _f("central: the server on the test set; federated: the clients, weighted by counts")
    num_examples: int = _f("test samples evaluated", alias="num-examples")
    accuracy: float | None = _f("classification: accuracy", None)
    loss: float | None = _f("classification, central: mean test loss", None)
    balanced_accuracy: float | None = _f("classification: mean of the per-class accuracies (classes present)", None,
                                         alias="balanced-accuracy")
    per_class_accuracy: list[float] | None = _f("classification: recall of each class (NaN for a class absent from the test set)",
                                                None, alias="per-class-accuracy")
    correct_per_class: list[int] | None = _f("classification, central: correct predictions per class", None,
                                             alias="correct-per-class")
    count_per_class: list[int] | None = _f("classification, central: test samples per class", None, alias="count-per-class")
    mse: float | None = _f("regression: mean squared error (standardised targets)", None)
    client_model_key: str | None = _f("federated evaluation of a model kept on the clients (FALE's theta): its key", None,
                                      alias="client-model-key")


class Seconds(_Closed):
    """Wall time of a cycle's phases, in seconds (server clock), and the clients' own compute."""

    train: float | None = _f("the cycle's FedAvg rounds", None)
    train_client_compute_sum: float | None = _f("sum over clients and rounds of the seconds the ClientApps trained", None,
                                                alias="train-client-compute-sum")
    bn_statistics: float | None = _f("the BatchNorm statistics round (bn-statistics=recompute, models with BatchNorm)", None,
                                     alias="bn-statistics")
    evaluate: float | None = _f("the global evaluation", None)
    query: float | None = _f("the whole query phase (statistics rounds and the labeling round)", None)
    selection_client_max: float | None = _f("the slowest client's selection in the labeling round", None,
                                            alias="selection-client-max")
    query_client_compute_sum: float | None = _f("sum over clients of the seconds their query handlers computed", None,
                                                alias="query-client-compute-sum")
    label_wait: float | None = _f("waiting for people's labels after the query phase (labeling oracles)", None,
                                  alias="label-wait")


class LostClient(_Closed):
    """A client that could not answer (its site lost, the message expired, no reply in time)."""

    message_type: str = _f("the message kind it did not answer (train, query.select, ...)", alias="message-type")
    partition: int = _f("its partition id")
    reason: str = _f("what Flower or the time-out said")
    round: int | None = _f("train: the server round", None)


class Labeling(_Closed):
    """Waiting for people's labels (oracle label-studio or file): one wait, after a query phase or the setup."""

    waited_seconds: float = _f("seconds waited", alias="waited-seconds")
    polls: int = _f("query.labels rounds sent")
    labels_arrived: dict[str, int] = _f("labels recorded per partition", alias="labels-arrived")
    late_partitions: list[int] = _f("sites that went on without all their labels (label-wait-quorum)",
                                    alias="late-partitions")
    pending_after: dict[str, int] = _f("labels still pending per late partition", alias="pending-after")
    skipped_ids: dict[str, list[int]] | None = _f("samples people skipped or marked unclear, per partition (not bought)",
                                                  None, alias="skipped-ids")
    notes: list[str] | None = _f("what the sites reported (e.g. the labeling tool was unreachable)", None)


class AhfalRecord(_Closed):
    """AHFAL's server statistics of one query (strategy ahfal)."""

    sigma_pp: list[float] = _f("per class: std over clients of its label share, in percentage points", alias="sigma-pp")
    c_low: list[int] = _f("classes with sigma below ahfal-tau (hybrid local + global entropy)", alias="c-low")
    c_high: list[int] = _f("the other classes (local entropy)", alias="c-high")
    target: list[float] = _f("the global target class distribution (ahfal-target)")
    contributing_clients: int = _f("clients whose histograms were summed", alias="contributing-clients")
    secure_sum: bool = _f("the sums came from secure summation (ahfal-secure-sum)", alias="secure-sum")


class FaleRecord(_Closed):
    """FALE's selection and fit of one query (strategies fale, fale-local)."""

    n_query: int = _f("distinct rows selected in all up to this query", alias="n-query")
    n_query_total: int = _f("the whole budget n_q of the run", alias="n-query-total")
    n_draws: int = _f("i.i.d. draws of the sampling-until-distinct loop", alias="n-draws")
    fedsvd_cycle: int = _f("the cycle whose FedSVD the scores come from", alias="fedsvd-cycle")
    rank: int = _f("rank of the stacked masked matrix")
    num_features: int = _f("features (with the intercept column when fale-fit-intercept)", alias="num-features")
    authority_partition: int = _f("the client that played the trusted authority", alias="authority-partition")
    block_size: int = _f("fale-block-size of the masks", alias="block-size")
    leverage_score_sum: float = _f("sum of all leverage scores (= the rank)", alias="leverage-score-sum")
    singular_values: list[float] = _f("singular values of the federated SVD", alias="singular-values")
    selected_per_client: dict[str, int] = _f("distinct rows selected per partition", alias="selected-per-client")
    draws_per_client: dict[str, int] = _f("draws that fell on each partition", alias="draws-per-client")


class StrategyRecord(BaseModel):
    """What a strategy recorded in a query phase (``phase.record``). Strategy-specific: keys not named here are allowed."""

    model_config = ConfigDict(extra="allow", populate_by_name=True)

    client_selection_seconds: dict[str, dict[str, float]] | None = _f(
        "every selector: its own phases' seconds per partition", None, alias="client-selection-seconds")
    client_diagnostics: dict[str, dict[str, Any]] | None = _f(
        "every selector: its per-client diagnostics (e.g. FairFAL's d_i, which model it used)", None,
        alias="client-diagnostics")
    ahfal: AhfalRecord | None = _f("ahfal: the server's class statistics", None)
    dp_epsilon_spent: dict[str, float] | None = _f("ahfal with local DP: epsilon spent this cycle per partition", None,
                                                   alias="dp-epsilon-spent")
    dp_epsilon_spent_total: dict[str, float] | None = _f("ahfal with local DP: epsilon spent so far per partition", None,
                                                         alias="dp-epsilon-spent-total")
    fale: FaleRecord | None = _f("fale, fale-local: the selection and fit", None)
    g_per_client: dict[str, float] | None = _f("fairfal: g_i per partition (statistics rounds only)", None,
                                               alias="g-per-client")
    g_bar: float | None = _f("fairfal: g-bar used by this query", None, alias="g-bar")
    g_bar_cycle: int | None = _f("fairfal: the cycle g-bar was computed in", None, alias="g-bar-cycle")
    statistics_round: bool | None = _f("fairfal: this query ran the statistics round", None, alias="statistics-round")
    clients_global_uncertainty: list[int] | None = _f("fairfal: partitions that scored uncertainty with the global model",
                                                      None, alias="clients-global-uncertainty")
    clients_global_embedding: list[int] | None = _f("fairfal: partitions whose embeddings came from the global model",
                                                    None, alias="clients-global-embedding")
    fraction_global_uncertainty: float | None = _f("fairfal: their fraction", None, alias="fraction-global-uncertainty")
    fraction_global_embedding: float | None = _f("fairfal: their fraction", None, alias="fraction-global-embedding")


class Summary(_Closed):
    """Per-client values of a cycle summarised (readable at 1,000 clients; ``fal_shared.summaries``)."""

    count: int = _f("clients the values came from")
    min: float | None = _f("smallest value", None)
    median: float | None = _f("median value", None)
    max: float | None = _f("largest value", None)
    sum: float | None = _f("sum over the clients", None)


class Summaries(_Closed):
    """A cycle's per-client figures as count / min / median / max / sum."""

    labeled_per_client: Summary = _f("labels held per client", alias="labeled-per-client")
    client_compute_seconds: dict[str, Summary] = _f("clients' compute seconds per message, per message kind",
                                                    alias="client-compute-seconds")
    budgets: Summary | None = _f("query phase: labels each client was to buy", None)
    selected_per_client: Summary | None = _f("query phase: samples each client chose", None, alias="selected-per-client")
    selection_seconds: Summary | None = _f("query phase: each client's selection seconds", None, alias="selection-seconds")


class Cycle(_Closed):
    """One cycle: training on the labels held, the evaluation, then (all but the last) the query phase."""

    cycle: int = _f("0-based; cycle 0 trains on the initial labels")
    labeled: int = _f("labels held by all clients when the cycle trained")
    labeled_fraction: float = _f("labeled / all clients' data", alias="labeled-fraction")
    labeled_per_client: dict[str, int] = _f("labels per partition", alias="labeled-per-client")
    labels_per_class_per_client: dict[str, list[int] | None] | None = _f(
        "label histogram per partition (record-label-histograms)", None, alias="labels-per-class-per-client")
    train_rounds: int = _f("FedAvg rounds this cycle", alias="train-rounds")
    evaluation: Evaluation = _f("the global model's evaluation")
    budgets: dict[str, int] | None = _f("query phase: labels each partition was to buy", None)
    selected_ids: dict[str, list[int]] | None = _f("query phase: the sample ids each partition chose", None,
                                                   alias="selected-ids")
    strategy: StrategyRecord | None = _f("query phase: the strategy's own record", None)
    labeling: Labeling | None = _f("query phase with people labeling: the wait for their labels", None)
    seconds: Seconds = _f("wall time per phase")
    traffic: dict[str, Traffic] = _f("per message kind (train, evaluate, query.setup, query.select, ...) this cycle")
    lost_clients: list[LostClient] | None = _f("clients lost this cycle", None, alias="lost-clients")
    campaign: Campaign | None = _f("the campaign's numbers (audit-size, stop-when, random-share)", None)
    summaries: Summaries | None = _f("the per-client figures summarised (count / min / median / max / sum)", None)


class Client(_Closed):
    """A client (one partition, one node) as the setup round found it."""

    node_id: int = _f("its Flower node id (a restarted node may get another)", alias="node-id")
    data_size: int | None = _f("its training samples", None, alias="data-size")
    initial_labeled: int | None = _f("its initial random labels", None, alias="initial-labeled")


class Totals(_Closed):
    """Whole-run figures, written when the run ends."""

    wall_seconds: float | None = _f("seconds from the ServerApp's start (of this invocation) to the end", None,
                                    alias="wall-seconds")
    traffic: dict[str, Traffic] | None = _f("per message kind over the whole run (completed runs)", None)
    final_evaluation: Evaluation | None = _f("the last cycle's evaluation (completed runs)", None, alias="final-evaluation")


class Launcher(_Closed):
    """What the launcher (fal-simulate, fal-deploy) adds when the run ends."""

    phases: dict[str, float] = _f("when the launcher reached each of its phases (Unix seconds; start first)")
    scope: str = _f("the run's id in FAL_RUN_SCOPES: every process of the run carries it (launcher/stopping.py)")
    signal: str | None = _f("the signal that stopped the run (SIGTERM, SIGINT, SIGHUP)", None)


class ResultsFile(_Closed):
    """``<output-dir>/<run-name>/results.json``: rewritten after every cycle, so a crash keeps what was done."""

    run_name: str = _f("the run's name (run-name)", alias="run-name")
    status: Literal["running", "completed", "failed", "waiting-for-labels", "stopped"] = _f(
        "running (also: a ServerApp killed mid-run), completed, failed (see error), waiting-for-labels (resumable), "
        "stopped (the launcher got SIGTERM, SIGINT or SIGHUP; the same command resumes it)")
    error: str | None = _f("why the run failed or stopped")
    started: str = _f("UTC start, ISO 8601")
    finished: str | None = _f("UTC end, ISO 8601")
    config: dict[str, Any] = _f("the resolved run config, every key (the strategy's defaults applied)")
    strategy_defaults: dict[str, Any] | None = _f("the values the strategy supplied for keys not set", None,
                                                  alias="strategy-defaults")
    clients: dict[str, Client] = _f("per partition id")
    cycles: list[Cycle] = _f("one entry per completed cycle")
    initial_labeling: Labeling | None = _f("people labeling: the wait for the initial labels", None,
                                           alias="initial-labeling")
    resumed: list[str] | None = _f("UTC times the run was resumed (same run-name)", None)
    stop: RunStop | None = _f("stop-when stopped the run before num-cycles", None)
    campaign_warnings: list[CampaignWarning] | None = _f("the calibration check's warnings", None,
                                                                  alias="campaign-warnings")
    tracking: Tracking | None = _f("tracker = mlflow: where the curves are", None)
    totals: Totals = _f("empty while running; the run's totals once it ended")
    launcher: Launcher | None = _f("fal-simulate / fal-deploy: when the launcher reached each phase, its run scope", None)
    timeline: dict[str, float] | None = _f("when the run reached each event (Unix seconds, e.g. serverapp-main, "
                                           "setup-done): where a run's fixed cost goes", None)


MODELS: list[type[BaseModel]] = [ResultsFile, Client, Cycle, Evaluation, Seconds, Traffic, LostClient, Labeling,
                                 StrategyRecord, AhfalRecord, FaleRecord, Totals, Summaries, Summary, Launcher, *CAMPAIGN_MODELS]


def validate_results(data: dict[str, Any]) -> ResultsFile:
    """Validate a parsed results.json (raises pydantic's ValidationError naming every bad key)."""
    return ResultsFile.model_validate(data)
