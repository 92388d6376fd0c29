"""Run-config settings of the failure policy: what the server does when a site is lost.

A client is *lost* for a round when its SuperNode cannot deliver an answer:
Flower reports the node unavailable (no heartbeat), the message or its reply
expired, the ClientApp process crashed, the node restarted while it held the
message, or no reply came within ``reply-timeout-seconds``. A client that
*answers with an error* (its code raised) is not lost: that always fails the
run, as it would again on a retry and hiding it would bias the results.
"""

from __future__ import annotations

from typing import Literal

from fal_shared.settings.common import SettingsBase, setting


class FailureSettings(SettingsBase):
    """Failure policy of a deployment (simulation clients are never lost)."""

    train_min_fraction: float = setting(
        0.5, "train-min-fraction",
        "A FedAvg round needs training replies from at least ceil(fraction x clients) clients (at least one); lost "
        "clients are left out of that round (recorded under lost-clients) and re-admitted, with their ledgers, at "
        "the next round or cycle their node is back; the same holds for the BatchNorm statistics round after the "
        "FedAvg rounds (bn-statistics=recompute). 1 = every client: a lost client fails the run. With "
        "num-clients=0 it is also how many partitions must be connected after node-wait-seconds to start.",
        unit="fraction of clients", gt=0, le=1,
    )
    query_missing_client: Literal["skip", "fail"] = setting(
        "skip", "query-missing-client",
        "A client lost in the labeling round (query.select) after query-retries: skip = it buys nothing this cycle "
        "(recorded under lost-clients; a purchase it made before the loss stays in its ledger and is never bought "
        "again), fail = the run fails. Statistics rounds of AHFAL, FairFAL and FALE and federated evaluation "
        "always need every client.",
    )
