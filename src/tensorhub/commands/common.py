"""What every command shares: ``--uri``/``--project`` and their one default rule, opening the
store, the QUERY argument (a JSON MongoDB filter or a record id), JSON output, and the note that
points at the other projects when the one asked for is empty.

The CLI's default project is ``--project``, else ``$TENSORHUB_PROJECT``, else ``"default"``: the
library's rule (:func:`tensorhub.context.default_project`) without the script's file stem, which
a command line does not have. A script that relied on its file stem writes elsewhere; the note
printed for an empty project names the projects that have records.
"""

from __future__ import annotations

import datetime as dt
import json
import os
from collections.abc import Callable, Mapping
from typing import Any, TypeVar

import click
from bson import ObjectId, json_util

from tensorhub.context import ENV_PROJECT, ENV_URI
from tensorhub.hub import TensorHub
from tensorhub.registry import DEFAULT_URI

F = TypeVar("F", bound=Callable[..., Any])

#: the CLI's project when neither ``--project`` nor ``$TENSORHUB_PROJECT`` names one
DEFAULT_PROJECT = "default"
PROJECT_HELP = (f"Project (default: ${ENV_PROJECT}, else {DEFAULT_PROJECT!r}; a script without project_name= "
                "writes to a project named after its file: see `tensorhub ls projects`).")
URI_HELP = f"Store URI (default: ${ENV_URI}, else {DEFAULT_URI})."


def resolve_uri(uri: str | None) -> str:
    """``--uri``, else ``$TENSORHUB_URI``, else the embedded default store."""
    return uri or os.environ.get(ENV_URI) or DEFAULT_URI


def resolve_project(project: str | None) -> str:
    """``--project``, else ``$TENSORHUB_PROJECT``, else ``"default"``."""
    return project or os.environ.get(ENV_PROJECT) or DEFAULT_PROJECT


def uri_option(func: F) -> F:
    """The ``--uri`` option of every command."""
    return click.option("--uri", default=None, metavar="URI", help=URI_HELP)(func)


def project_option(func: F) -> F:
    """The ``--project``/``-p`` option of every command."""
    return click.option("--project", "-p", default=None, metavar="NAME", help=PROJECT_HELP)(func)


def json_option(func: F) -> F:
    """``--json``: machine-readable output."""
    return click.option("--json", "as_json", is_flag=True,
                        help="Print JSON (ids and times as strings) instead of text, for scripts.")(func)


def open_hub(uri: str | None, project: str | None, must_exist: bool = False) -> TensorHub:
    """The hub a command works on. With ``must_exist`` (commands that read, delete or change records)
    no store is created: a mistyped ``file://`` path is an error naming it, not a new empty store."""
    if must_exist:
        return TensorHub(resolve_uri(uri), project_name=resolve_project(project), create=False)
    return TensorHub(resolve_uri(uri), project_name=resolve_project(project))


def _either_id(value: str) -> dict[str, Any]:
    # a reference may be stored as an ObjectId (tensorhub's own) or as its hex text (other writers)
    return {"$in": [ObjectId(value), value]}


def parse_query(text: str, param_hint: str = "QUERY") -> dict[str, Any]:
    """A query from the command line: a record id (24 hex digits), or a JSON MongoDB filter
    (MongoDB Extended JSON: ``{"$oid": ...}``, ``{"$date": ...}``). A 24-hex string given for ``_id`` or
    a field ending in ``_id`` matches the ObjectId (and the same text)."""
    text = text.strip()
    if ObjectId.is_valid(text):
        return {"_id": ObjectId(text)}
    try:
        parsed = json_util.loads(text)
    except (ValueError, TypeError) as exc:
        raise click.BadParameter(f"neither a record id nor valid JSON: {exc}", param_hint=param_hint) from exc
    if not isinstance(parsed, dict):
        raise click.BadParameter(f"a query is a JSON object, e.g. '{{\"status\": \"failed\"}}', got {text!r}",
                                 param_hint=param_hint)
    return {key: _either_id(value) if key.endswith("_id") and isinstance(value, str) and ObjectId.is_valid(value)
            else value for key, value in parsed.items()}


def _plain(value: Any) -> Any:
    if isinstance(value, dt.datetime):
        return value.isoformat()
    if isinstance(value, (bytes, bytearray)):
        return f"<{len(value)} bytes>"
    return str(value)  # ObjectId, Decimal128, Regex...: their text


def to_json(value: Any, indent: int | None = None) -> str:
    """``value`` as JSON; ids, times and other BSON values as strings."""
    return json.dumps(value, default=_plain, indent=indent, allow_nan=True)


def count_summary(project: Mapping[str, Any]) -> str:
    """``12 tasks, 3 models, 40 training logs`` for a row of ``TensorHub.list_projects()``."""
    parts = [f"{project[key]} {key.replace('_', ' ')[:None if project[key] != 1 else -1]}" for key in
             ("tasks", "models", "datasets", "training_logs", "validation_logs", "testing_logs") if project.get(key)]
    return ", ".join(parts) or "empty"


def _total(project: Mapping[str, Any]) -> int:
    return sum(v for k, v in project.items() if k not in ("project_name", "tasks_by_status") and isinstance(v, int))


def empty_project_note(hub: TensorHub) -> str | None:
    """A line naming the store's other projects when ``hub``'s project holds nothing, else None."""
    projects = hub.list_projects()
    if any(p["project_name"] == hub.project_name and _total(p) for p in projects):
        return None
    others = [p for p in projects if _total(p)]
    if not others:
        return None
    listing = ", ".join(f"{p['project_name']} ({count_summary(p)})" for p in others[:20])
    more = f" and {len(others) - 20} more" if len(others) > 20 else ""
    return f"project {hub.project_name!r} is empty; projects in this store: {listing}{more}; pass --project NAME"


def echo_note(hub: TensorHub, err: bool = False) -> None:
    """Print :func:`empty_project_note`, if any (to stderr with ``err``, e.g. beside JSON output)."""
    note = empty_project_note(hub)
    if note:
        click.echo(note, err=err)
