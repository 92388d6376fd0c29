"""MkDocs hooks (``hooks:`` in mkdocs.yml): generated reference pages, and links to repository files.

Generated content. A line ``<!-- generated: NAME -->`` in a page is replaced at
build time by what the code says today (never copied by hand):

* ``run-config``: every run-config key (``fal_shared.config.RunConfig``);
* ``node-config``: every node-config key of a site (``NodeLabelingConfig``);
* ``strategies``: the strategy registry (``strategies.STRATEGIES``);
* ``commands``: the ``--help`` of every ``fal-*`` command in pyproject's
  ``[project.scripts]``, from its module's ``build_parser()``;
* ``results-schema``: the pydantic models of results.json (``server_app.results_schema``).

An unknown NAME, or a command without ``build_parser``, fails the build.

Links to repository files. A page may link a file outside ``docs/`` by its
relative path from the page's source (``[sweep](../../experiments/sweeps/x.toml)``),
as on GitHub. The build copies each such file into the site under ``repo/``
(a Markdown file as ``.md.txt``, shown as text) and points the link there, so the site stays self-contained and offline; a
link to a file that does not exist stays as written and MkDocs' link check
fails the strict build.
"""

from __future__ import annotations

import argparse
import importlib
import os
import posixpath
import re
import tomllib
import typing
from pathlib import Path

from mkdocs.exceptions import PluginError
from mkdocs.structure.files import File

ROOT = Path(__file__).resolve().parents[2]
MARKER = re.compile(r"^<!-- generated: ([a-z-]+) -->$", re.MULTILINE)
# a Markdown link or image target: ](target) or ](target#anchor), not a URL, not an anchor alone
LINK = re.compile(r"\]\((?![a-z][a-z0-9+.-]*:|#|/)([^)\s#]+)(#[^)\s]*)?\)")
REPO_PREFIX = "repo/"  # where linked repository files land in the site


# ------------------------------------------------------------------ generated content
def _run_config() -> str:
    from fal_shared.config import settings_table

    return settings_table()


def _node_config() -> str:
    from fal_shared.config import settings_table
    from fal_shared.settings.labeling import NodeLabelingConfig

    return settings_table(NodeLabelingConfig)


def _strategies() -> str:
    from fal_shared.config import strategies_table

    return strategies_table()


def _subparsers(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    for action in parser._actions:  # argparse keeps its subcommands here (no public accessor)
        if isinstance(action, argparse._SubParsersAction):
            return dict(action.choices)
    return {}


def _commands() -> str:
    scripts = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["scripts"]
    old = os.environ.get("COLUMNS")
    os.environ["COLUMNS"] = "88"  # argparse wraps to the terminal width: the same page on every machine
    try:
        out = []
        for name, target in sorted(scripts.items()):
            module = importlib.import_module(target.split(":")[0])
            if not hasattr(module, "build_parser"):
                raise PluginError(f"{name}: {module.__name__} has no build_parser() for the command reference")
            parser = module.build_parser()
            out += [f"## `{name}`", "", "```text", parser.format_help().rstrip(), "```", ""]
            for sub, subparser in _subparsers(parser).items():
                out += [f"### `{name} {sub}`", "", "```text", subparser.format_help().rstrip(), "```", ""]
        return "\n".join(out)
    finally:
        if old is None:
            os.environ.pop("COLUMNS", None)
        else:
            os.environ["COLUMNS"] = old


def _type_name(annotation: object) -> str:
    from pydantic import BaseModel

    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return f"[{annotation.__name__}](#{annotation.__name__.lower()})"
    origin, args = typing.get_origin(annotation), typing.get_args(annotation)
    if origin in (typing.Union, getattr(__import__("types"), "UnionType")):
        return " or ".join("null" if a is type(None) else _type_name(a) for a in args)
    if origin is typing.Literal:
        return " \\| ".join(f'`"{a}"`' for a in args)
    if origin is list:
        return f"list of {_type_name(args[0])}"
    if origin is dict:
        return f"object: {_type_name(args[0])} → {_type_name(args[1])}"
    if annotation is typing.Any:
        return "any"
    return {str: "string", int: "integer", float: "number", bool: "boolean"}.get(annotation, str(annotation))


def _results_schema() -> str:
    from server_app.results_schema import MODELS

    out = []
    for model in MODELS:
        out += [f"### {model.__name__}", "", (model.__doc__ or "").strip(), ""]
        out += ["| key | type | required | meaning |", "|---|---|---|---|"]
        for name, info in model.model_fields.items():
            key = info.alias or name
            required = "yes" if info.is_required() else ""
            desc = (info.description or "").replace("|", "\\|")
            out.append(f"| `{key}` | {_type_name(info.annotation)} | {required} | {desc} |")
        extra = model.model_config.get("extra")
        out += ["", "Keys not named here: " + ("allowed (strategy-specific)." if extra == "allow" else "a validation error."), ""]
    return "\n".join(out)


GENERATORS = {
    "run-config": _run_config,
    "node-config": _node_config,
    "strategies": _strategies,
    "commands": _commands,
    "results-schema": _results_schema,
}


def _generate(match: re.Match) -> str:
    name = match.group(1)
    if name not in GENERATORS:
        raise PluginError(f"unknown generated block {name!r}; known: {', '.join(GENERATORS)}")
    return GENERATORS[name]()


# ------------------------------------------------------------------ links into the repository
def _repo_target(page_src: str, target: str) -> str | None:
    """The repository path a page link points to, when it leaves docs/ and the file exists."""
    docs = ROOT / "docs"
    path = (docs / posixpath.dirname(page_src) / target).resolve()
    if path.is_relative_to(docs) or not path.is_relative_to(ROOT) or not path.is_file():
        return None
    return path.relative_to(ROOT).as_posix()


def _site_uri(rel: str) -> str:
    """Where a linked repository file lands in the site (a Markdown file as text, not as a page)."""
    return REPO_PREFIX + rel + (".txt" if rel.endswith(".md") else "")


def on_files(files, config):
    """Add every repository file a page links to, as a file of the site under repo/."""
    seen = set()
    for f in list(files.documentation_pages()):
        text = Path(f.abs_src_path).read_text(encoding="utf-8")
        for match in LINK.finditer(text):
            rel = _repo_target(f.src_uri, match.group(1))
            if rel and rel not in seen:
                seen.add(rel)
                files.append(File.generated(config, _site_uri(rel), abs_src_path=str(ROOT / rel)))
    return files


def on_page_markdown(markdown, page, config, files):
    markdown = MARKER.sub(_generate, markdown)

    def relink(match: re.Match) -> str:
        rel = _repo_target(page.file.src_uri, match.group(1))
        if rel is None:
            return match.group(0)
        target = posixpath.relpath(_site_uri(rel), posixpath.dirname(page.file.src_uri) or ".")
        return f"]({target}{match.group(2) or ''})"

    return LINK.sub(relink, markdown)
