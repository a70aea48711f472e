"""The ``tensorhub`` command: ``demo``, ``ls``, ``worker`` and ``gc``."""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Sequence

import click

from tensorhub import datasets as _datasets
from tensorhub import logs as _logs
from tensorhub.context import ENV_PROJECT, ENV_URI
from tensorhub.errors import InvalidArgumentError
from tensorhub.hub import TensorHub
from tensorhub.records import COMMON_INTERNAL_FIELDS
from tensorhub.registry import DEFAULT_URI
from tensorhub.table import format_table

__all__ = ["format_table", "list_records", "main"]  # format_table: re-exported from tensorhub.table

KINDS = ("datasets", "models", "tasks", "logs", "training-logs", "validation-logs", "testing-logs")


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


def list_records(hub: TensorHub, kind: str, limit: int, query: dict) -> tuple[list[dict], list[str]]:
    """The rows and columns ``tensorhub ls KIND`` prints."""
    if kind == "datasets":
        rows = hub.find_dataset_records(limit=limit, **query)
        for row in rows:
            row["arrays"] = _shape_summary(row)
            row["MB"] = row.get("nbytes", 0) / 1e6
        fixed = ["dataset_name", "time", "MB", "arrays"]
        internal = _datasets.INTERNAL_FIELDS
    elif kind == "models":  # the table of hub.compare_models(): newest first, every numeric field a column
        rows = hub.compare_models(limit=limit, **query)
        for row in rows:
            row["id"] = str(row["id"])
        columns = list(dict.fromkeys(key for row in rows for key in row))
        return rows, columns[:10]  # model_name, time, id, adapter and up to 6 metrics
    elif kind == "tasks":
        rows = hub.find_tasks(limit=limit, **query)
        for row in rows:
            row["params"] = row.get("hyper_parameters")
            row["result"] = row.get("result") or row.get("error")
        fixed = ["task_name", "time", "status", "attempts", "params", "result"]
        return rows, fixed
    else:
        which = "training" if kind in ("logs", "training-logs") else kind.split("-")[0]
        rows = getattr(hub, f"find_{which}_logs")(limit=limit, **query)
        fixed = ["time"]
        internal = _logs.INTERNAL_FIELDS
    return rows, fixed + _extra_columns(rows, fixed, internal)


def _hub(uri: str | None, project: str | None) -> TensorHub:
    return TensorHub(uri or os.environ.get(ENV_URI) or DEFAULT_URI,
                     project_name=project or os.environ.get(ENV_PROJECT) or "default")


@click.group()
@click.option("-v", "--verbose", count=True, help="More logging (-v info, -vv debug).")
def main(verbose: int) -> None:
    """tensorhub: datasets, models, logs and task queues in one queryable store."""
    level = logging.WARNING - 10 * min(verbose, 2)
    logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")


@main.command("ls")
@click.argument("kind", type=click.Choice(KINDS))
@click.option("--uri", default=None, help=f"Store URI (default: ${ENV_URI} or {DEFAULT_URI}).")
@click.option("--project", "-p", default=None, help="Project name (default: $TENSORHUB_PROJECT or 'default').")
@click.option("--limit", "-n", default=50, show_default=True, help="At most this many rows, newest first.")
@click.option("--query", "-q", default="{}", help='A MongoDB query as JSON, e.g. \'{"status": "failed"}\'.')
def ls_command(kind: str, uri: str | None, project: str | None, limit: int, query: str) -> None:
    """List datasets, models, tasks or logs as a table (reads records only, never blobs)."""
    try:
        parsed = json.loads(query)
    except json.JSONDecodeError as exc:
        raise click.BadParameter(f"not valid JSON: {exc}", param_hint="--query") from exc
    with _hub(uri, project) as hub:
        rows, columns = list_records(hub, kind, limit, parsed)
    click.echo(format_table(rows, columns) if rows else f"no {kind} in project {hub.project_name!r} at {hub}")


@main.command("worker")
@click.argument("uri", required=False)
@click.option("--task-name", default=None, help="Only run tasks with this task_name.")
@click.option("--project", "-p", default=None, help="Project whose tasks to run.")
@click.option("--lease", default=60.0, show_default=True, type=click.FloatRange(min=0, min_open=True),
              help="Seconds a claim lasts without a heartbeat.")
@click.option("--poll", default=2.0, show_default=True, type=click.FloatRange(min=0, min_open=True),
              help="Longest wait between polls of an empty queue.")
@click.option("--idle-exit", default=None, type=click.FloatRange(min=0),
              help="Exit after this many seconds with no task.")
@click.option("--max-tasks", default=None, type=click.IntRange(min=1), help="Exit after running this many tasks.")
@click.option("--in-process", is_flag=True, help="Run scripts in this process (TensorLayer's way), not in a child.")
def worker_command(uri: str | None, task_name: str | None, project: str | None, lease: float, poll: float,
                   idle_exit: float | None, max_tasks: int | None, in_process: bool) -> None:
    """Pull tasks from URI and run them, until SIGTERM/SIGINT, --idle-exit or --max-tasks.

    Without URI, $TENSORHUB_URI: use it for a URI with a password (a command line is visible to `ps`).
    """
    from tensorhub.worker import Worker, WorkerOptions

    if not logging.getLogger().isEnabledFor(logging.INFO):
        logging.getLogger("tensorhub").setLevel(logging.INFO)
    with _hub(uri, project) as hub:
        try:
            options = WorkerOptions(task_name=task_name, lease=lease, poll=poll, idle_exit=idle_exit,
                                    max_tasks=max_tasks, in_process=in_process)
        except InvalidArgumentError as exc:  # e.g. --lease nan, which click's FloatRange lets through
            raise click.BadParameter(str(exc)) from exc
        worker = Worker(hub, options)
        worker.install_signal_handlers()
        ran = worker.run()
    logging.getLogger("tensorhub.worker").info("worker ran %d task(s)", ran)


@main.command("gc")
@click.option("--uri", default=None, help=f"Store URI (default: ${ENV_URI} or {DEFAULT_URI}).")
@click.option("--older-than", default=24.0, show_default=True, type=click.FloatRange(min=0),
              help="Only blobs last written more than this many hours ago (a save running now keeps its own).")
@click.option("--dry-run", is_flag=True, help="Count what would be deleted; delete nothing.")
def gc_command(uri: str | None, older_than: float, dry_run: bool) -> None:
    """Delete blobs no record refers to (left by crashed saves), in every project of the store."""
    with _hub(uri, None) as hub:
        counts = hub.collect_garbage(older_than=older_than * 3600, dry_run=dry_run)
    verb = "would delete" if dry_run else "deleted"
    click.echo(f"{verb} {counts['chunks']} chunk(s) and {counts['record_blobs']} record blob(s) no record refers "
               f"to, and {counts['incomplete']} leftover(s) of killed writes; kept {counts['kept_young']} blob(s) "
               f"younger than {older_than:g} h")


@main.command("demo")
@click.option("--uri", default=None, help=f"Store URI (default: {DEFAULT_URI}).")
@click.option("--runners", default=2, show_default=True, help="Runner processes to start.")
def demo_command(uri: str | None, runners: int) -> None:
    """TensorLayer's tutorial workflow on scikit-learn's digits: dataset, three tasks, two runners, best model."""
    from tensorhub.demo import run_demo

    click.echo(run_demo(uri or DEFAULT_URI, runners=runners))


if __name__ == "__main__":  # pragma: no cover
    main()
