"""``flwr-simulation`` as ``fal-simulate`` starts it: Flower's own, with its message pump made linear in K.

Flower's simulation engine hands messages to its Ray actors from a thread that, every 0.1 s, asks the
in-memory LinkState for the next message of every node in turn (``vce_api.add_messages_to_queue``), and
each ask scans every stored message and re-validates it (``InMemoryLinkState.get_message_ins``): a sweep
costs K nodes x M stored messages. At K = 1,000 clients with a round's 1,000 messages in store that is
10^6 validations per sweep, all under the state's lock; profiled with py-spy, 80 % of the
``flwr-simulation`` process's samples were in it, and it took a core away from the ClientApps'
actors for the whole run (docs/scale/scaling.md). Flower 1.41 and 1.42 have the same code; no Flower
setting changes it.

:func:`deliver_pending` gives the same messages, in the same order, with one pass over the store
per sweep: the stored messages are validated once (expired ones dropped, as Flower's check does), then
each node's first undelivered message is marked delivered, as ``get_message_ins(node_id, limit=1)``
marks it. It is installed only into the ``flwr-simulation`` process that ``fal-simulate`` starts (a
``flwr-simulation`` shim first on that process tree's ``PATH``; :func:`write_shim`), only for the Flower
versions whose pump it was checked against, and only for the in-memory LinkState that simulation uses;
otherwise Flower's own pump runs (and a plain ``flwr run`` against a SuperLink of your own runs
Flower's, unchanged).
"""

from __future__ import annotations

import logging
import os
import sys
from pathlib import Path
from queue import Queue
from threading import Event
from typing import Any

#: Flower versions whose ``add_messages_to_queue`` and ``InMemoryLinkState`` this was read against
CHECKED_FLOWER_VERSIONS = ("1.41.0", "1.42.0")
SWEEP_SECONDS = 0.1  # Flower's pause between sweeps (vce_api.add_messages_to_queue)


def deliver_pending(state: Any, nodes: dict[int, Any]) -> list[Any]:
    """The first undelivered message of every node in ``nodes``, marked delivered, in ``nodes`` order."""
    from flwr.supercore.date import now

    first: dict[int, Any] = {}
    with state.lock:
        state._check_stored_messages(set(state.message_ins_store))  # Flower's validation, once per message
        for message in state.message_ins_store.values():  # insertion order, as get_message_ins scans it
            meta = message.metadata
            if meta.delivered_at == "" and meta.dst_node_id in nodes and meta.dst_node_id not in first:
                first[meta.dst_node_id] = message
        delivered_at = now().isoformat()
        for message in first.values():
            message.metadata.delivered_at = delivered_at
    return [first[node] for node in nodes if node in first]


def install() -> bool:
    """Replace Flower's message pump in this process; False (Flower's runs) where it was not checked."""
    import flwr
    from flwr.server.superlink.fleet.vce import vce_api
    from flwr.server.superlink.linkstate.in_memory_linkstate import InMemoryLinkState

    if flwr.__version__ not in CHECKED_FLOWER_VERSIONS:
        logging.getLogger(__name__).warning(
            "flwr %s: the linear message pump was checked against %s only; Flower's own runs (slow past "
            "a few hundred clients)", flwr.__version__, ", ".join(CHECKED_FLOWER_VERSIONS))
        return False
    if hasattr(vce_api.add_messages_to_queue, "flowers"):  # installed already: not a wrapper of the wrapper
        return True
    flowers = vce_api.add_messages_to_queue

    def add_messages_to_queue(state: Any, queue: Queue, nodes_mapping: dict[int, Any], f_stop: Event) -> None:
        if type(state) is not InMemoryLinkState:  # another LinkState: Flower's pump, whatever it costs
            return flowers(state, queue, nodes_mapping, f_stop)
        while not f_stop.is_set():
            for message in deliver_pending(state, nodes_mapping):
                queue.put(message)
            f_stop.wait(SWEEP_SECONDS)
        return None

    add_messages_to_queue.flowers = flowers  # type: ignore[attr-defined]  # Flower's, kept for other LinkStates
    vce_api.add_messages_to_queue = add_messages_to_queue  # run_api looks the name up when it starts
    return True


def write_shim(folder: Path) -> Path:
    """A ``flwr-simulation`` in ``folder`` that installs the pump and runs Flower's; put ``folder`` first on PATH."""
    folder.mkdir(parents=True, exist_ok=True)
    shim = folder / "flwr-simulation"  # Flower's exit handling looks at argv[0]'s name
    shim.write_text(f"#!{sys.executable}\nimport sys\nfrom launcher.flower_simulation import main\n"
                    "sys.exit(main())\n")
    shim.chmod(0o755)
    return shim


def main() -> int | None:
    if os.environ.get("FAL_FLOWER_PUMP", "linear") != "flower":  # FAL_FLOWER_PUMP=flower: Flower's, to compare
        install()
    from flwr.simulation.app import flwr_simulation

    return flwr_simulation()
