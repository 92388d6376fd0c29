"""Which SuperNode serves which partition: the setup round, late and restarted nodes.

:class:`NodeMembership` is the part of :class:`server_app.experiment.Experiment`
that maps partitions to nodes (``query.setup``), waits for nodes
(``num-clients``, ``node-wait-seconds``) and re-admits a node that restarted or
joined late, by the failure policy (``fal_shared/settings/failures.py``).
"""

from __future__ import annotations

import logging
import math
import time

from flwr.app import ConfigRecord, RecordDict

from fal_shared.summaries import compact_ids
from fal_shared.wire import config_of
from server_app.messaging import ClientFailure, lost_reason
from strategies import ClientInfo

__all__ = ["NodeMembership"]

log = logging.getLogger("fal")


class NodeMembership:
    """Node discovery and re-admission; mixed into Experiment, whose state it uses.

    Uses the experiment's ``cfg``, ``grid``, ``messenger``, ``strategy``,
    ``recorder`` and keeps ``clients`` (partition id -> ClientInfo),
    ``num_partitions``, ``pending_at_setup`` and ``_retired`` up to date.
    """

    def min_train_replies(self, of: int | None = None) -> int:
        """Replies a FedAvg round needs: ``train-min-fraction`` of ``of`` clients (default: the admitted ones), at least one."""
        n = len(self.clients) if of is None else of
        return max(1, math.ceil(self.cfg.train_min_fraction * n - 1e-9))

    def _wait_for_nodes(self) -> list[int]:
        """num-clients=N: exactly N connected nodes; num-clients=0: at least one."""
        wanted = max(self.cfg.num_clients, 1)
        deadline = time.monotonic() + self.cfg.node_wait_seconds
        while True:
            nodes = sorted(self.grid.get_node_ids())
            if len(nodes) >= wanted:
                break
            if time.monotonic() > deadline:
                what = f"num-clients={self.cfg.num_clients} but only" if self.cfg.num_clients else "num-clients=0 (use the connected nodes) but"
                raise ClientFailure(
                    f"{what} {len(nodes)} node(s) connected within node-wait-seconds={self.cfg.node_wait_seconds:g}"
                )
            time.sleep(0.1)  # asking the grid is cheap; a 1 s poll cost up to 1 s per run
        if self.cfg.num_clients and len(nodes) > self.cfg.num_clients:
            raise ValueError(
                f"num-clients={self.cfg.num_clients} but {len(nodes)} nodes are connected; "
                "set num-clients to the number of SuperNodes (or 0 to use the connected nodes)"
            )
        return nodes

    def _setup(
        self, nodes: list[int], *, skip_lost: bool = False, into: dict[int, tuple[ClientInfo, int]] | None = None,
    ) -> dict[int, tuple[ClientInfo, int]]:
        """Send ``query.setup`` to ``nodes``; (info, num-partitions) by partition id, added to ``into``.

        With ``skip_lost`` a node that could not answer is left out (it is asked
        again when it shows up next); an error its code raised fails.
        """
        setup = RecordDict({"config": ConfigRecord({"initial-labels": self.strategy.initial_labels})})
        replies = self.messenger.send_to_nodes("query.setup", {n: setup for n in nodes})
        problems = []
        for n in nodes:
            reason = lost_reason(replies.get(n), self.cfg.reply_timeout_seconds)
            if reason is not None:
                if not skip_lost:
                    problems.append(f"node {n}: {reason}")
            elif replies[n].has_error():
                problems.append(f"node {n}: {replies[n].error.reason}")
        if problems:
            raise ClientFailure("setup failed: " + "; ".join(problems))
        found = {} if into is None else into
        for node, reply in sorted(replies.items()):
            if node not in nodes or reply.has_error():
                continue
            r = config_of(reply.content, "result")
            pid = int(r["partition-id"])
            if pid in found:
                raise ValueError(
                    f"partition-id {pid} is served by two nodes ({found[pid][0].node_id} and {node}); "
                    "give every SuperNode its own partition-id"
                )
            info = ClientInfo(
                partition_id=pid, node_id=node, data_size=int(r["data-size"]), pool_size=int(r["pool-size"]),
                labeled=int(r["labeled"]), num_classes=int(r["num-classes"]),
                label_histogram=[int(v) for v in r["label-histogram"]] if "label-histogram" in r else None,
                input_shape=tuple(int(v) for v in r["input-shape"]),
            )
            if into is not None and int(r["num-partitions"]) != self.num_partitions:
                raise ValueError(f"nodes disagree on num-partitions: {sorted({self.num_partitions, int(r['num-partitions'])})}")
            found[pid] = (info, int(r["num-partitions"]))
            self.pending_at_setup[pid] = int(r.get("pending", 0))
        return found

    def discover(self) -> None:
        """Setup round: map partitions to nodes, check them, learn pool sizes."""
        nodes = self._wait_for_nodes()
        self.recorder.mark("nodes-connected")
        declared = self.cfg.num_clients == 0
        found = self._setup(nodes, skip_lost=declared)
        if not found:
            raise ClientFailure(f"setup: none of the {len(nodes)} connected node(s) answered")
        partitions_seen = {nparts for _, nparts in found.values()}
        if len(partitions_seen) != 1:
            raise ValueError(f"nodes disagree on num-partitions: {sorted(partitions_seen)}")
        nparts = partitions_seen.pop()
        if nparts < len(nodes):
            raise ValueError(
                f"num-partitions={nparts} is fewer than the {len(nodes)} connected nodes; every node needs its own partition"
            )
        self.num_partitions = nparts
        if declared:
            found = self._await_partitions(found, set(nodes))
        self.clients = {pid: info for pid, (info, _) in sorted(found.items())}
        self.messenger.nodes = {p: c.node_id for p, c in self.clients.items()}

    def _await_partitions(self, found: dict[int, tuple[ClientInfo, int]], asked: set[int]) -> dict[int, tuple[ClientInfo, int]]:
        """num-clients=0: wait for a node of every declared partition; start without late ones if the policy allows."""
        deadline = time.monotonic() + self.cfg.node_wait_seconds
        while len(found) < self.num_partitions and time.monotonic() < deadline:
            time.sleep(1.0)
            new = sorted(set(self.grid.get_node_ids()) - asked)
            asked.update(new)
            if new:
                self._setup(new, skip_lost=True, into=found)
        missing = sorted(set(range(self.num_partitions)) - set(found))
        if missing:
            need = self.min_train_replies(of=self.num_partitions)
            if len(found) < need:
                raise ClientFailure(
                    f"num-clients=0: {len(found)} of num-partitions={self.num_partitions} partitions connected within "
                    f"node-wait-seconds={self.cfg.node_wait_seconds:g} (missing {compact_ids(missing)}); train-min-fraction="
                    f"{self.cfg.train_min_fraction:g} needs {need}"
                )
            log.warning("[FAL] starting without %d partition(s) (%s): they join when their nodes connect", len(missing),
                        compact_ids(missing))
        return found

    def refresh_nodes(self, wait: bool = True) -> None:
        """Re-admit SuperNodes that restarted, or that were late (num-clients=0).

        A node restarted without SuperNode authentication has a new node id; it
        answers ``query.setup`` from its ledger on disk (its labels are reloaded,
        not bought again) and takes over its partition. With ``wait``, first
        wait up to node-wait-seconds while some partition has no connected node
        and no new node has appeared (a restarting node needs a moment).
        """
        known = set(self.messenger.nodes.values())

        def look() -> tuple[set[int], list[int]]:
            current = set(self.grid.get_node_ids())
            return current, sorted(current - known - self._retired)

        current, new = look()
        if wait:
            deadline = time.monotonic() + self.cfg.node_wait_seconds
            while len(known - current) > len(new) and time.monotonic() < deadline:
                time.sleep(1.0)
                current, new = look()
        if not new:
            return
        found = self._setup(new, skip_lost=True)
        self._retired.update(set(new) - {info.node_id for info, _ in found.values()})  # not a client: do not ask again
        admitted = False
        for pid, (info, nparts) in sorted(found.items()):
            if pid in self.clients:
                log.info("[FAL] partition %d re-admitted: node %d -> node %d", pid, self.clients[pid].node_id, info.node_id)
                self._retired.add(self.clients[pid].node_id)
            elif self.cfg.num_clients == 0 and nparts == self.num_partitions:
                log.info("[FAL] partition %d joined late on node %d", pid, info.node_id)
                admitted = True
            else:
                log.warning("[FAL] node %d serves partition-id %d, which is not in this experiment; ignored", info.node_id, pid)
                self._retired.add(info.node_id)
                continue
            self.clients[pid] = info
            self.messenger.nodes[pid] = info.node_id
        if admitted:
            self.clients = dict(sorted(self.clients.items()))
            self.messenger.nodes = dict(sorted(self.messenger.nodes.items()))
            self.recorder.set_clients(self._client_records())
