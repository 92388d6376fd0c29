"""fal-simulate's message pump hands out what Flower's does, on Flower's real in-memory LinkState.

The state is built as ``flwr.simulation.run_simulation`` builds it (in-memory LinkState, nodes registered
as ``vce_api._register_nodes`` registers them) and the messages are pushed through Flower's
``InMemoryGrid``; one copy is drained by Flower's ``get_message_ins(node, limit=1)`` per node, the other by
``deliver_pending``. The run through ``fal-simulate`` itself is in tests/test_flower_runtime.py.
"""

from __future__ import annotations

import dataclasses
import random
import threading
from queue import Queue

import pytest

pytest.importorskip("flwr")

from flwr.app import Message, RecordDict  # noqa: E402
from flwr.common.constant import SUPERLINK_NODE_ID  # noqa: E402
from flwr.proto.task_pb2 import Task  # noqa: E402
from flwr.server.superlink.fleet.vce import vce_api  # noqa: E402
from flwr.server.superlink.linkstate import LinkStateFactory  # noqa: E402
from flwr.server.superlink.linkstate.in_memory_linkstate import RunRecord  # noqa: E402
from flwr.supercore.constant import FLWR_IN_MEMORY_DB_NAME, NOOP_FEDERATION_ID  # noqa: E402
from flwr.supercore.object_store import ObjectStoreFactory  # noqa: E402
from flwr.supercore.run import Run  # noqa: E402
from flwr.supercore.task_identity import TaskIdentity  # noqa: E402
from flwr.superlink.federation import NoOpFederationManager  # noqa: E402
from flwr.superlink.grid import InMemoryGrid  # noqa: E402

from launcher.flower_simulation import deliver_pending, install, write_shim  # noqa: E402


@pytest.fixture(autouse=True)
def _identity():
    """Messages take their run and sender from Flower's process-wide TaskIdentity, as in flwr-simulation."""
    saved = (TaskIdentity._task_id, TaskIdentity._run_id, TaskIdentity._node_id)
    TaskIdentity.task_id, TaskIdentity.run_id, TaskIdentity.node_id = 11, 7, SUPERLINK_NODE_ID
    yield
    TaskIdentity._task_id, TaskIdentity._run_id, TaskIdentity._node_id = saved


def _federation(num_nodes: int, messages_per_node: dict[int, int]):
    factory = LinkStateFactory(FLWR_IN_MEMORY_DB_NAME, NoOpFederationManager(), ObjectStoreFactory())
    state = factory.state()
    run = dataclasses.replace(Run.create_empty(7), primary_task_id=11,  # as run_simulation pre-registers it
                              federation_id=NOOP_FEDERATION_ID)
    state.run_ids[run.run_id] = RunRecord(run=run)
    state.task_store[11] = Task(task_id=11, run_id=run.run_id)
    nodes = vce_api._register_nodes(num_nodes, factory)
    grid = InMemoryGrid(state_factory=factory)
    grid.set_run(run)
    ids = list(nodes)
    # interleaved as a ServerApp sends rounds: every node's first message, then the second ones...;
    # group_id names the message by (partition, k) across federations
    pushed = [Message(RecordDict(), ids[i], "train", group_id=f"{i}.{k}") for k in range(max(messages_per_node.values()))
              for i in range(num_nodes) if k < messages_per_node.get(i, 0)]
    random.Random(0).shuffle(pushed)  # stored out of node order: the sweep's order must still be Flower's
    grid.push_messages(pushed)
    return state, nodes


def _flowers_sweep(state, nodes):
    return [m for node in nodes for m in state.get_message_ins(node_id=node, limit=1)]


def test_a_sweep_delivers_the_messages_flowers_delivers_in_its_order():
    counts = {0: 2, 1: 0, 2: 3, 3: 1, 5: 1, 6: 2}
    state, nodes = _federation(8, counts)
    theirs_state, theirs_nodes = _federation(8, counts)  # the same federation again (its ids are random)
    for sweep in range(4):
        ours = deliver_pending(state, nodes)
        theirs = _flowers_sweep(theirs_state, theirs_nodes)
        assert [m.metadata.group_id for m in ours] == [m.metadata.group_id for m in theirs], sweep
        assert all(m.metadata.delivered_at for m in ours)
        expected = sum(1 for c in counts.values() if c > sweep)
        assert len(ours) == expected, (sweep, len(ours))
    assert deliver_pending(state, nodes) == []  # every message went out exactly once


def test_an_expired_message_is_dropped_as_flower_drops_it():
    state, nodes = _federation(3, {0: 1, 1: 1, 2: 1})
    stale = next(iter(state.message_ins_store.values()))
    stale.metadata.__dict__["_created_at"] = stale.metadata.created_at - stale.metadata.ttl - 1
    out = deliver_pending(state, nodes)
    assert stale.metadata.message_id not in {m.metadata.message_id for m in out} and len(out) == 2
    assert stale.metadata.message_id not in state.message_ins_store


def test_the_installed_pump_feeds_the_queue_and_stops_on_the_event():
    assert install()
    installed = vce_api.add_messages_to_queue
    assert install() and vce_api.add_messages_to_queue is installed  # a second install wraps nothing again
    state, nodes = _federation(5, {i: 1 for i in range(5)})
    queue: Queue = Queue()
    stop = threading.Event()
    pump = threading.Thread(target=vce_api.add_messages_to_queue, args=(state, queue, nodes, stop), daemon=True)
    pump.start()
    got = [queue.get(timeout=10) for _ in range(5)]
    stop.set()
    pump.join(timeout=5)
    assert not pump.is_alive()
    assert sorted(m.metadata.dst_node_id for m in got) == sorted(nodes)


def test_the_shim_runs_this_pythons_flwr_simulation(tmp_path):
    import subprocess

    shim = write_shim(tmp_path / "bin")
    assert shim.name == "flwr-simulation" and shim.stat().st_mode & 0o111
    out = subprocess.run([str(shim), "--help"], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0 and "--runtime-api-address" in out.stdout, out.stderr[-2000:]
