"""``tensorhub ls``, ``show`` and ``rm``: list, inspect and delete records of any kind.

Which collection a kind is, and what a record's lineage is, belong to the hub
(:meth:`~tensorhub.TensorHub.find_records`, :meth:`~tensorhub.TensorHub.describe_record`,
:meth:`~tensorhub.TensorHub.list_projects`); deletes go through the hub's ``delete_*`` methods, so
blobs go with their records. This module only chooses columns and prints.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable, Sequence
from typing import Any

import click

from tensorhub import datasets as _datasets
from tensorhub import logs as _logs
from tensorhub.catalog import kind_name
from tensorhub.commands.common import (
    echo_note,
    json_option,
    open_hub,
    parse_query,
    project_option,
    to_json,
    uri_option,
)
from tensorhub.hub import TensorHub
from tensorhub.records import COMMON_INTERNAL_FIELDS
from tensorhub.table import format_table

#: what ``ls`` lists (``logs`` = ``training-logs``)
LS_KINDS = ("projects", "datasets", "models", "runs", "tasks", "logs", "training-logs", "validation-logs",
            "testing-logs")
TASK_COLUMNS = ["id", "task_name", "status", "attempt", "host", "duration", "params", "result", "time"]


def _shape_summary(record: dict) -> str:
    return ", ".join(f"{s['path']}:{s['dtype']}{tuple(s['shape'])}" for s in record.get("schema", []))


def _extra_columns(rows: Sequence[dict], fixed: Sequence[str], internal: frozenset[str]) -> list[str]:
    """Up to 6 of the user's fields as columns: not ``fixed`` ones, nor those tensorhub writes itself
    (``internal``: the kind's declared list, plus the fields of every record)."""
    builtin = COMMON_INTERNAL_FIELDS | internal
    extra: list[str] = []
    for row in rows:
        for key in row:
            if key not in builtin and key not in fixed and key not in extra:
                extra.append(key)
    return extra[:6]


def _seconds(start: Any, end: Any) -> float | None:
    if not isinstance(start, dt.datetime):
        return None
    if not isinstance(end, dt.datetime):
        end = dt.datetime.now(dt.timezone.utc)
    if start.tzinfo is None:  # every backend returns UTC; a naive one is UTC too
        start = start.replace(tzinfo=dt.timezone.utc)
    if end.tzinfo is None:
        end = end.replace(tzinfo=dt.timezone.utc)
    return round((end - start).total_seconds(), 1)


def task_row(task: dict) -> dict:
    """The columns of a task or run: id, status, attempt, host, duration (s), params, result (or error)."""
    owner = task["owner"] if isinstance(task.get("owner"), dict) else {}
    running = task.get("status") == "running"
    return {**task,
            "id": str(task.get("_id", task.get("id", ""))),
            "task_name": task.get("task_name", task.get("run_name")),
            "attempt": task.get("attempt", task.get("attempts")),
            "host": owner.get("host", task.get("host")),
            "duration": _seconds(task.get("started_at"), None if running else task.get("finished_at")),
            "params": task.get("hyper_parameters", task.get("params")),
            "result": task.get("result") or task.get("error")}


def list_records(hub: TensorHub, kind: str, limit: int, query: dict) -> tuple[list[dict], list[str]]:
    """The rows and columns ``tensorhub ls KIND`` prints."""
    if kind == "projects":
        rows = [{**p, "tasks_by_status": ", ".join(f"{k} {v}" for k, v in sorted(p["tasks_by_status"].items()))}
                for p in hub.list_projects()]
        return rows, ["project_name", "datasets", "models", "training_logs", "validation_logs", "testing_logs",
                      "tasks", "tasks_by_status"]
    if kind == "datasets":
        rows = hub.find_dataset_records(limit=limit, **query)
        for row in rows:
            row["arrays"] = _shape_summary(row)
            row["MB"] = row.get("nbytes", 0) / 1e6
        fixed = ["dataset_name", "time", "MB", "arrays"]
        return rows, fixed + _extra_columns(rows, fixed, _datasets.INTERNAL_FIELDS)
    if kind == "models":  # the table of hub.compare_models(): newest first, every numeric field a column
        rows = hub.compare_models(limit=limit, **query)
        for row in rows:
            row["id"] = str(row["id"])
        columns = list(dict.fromkeys(key for row in rows for key in row))
        return rows, columns[:10]  # model_name, time, id, adapter and up to 6 metrics
    if kind == "tasks":
        return [task_row(t) for t in hub.find_tasks(limit=limit, **query)], TASK_COLUMNS
    if kind == "runs":
        return [task_row(r) for r in hub.find_runs(**query)[:limit]], TASK_COLUMNS
    rows = hub.find_records(kind_name(kind), limit=limit, **query)
    fixed = ["time"]
    return rows, fixed + _extra_columns(rows, fixed, _logs.INTERNAL_FIELDS)


def _json_records(hub: TensorHub, kind: str, limit: int, query: dict) -> list[dict]:
    """What ``ls --json`` prints: the whole records (no blob read); projects and runs as their methods return them."""
    if kind == "projects":
        return hub.list_projects()
    if kind == "runs":
        return hub.find_runs(**query)[:limit]
    return hub.find_records(kind_name(kind), limit=limit, **query)


@click.command("ls")
@click.argument("kind", type=click.Choice(LS_KINDS))
@uri_option
@project_option
@click.option("--limit", "-n", default=50, show_default=True, type=click.IntRange(min=1),
              help="At most this many rows, newest first.")
@click.option("--query", "-q", default="{}", help='A MongoDB query as JSON, e.g. \'{"status": "failed"}\'.')
@json_option
def ls_command(kind: str, uri: str | None, project: str | None, limit: int, query: str, as_json: bool) -> None:
    """List projects, datasets, models, runs, tasks or logs (reads records only, never blobs).

    `ls projects` lists every project of the store with its record counts; the other kinds are
    those of one project. Tasks and runs show id, status, attempt, host, duration (s), params and
    result. With --json, one JSON array of the whole records.
    """
    parsed = parse_query(query, "--query")
    with open_hub(uri, project, must_exist=True) as hub:
        if as_json:
            rows = _json_records(hub, kind, limit, parsed)
            click.echo(to_json(rows))
        else:
            rows, columns = list_records(hub, kind, limit, parsed)
            if rows:
                click.echo(format_table(rows, columns))
            else:
                what = "projects" if kind == "projects" else f"{kind} in project {hub.project_name!r}"
                click.echo(f"no {what} at {hub}")
        if not rows and kind != "projects":
            echo_note(hub, err=as_json)


def _text(value: Any, indent: str) -> str:
    """One value of ``show``'s text output: scalars as they are, multi-line text as an indented block."""
    if isinstance(value, str):
        if "\n" in value:
            return "|\n" + "\n".join(indent + "  " + line for line in value.rstrip("\n").split("\n"))
        return value
    if isinstance(value, dt.datetime):
        return value.isoformat()
    return to_json(value) if isinstance(value, (dict, list, tuple)) else str(value)


def _describe_text(found: dict) -> str:
    record, lineage = found["record"], found["lineage"]
    lines = [f"{noun(found['kind'])} {record['_id']}"]
    lines += [f"  {key}: {_text(value, '  ')}" for key, value in record.items()]
    lines.append("lineage:")
    for key, value in lineage.items():
        if isinstance(value, dict) and "records" in value:
            lines.append(f"  {key}: {value['count']}")
            lines += [f"    - {to_json(item)}" for item in value["records"]]
        else:
            lines.append(f"  {key}: {'-' if value is None else to_json(value)}")
    return "\n".join(lines)


@click.command("show")
@click.argument("kind", metavar="KIND")
@click.argument("record_id", metavar="ID")
@uri_option
@project_option
@json_option
def show_command(kind: str, record_id: str, uri: str | None, project: str | None, as_json: bool) -> None:
    """Show one record, whole, with its lineage.

    KIND is dataset, model, task, run, or training-log/validation-log/testing-log (plural too).
    Lineage: a model's dataset and task; a task's or run's log counts, models and datasets; a
    dataset's models; a log row's task.
    """
    kind = kind_name(kind)
    with open_hub(uri, project, must_exist=True) as hub:
        found = hub.describe_record(kind, record_id)
        if found is None:
            echo_note(hub, err=True)
            raise click.ClickException(f"no {noun(kind)} has the id {record_id} in project "
                                       f"{hub.project_name!r} at {hub}")
    click.echo(to_json(found, indent=2) if as_json else _describe_text(found))


def noun(kind: str, count: int | None = None) -> str:
    """``model``/``3 models``, ``training log``/``2 training logs`` for a kind of :data:`~tensorhub.catalog.COLLECTIONS`."""
    one = kind.replace("_", " ").removesuffix("s")
    if count is None:
        return one
    return f"{count} {one}" if count == 1 else f"{count} {one}s"


def _deleter(hub: TensorHub, kind: str) -> Callable[..., int]:
    """The hub's delete method of ``kind`` (each frees its kind's blobs)."""
    return {"datasets": hub.delete_datasets, "models": hub.delete_model, "tasks": hub.delete_tasks,
            "runs": hub.delete_tasks, "training_logs": hub.delete_training_log,
            "validation_logs": hub.delete_validation_log, "testing_logs": hub.delete_testing_log}[kind]


@click.command("rm")
@click.argument("kind", metavar="KIND")
@click.argument("query", metavar="QUERY")
@uri_option
@project_option
@click.option("--yes", "-y", is_flag=True, help="Delete; without it, only print what would be deleted.")
def rm_command(kind: str, query: str, uri: str | None, project: str | None, yes: bool) -> None:
    """Delete the records of KIND matching QUERY (a JSON MongoDB query, or a record id), blobs included.

    Without --yes nothing is deleted: the matching records are listed. KIND as for `show`.
    """
    kind = kind_name(kind)
    parsed = parse_query(query)
    with open_hub(uri, project, must_exist=True) as hub:
        if not yes:
            matching = hub.find_records(kind, **parsed)
            if not matching:
                click.echo(f"no {noun(kind)} of project {hub.project_name!r} matches {query}; nothing to delete")
                echo_note(hub)
                return
            rows = [task_row(r) if kind in ("tasks", "runs") else {**r, "id": str(r["_id"])} for r in matching]
            name = {"datasets": "dataset_name", "models": "model_name", "tasks": "task_name", "runs": "task_name"}
            columns = ["id", name[kind], "time"] if kind in name else ["id", "time"]
            if kind in ("tasks", "runs"):
                columns.insert(2, "status")
            click.echo(f"would delete {noun(kind, len(matching))} of project {hub.project_name!r}:")
            click.echo(format_table(rows[:50], columns) + (f"\n... and {len(rows) - 50} more" if len(rows) > 50 else ""))
            click.echo("nothing was deleted; pass --yes to delete them")
            return
        deleted = _deleter(hub, kind)(**parsed)
        click.echo(f"deleted {noun(kind, deleted)} of project {hub.project_name!r}")


COMMANDS = (ls_command, show_command, rm_command)
__all__ = ["COMMANDS", "list_records"]
