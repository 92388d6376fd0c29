"""Labeling by people: the run-config settings of the server's wait, and the node config of a site's oracle.

The *run config* says how long the server waits for labels a person gives
(every site sees the same value). The *node config* says who labels at a site
and where (``oracle``, the Label Studio URL, token and project, the file
oracle's folder): each site keeps its own, and none of it ever travels to the
server. Both tables in the docs (run config, node config) are generated from here.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import ValidationError, model_validator

from fal_shared.settings.common import SettingsBase, setting

__all__ = ["LabelingSettings", "NodeLabelingConfig", "ORACLES", "NODE_CONFIG_PREFIXES", "parse_node_labeling"]

ORACLES = ("ground-truth", "label-studio", "file")
#: node-config keys with these prefixes belong to the oracle; a misspelt one is an error, not ignored
NODE_CONFIG_PREFIXES = ("oracle", "label-")


class LabelingSettings(SettingsBase):
    """How the server waits for labels a person gives (run config)."""

    label_poll_seconds: float = setting(
        60.0, "label-poll-seconds",
        "While labels are pending, the server asks the sites that still wait for some every this many seconds "
        "(each ask is one query.labels message; a site reads its labeling tool then).",
        unit="s", gt=0,
    )
    label_wait_seconds: float = setting(
        7 * 24 * 3600.0, "label-wait-seconds",
        "How long the server waits, after a query phase, for every site's pending labels; then "
        "label-wait-quorum decides whether the run goes on or stops (resumable with the same run-name).",
        unit="s", gt=0,
    )
    label_wait_quorum: float = setting(
        1.0, "label-wait-quorum",
        "Fraction of the sites whose pending labels must all be in when label-wait-seconds is over for the run "
        "to go on; the late sites train on the labels they have and their labels count when they arrive. "
        "Fewer: the run stops with status waiting-for-labels. Sites answered at once by the simulation oracle "
        "never wait.",
        unit="fraction of the clients", gt=0, le=1,
    )


class NodeLabelingConfig(SettingsBase):
    """Who labels at one site (node config, ``flower-supernode --node-config``)."""

    oracle: Literal["ground-truth", "label-studio", "file"] = setting(
        "ground-truth", "oracle",
        "Who labels this site's queried samples: ground-truth (simulation: the dataset's labels, at once), "
        "label-studio (people, in a Label Studio project) or file (people, through a CSV and fal-label).",
    )
    label_studio_url: str = setting("", "label-studio-url", "oracle=label-studio: the server's URL, e.g. http://127.0.0.1:8080.", unit="URL")
    label_studio_token: str = setting(
        "", "label-studio-token",
        "oracle=label-studio: an API token of the Label Studio user the ClientApp acts as (legacy token or "
        "personal access token). Prefer label-studio-token-file: node config is visible in the process list.",
    )
    label_studio_token_file: str = setting(
        "", "label-studio-token-file", "oracle=label-studio: a file holding the API token (read at every message).", unit="path",
    )
    label_studio_project: str | int = setting(
        "", "label-studio-project",
        "oracle=label-studio: the project, by id (an integer: it must exist and have a compatible labeling config) "
        "or by title (created with the right labeling config when missing); empty = \"FAL <run-name> partition <id>\".",
    )
    label_folder: str = setting(
        "", "label-folder",
        "oracle=file: folder the pending samples are written to (images and a labels.csv per query); "
        "empty = <state-dir>/labeling.", unit="path",
    )

    @model_validator(mode="after")
    def _check(self) -> "NodeLabelingConfig":
        if self.oracle == "label-studio":
            if not self.label_studio_url:
                raise ValueError("oracle=label-studio needs label-studio-url (the Label Studio server's URL)")
            if not (self.label_studio_token or self.label_studio_token_file):
                raise ValueError("oracle=label-studio needs label-studio-token or label-studio-token-file")
        return self


def parse_node_labeling(node_config: dict[str, Any]) -> NodeLabelingConfig:
    """The oracle settings in a node config; other keys are left alone, misspelt oracle keys fail.

    Raises
    ------
    ValueError
        Naming the key and the allowed values.
    """
    mine = {k: v for k, v in node_config.items() if str(k).startswith(NODE_CONFIG_PREFIXES)}
    try:
        return NodeLabelingConfig.model_validate(mine)
    except ValidationError as err:
        problems = []
        for e in err.errors():
            loc = ".".join(str(p) for p in e["loc"])
            msg = "unknown oracle key (see the docs, Node config)" if e["type"] == "extra_forbidden" else e["msg"]
            problems.append(f"{loc}: {msg}" if loc else msg)
        raise ValueError("node config: " + "; ".join(p.replace("Value error, ", "") for p in problems)) from None
