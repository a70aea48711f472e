"""The ``tensorhub`` command: the group, ``--version``, ``gc`` and ``demo``; the other commands live
in :mod:`tensorhub.commands` (``ls``/``show``/``rm`` in ``records``, ``cancel``/``requeue``/``worker``
in ``queue``, ``plot`` in ``plot``).

Every command takes ``--uri`` (default ``$TENSORHUB_URI``, else the embedded store) and
``--project``/``-p`` (default ``$TENSORHUB_PROJECT``, else ``"default"``). A
:class:`~tensorhub.errors.TensorHubError` ends a command with a one-line ``Error: ...`` and exit
code 1, never a traceback.
"""

from __future__ import annotations

import logging
from importlib.metadata import PackageNotFoundError, version
from typing import Any

import click

from tensorhub.commands import copy as _copy
from tensorhub.commands import import_tl as _import_tl
from tensorhub.commands import plot as _plot
from tensorhub.commands import queue as _queue
from tensorhub.commands import records as _records
from tensorhub.commands import study as _study
from tensorhub.commands import ui as _ui
from tensorhub.commands import upgrade as _upgrade
from tensorhub.commands.common import open_hub, project_option, resolve_uri, uri_option
from tensorhub.commands.records import list_records
from tensorhub.context import ENV_PROJECT, ENV_URI
from tensorhub.errors import TensorHubError
from tensorhub.registry import DEFAULT_URI
from tensorhub.table import format_table

__all__ = ["format_table", "list_records", "main"]  # format_table: re-exported from tensorhub.table


def _version() -> str:
    try:
        return version("tensorhub")
    except PackageNotFoundError:  # running from a source tree that was never installed
        return "unknown (not installed)"


class _Group(click.Group):
    """The command group: a :class:`TensorHubError` of any command is a clean ``Error: ...`` (exit 1)."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except TensorHubError as exc:
            raise click.ClickException(str(exc)) from exc


@click.group(cls=_Group, epilog=f"Defaults: --uri is ${ENV_URI}, else {DEFAULT_URI}; --project/-p is "
             f"${ENV_PROJECT}, else 'default' (a script that opens TensorHub() without project_name uses its "
             "file name instead: `tensorhub ls projects` lists every project).")
@click.version_option(_version(), "--version", prog_name="tensorhub", message="%(prog)s %(version)s")
@click.option("-v", "--verbose", count=True, help="More logging (-v info, -vv debug).")
def main(verbose: int) -> None:
    """tensorhub: datasets, models, logs and task queues in one queryable store."""
    level = logging.WARNING - 10 * min(verbose, 2)
    logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")


for _command in (*_records.COMMANDS, *_queue.COMMANDS, *_ui.COMMANDS, *_plot.COMMANDS, *_upgrade.COMMANDS,
                 *_study.COMMANDS):
    main.add_command(_command)
main.add_command(_import_tl.import_tensorlayer_command)
main.add_command(_copy.copy_command)


@main.command("gc")
@uri_option
@project_option
@click.option("--older-than", default=24.0, show_default=True, type=click.FloatRange(min=0),
              help="Only blobs last written more than this many hours ago (a save running now keeps its own).")
@click.option("--dry-run", is_flag=True, help="Count what would be deleted; delete nothing.")
def gc_command(uri: str | None, project: str | None, older_than: float, dry_run: bool) -> None:
    """Delete blobs no record refers to (left by crashed saves), in every project of the store.

    Store-wide: --project changes nothing (it is accepted as by every command).
    """
    with open_hub(uri, project, must_exist=True) as hub:
        counts = hub.collect_garbage(older_than=older_than * 3600, dry_run=dry_run)
    verb = "would delete" if dry_run else "deleted"
    click.echo(f"{verb} {counts['chunks']} chunk(s) and {counts['record_blobs']} record blob(s) no record refers "
               f"to, and {counts['incomplete']} leftover(s) of killed writes; kept {counts['kept_young']} blob(s) "
               f"younger than {older_than:g} h")


@main.command("demo")
@uri_option
@click.option("--runners", default=2, show_default=True, help="Runner processes to start.")
def demo_command(uri: str | None, runners: int) -> None:
    """TensorLayer's tutorial workflow on scikit-learn's digits: dataset, three tasks, two runners, best model.

    It always uses the project 'demo' (emptied first).
    """
    from tensorhub.demo import run_demo

    click.echo(run_demo(resolve_uri(uri), runners=runners))


if __name__ == "__main__":  # pragma: no cover
    main()
