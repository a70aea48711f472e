"""``tensorhub copy [SRC] DST``: copy projects between two stores of any backends (:mod:`tensorhub.copying`)."""

from __future__ import annotations

import click

from tensorhub.commands.common import resolve_uri
from tensorhub.copying import KINDS
from tensorhub.hub import TensorHub


@click.command("copy")
@click.argument("stores", metavar="[SRC] DST", nargs=-1, required=True)
@click.option("--uri", default=None, metavar="URI",
              help="The source store when SRC is not given (else $TENSORHUB_URI, else the embedded default), as "
                   "for every other command.")
@click.option("--project", "-p", "projects", multiple=True, metavar="NAME",
              help="Copy only this project (repeatable; default: every project of SRC).")
@click.option("--kinds", default=None, metavar="KINDS",
              help=f"Comma-separated record kinds to copy, among {','.join(KINDS)} (default: all).")
@click.option("--since", default=None, metavar="TIME",
              help="Only records saved (tasks: created) at or after this ISO 8601 date/time (UTC unless it "
                   "has an offset), e.g. 2024-05-01.")
@click.option("--dry-run", is_flag=True, help="Write nothing: print what would be copied (records, chunks, bytes).")
@click.option("--overwrite", is_flag=True,
              help="Replace destination records that have the same id but other content (default: report and "
                   "skip them).")
@click.option("--src-blobs", default=None, metavar="URI", help="SRC's blob store, when its blobs live elsewhere.")
@click.option("--dst-blobs", default=None, metavar="URI", help="DST's blob store, when its blobs live elsewhere.")
def copy_command(stores: tuple[str, ...], uri: str | None, projects: tuple[str, ...], kinds: str | None,
                 since: str | None, dry_run: bool, overwrite: bool, src_blobs: str | None,
                 dst_blobs: str | None) -> None:
    """Copy projects from the store SRC to the store DST (any backends), records kept as stored.

    Ids, times, tags, lineage and task history are kept; blobs are copied before each record, so an
    interrupted copy leaves no record without its bytes, and running it again copies only what is
    missing. Exits 1 when a record could not be copied (its source bytes are missing or damaged).
    """
    if len(stores) > 2 or (len(stores) == 2 and uri is not None):
        raise click.UsageError("give the source once (SRC or --uri) and the destination DST: "
                               "tensorhub copy SRC DST, or tensorhub copy --uri SRC DST")
    source, destination = stores if len(stores) == 2 else (resolve_uri(uri), stores[0])
    # SRC must exist (a mistyped path is an error, not an empty copy); DST is created by the first write
    with TensorHub(source, project_name="default", blobs=src_blobs, create=False) as src, \
            TensorHub(destination, project_name="default", blobs=dst_blobs) as dst:
        report = src.copy_to(dst, projects=list(projects) or None, kinds=kinds, since=since, dry_run=dry_run,
                             overwrite=overwrite)
    for line in report.lines():
        click.echo(line)
    if report.errors:
        raise click.ClickException(f"{len(report.errors)} record(s) were not copied (see above)")


COMMANDS = (copy_command,)
