"""Method-specific query actions (one module per method), imported by ``client_app.app``.

A module here registers handlers with ``client_app.actions.query_action``;
action names must be Python identifiers (Flower routes ``query.<action>``).
"""

import importlib
import pkgutil

for _mod in sorted(m.name for m in pkgutil.iter_modules(__path__)):
    importlib.import_module(f"{__name__}.{_mod}")
