"""Server-side FAL strategies.

Importing this package imports every module in it, so each strategy module
registers itself with :func:`strategies.base.register_strategy` and adding a
method never means editing a central list.
"""

import importlib
import pkgutil

from strategies.base import (
    STRATEGIES,
    ClientInfo,
    FALStrategy,
    QueryPhase,
    create_strategy,
    register_strategy,
    resolve_run_config,
)

for _mod in sorted(m.name for m in pkgutil.iter_modules(__path__)):
    importlib.import_module(f"{__name__}.{_mod}")

__all__ = [
    "STRATEGIES", "ClientInfo", "FALStrategy", "QueryPhase", "create_strategy", "register_strategy", "resolve_run_config",
]
