"""A Grid that runs the ClientApp in this process, one Context per node.

For tests and debugging: it exercises the real ServerApp loop and the real
ClientApp handlers with real Flower messages, without Ray or a SuperLink
(``flwr run`` tests cover those). A client exception becomes an error reply,
as it does in Flower's runtimes.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from flwr.app import Context, Error, Message, RecordDict
from flwr.clientapp import ClientApp
from flwr.serverapp import Grid
from flwr.supercore.run import Run
from flwr.supercore.task_identity import TaskIdentity

__all__ = ["InProcessGrid"]


class InProcessGrid(Grid):
    def __init__(
        self, client_app: ClientApp, run_config: dict[str, Any], node_configs: list[dict[str, Any]], *,
        override_config: dict[str, Any] | None = None,
    ) -> None:
        self.client_app = client_app
        self.in_process = True  # MeteredGrid: answers synchronously, no push/pull
        #: the keys a user set, as ``flwr run`` reports them (``grid.run.override_config``); None = unknown
        self.override_config = override_config
        # Messages read the run id from the process's task identity, which
        # Flower's runtimes set; here we are the runtime.
        TaskIdentity.run_id = 1
        TaskIdentity.node_id = 1
        TaskIdentity.task_id = 1
        self.run_config = dict(run_config)
        self.contexts = {
            1000 + i: Context(run_id=1, node_id=1000 + i, node_config=dict(nc), state=RecordDict(), run_config=self.run_config)
            for i, nc in enumerate(node_configs)
        }
        self.down: set[int] = set()  # node ids that do not answer (tests of failures)
        self.fail_next: dict[int, str] = {}  # node id -> error reason for its next message
        self.drop_reply_next: set[int] = set()  # node ids whose next reply is lost after the client handled it
        self.fail_at: dict[tuple[str, int], str] = {}  # (message type, n-th message of that type) -> error reason
        self.log: list[tuple[str, int]] = []

    def restart_node(self, node_id: int) -> int:
        """Simulate a SuperNode restart: a new node id, empty in-memory state, same node config."""
        ctx = self.contexts.pop(node_id)
        new_id = max(self.contexts, default=node_id) + 1
        self.contexts[new_id] = Context(run_id=1, node_id=new_id, node_config=ctx.node_config, state=RecordDict(), run_config=self.run_config)
        return new_id

    def set_run(self, run_id: int) -> None:  # pragma: no cover
        pass

    @property
    def run(self) -> Run:
        if self.override_config is None:
            raise NotImplementedError("this in-process grid was given no override config")
        run = Run.create_empty(run_id=1)
        run.override_config = dict(self.override_config)
        return run

    def create_message(self, *args: Any, **kwargs: Any) -> Message:  # pragma: no cover
        raise NotImplementedError

    def get_node_ids(self) -> Iterable[int]:
        return list(self.contexts)

    def push_messages(self, messages: Iterable[Message]) -> Iterable[str]:  # pragma: no cover
        raise NotImplementedError("use send_and_receive")

    def pull_messages(self, message_ids: Iterable[str]) -> Iterable[Message]:  # pragma: no cover
        raise NotImplementedError("use send_and_receive")

    def send_and_receive(self, messages: Iterable[Message], *, timeout: float | None = None) -> Iterable[Message]:
        replies = []
        for msg in messages:
            node = msg.metadata.dst_node_id
            self.log.append((msg.metadata.message_type, node))
            if node in self.down or node not in self.contexts:
                continue
            nth = sum(1 for kind, _ in self.log if kind == msg.metadata.message_type)
            if (msg.metadata.message_type, nth) in self.fail_at:
                self.fail_next[node] = self.fail_at.pop((msg.metadata.message_type, nth))
            if node in self.fail_next:
                reason = self.fail_next.pop(node)
                replies.append(Message(Error(code=0, reason=reason), reply_to=msg))
                continue
            try:
                reply = self.client_app(msg, self.contexts[node])
            except Exception as err:  # as Flower's runtimes do: an error reply
                reply = Message(Error(code=0, reason=f"{type(err).__name__}: {err}"), reply_to=msg)
            if node in self.drop_reply_next:  # the client did the work, the reply never arrives
                self.drop_reply_next.discard(node)
                continue
            replies.append(reply)
        return replies


def run_inprocess(
    overrides: dict[str, Any], *, num_clients: int | None = None, node_configs: list[dict[str, Any]] | None = None,
) -> dict[str, Any]:
    """Run a whole experiment in this process (tests and benchmarks).

    ``overrides`` are run-config keys (the grid reports them as the run's override config, as
    ``flwr run`` does, so strategy defaults resolve as there); ``num-clients`` nodes are created
    with partition ids 0..N-1 (plus ``node_configs[i]``, e.g. an oracle). Returns the results
    dict (also written to output-dir).
    """
    from client_app.app import app as client_app
    from fal_shared.config import RunConfig
    from server_app.app import run_experiment

    run_config = {**RunConfig().to_flower(), **overrides}
    n = int(num_clients or run_config["num-clients"] or 10)
    run_config["num-clients"] = n
    extra = node_configs or [{}] * n
    nodes = [{"partition-id": i, "num-partitions": n, **extra[i]} for i in range(n)]
    grid = InProcessGrid(client_app, run_config, nodes, override_config={**overrides, "num-clients": n})
    return run_experiment(grid, run_config)
