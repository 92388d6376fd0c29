"""Method-specific run-config settings, one module per method.

Each module defines a pydantic mixin whose fields are prefixed with the
method's name (``ahfal-tau``, ``fairfal-ratio-threshold``, ...), each with its
unit and source (``fal_shared.config.setting``). ``fal_shared.config.RunConfig``
inherits them all.
"""
