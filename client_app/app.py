"""The Flower ClientApp: short handlers that delegate to ``client_app.actions``."""

from __future__ import annotations

import json
import logging

from flwr.app import Context, Message
from flwr.clientapp import ClientApp

from client_app import actions, audit, methods  # noqa: F401  (audit and methods register their query actions)
from client_app.actions import QUERY_ACTIONS, Handler
from client_app.session import ClientSession
from fal_shared.wire import RUN_CONFIG_DEFAULTS, config_of

app = ClientApp()
log = logging.getLogger(__name__)


def _handle(fn: Handler, msg: Message, context: Context) -> Message:
    conf = config_of(msg.content)
    run_name = str(conf.get("run-name", ""))
    if not run_name:
        raise ValueError(f"message {msg.metadata.message_type!r} carries no run-name in its config")
    defaults = json.loads(str(conf.get(RUN_CONFIG_DEFAULTS, "{}")))
    session = ClientSession(context, run_name, run_config_defaults=defaults)
    return Message(content=fn(session, msg.content), reply_to=msg)


@app.train()
def train(msg: Message, context: Context) -> Message:
    return _handle(actions.handle_train, msg, context)


@app.evaluate()
def evaluate(msg: Message, context: Context) -> Message:
    return _handle(actions.handle_evaluate, msg, context)


def _register(name: str, fn: Handler) -> None:
    @app.query(name)
    def _query(msg: Message, context: Context) -> Message:
        return _handle(fn, msg, context)


for _name, _fn in QUERY_ACTIONS.items():
    _register(_name, _fn)
