"""The oracles a site can name in its node config (``oracle=...``), built by :func:`make_oracle`.

``ground-truth`` answers at once from the dataset (simulation); ``label-studio``
and ``file`` are :class:`client_app.oracle.PersonOracle` s: people answer, maybe
days later. See docs/explanation/labeling.md.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from client_app.oracle import GroundTruthOracle, Oracle, PersonOracle
from fal_shared.experiment_data import ClientData
from fal_shared.settings.labeling import parse_node_labeling

__all__ = ["make_oracle"]


def make_oracle(node_config: dict[str, Any], data: ClientData, state_root: Path) -> Oracle | PersonOracle:
    """The oracle named by ``node_config`` (default: the simulation oracle)."""
    conf = parse_node_labeling(node_config)
    if conf.oracle == "label-studio":
        from client_app.oracles.label_studio import LabelStudioOracle  # the SDK is imported only where used

        return LabelStudioOracle(conf)
    if conf.oracle == "file":
        from client_app.oracles.file import FileOracle

        return FileOracle(Path(conf.label_folder).expanduser() if conf.label_folder else state_root / "labeling")
    return GroundTruthOracle(data.ids, data.y)
