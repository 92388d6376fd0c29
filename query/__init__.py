"""Scoring and selection on one client's pool (no Flower imports).

Importing this package imports every module in it, so each selector module
registers itself in :data:`query.base.SELECTORS`.
"""

import importlib
import pkgutil

from query.base import SELECTORS, PoolContext, Selector, get_selector, register_selector, run_selection

for _mod in sorted(m.name for m in pkgutil.iter_modules(__path__)):
    importlib.import_module(f"{__name__}.{_mod}")

__all__ = ["SELECTORS", "PoolContext", "Selector", "get_selector", "register_selector", "run_selection"]
