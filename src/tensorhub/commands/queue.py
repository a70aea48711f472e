"""``tensorhub cancel``, ``requeue`` and ``worker``: the task queue from the command line."""

from __future__ import annotations

import logging

import click

from tensorhub.commands.common import open_hub, parse_query, project_option, resolve_uri, uri_option
from tensorhub.context import ENV_URI
from tensorhub.errors import InvalidArgumentError

@click.command("cancel")
@click.argument("query", metavar="QUERY|ID")
@uri_option
@project_option
def cancel_command(query: str, uri: str | None, project: str | None) -> None:
    """Cancel matching tasks: pending ones never start, running ones are stopped.

    QUERY is a JSON MongoDB query over task records (e.g. '{"task_name": "mnist"}') or a task id.
    """
    parsed = parse_query(query)
    with open_hub(uri, project, must_exist=True) as hub:
        count = hub.cancel_tasks(**parsed)
        click.echo(f"cancelled {count} task(s) of project {hub.project_name!r}")


@click.command("requeue")
@click.argument("query", metavar="QUERY|ID")
@uri_option
@project_option
def requeue_command(query: str, uri: str | None, project: str | None) -> None:
    """Put matching failed or cancelled tasks back to pending (their history is kept).

    QUERY is a JSON MongoDB query over task records (e.g. '{"status": "failed"}') or a task id.
    """
    parsed = parse_query(query)
    with open_hub(uri, project, must_exist=True) as hub:
        count = hub.requeue_tasks(**parsed)
        click.echo(f"requeued {count} task(s) of project {hub.project_name!r}")


@click.command("worker")
@click.argument("uri_argument", metavar="[URI]", required=False)
@uri_option
@project_option
@click.option("--task-name", default=None, help="Only run tasks with this task_name.")
@click.option("--lease", default=60.0, show_default=True, type=click.FloatRange(min=0, min_open=True),
              help="Seconds a claim lasts without a heartbeat.")
@click.option("--poll", default=2.0, show_default=True, type=click.FloatRange(min=0, min_open=True),
              help="Longest wait between polls of an empty queue (file://: a write to the store ends it).")
@click.option("--idle-exit", default=None, type=click.FloatRange(min=0),
              help="Exit after this many seconds with no task.")
@click.option("--max-tasks", default=None, type=click.IntRange(min=1), help="Exit after running this many tasks.")
@click.option("--idle-log", default=60.0, show_default=True, type=click.FloatRange(min=0, min_open=True),
              help="While idle, log this often how many tasks are pending here and in other projects.")
@click.option("--in-process", is_flag=True, help="Run scripts in this process (TensorLayer's way), not in a child.")
def worker_command(uri_argument: str | None, uri: str | None, project: str | None, task_name: str | None,
                   lease: float, poll: float, idle_exit: float | None, max_tasks: int | None,
                   idle_log: float, in_process: bool) -> None:
    """Pull tasks and run them, until SIGTERM/SIGINT, --idle-exit or --max-tasks.

    URI (positional) is the same as --uri. Without either, $TENSORHUB_URI: use it for a URI with
    a password (a command line is visible to `ps`).
    """
    from tensorhub.worker import Worker, WorkerOptions

    if uri_argument and uri and uri_argument != uri:
        raise click.UsageError(f"URI given twice and different: the argument and --uri; pass one "
                               f"(or set ${ENV_URI})")
    uri = uri or uri_argument
    if not logging.getLogger().isEnabledFor(logging.INFO):
        logging.getLogger("tensorhub").setLevel(logging.INFO)
    try:
        options = WorkerOptions(task_name=task_name, lease=lease, poll=poll, idle_exit=idle_exit,
                                max_tasks=max_tasks, idle_log=idle_log, in_process=in_process)
    except InvalidArgumentError as exc:  # e.g. --lease nan, which click's FloatRange lets through
        raise click.BadParameter(str(exc)) from exc
    with open_hub(resolve_uri(uri), project) as hub:
        worker = Worker(hub, options)
        worker.install_signal_handlers()
        ran = worker.run()
    logging.getLogger("tensorhub.worker").info("worker ran %d task(s)", ran)


COMMANDS = (cancel_command, requeue_command, worker_command)
