"""``tensorhub upgrade``: rewrite datasets saved in an older chunk format in the current one.

Datasets saved before chunk format 2 (issue 15) load as they are, but their chunks are not
zarr-decodable (an incompressible chunk is raw bytes, the last one unpadded), so ``hub.open_zarr``
re-encodes each chunk as it reads it. This command rewrites them once, through
:meth:`tensorhub.TensorHub.upgrade_datasets` (new chunks first, then an atomic swap of each record,
then the old chunks no record uses are deleted).
"""

from __future__ import annotations

import click

from tensorhub.commands.common import open_hub, parse_query, project_option, resolve_uri, uri_option


@click.command("upgrade")
@uri_option
@project_option
@click.option("--all-projects", is_flag=True, help="Upgrade the datasets of every project of the store.")
@click.option("--dry-run", is_flag=True, help="Count what would be rewritten; write nothing.")
@click.argument("query", required=False)
def upgrade_command(uri: str | None, project: str | None, all_projects: bool, dry_run: bool,
                    query: str | None) -> None:
    """Rewrite datasets in an older chunk format in the current one (zarr, xarray and dask read it).

    QUERY (optional) picks the datasets: a dataset id or a JSON filter, e.g. '{"dataset_name": "mnist"}'.
    """
    filters = parse_query(query) if query else {}
    with open_hub(uri, project, must_exist=True) as hub:
        projects = [p["project_name"] for p in hub.list_projects()] if all_projects else [hub.project_name]
    total = {"datasets": 0, "arrays": 0, "current": 0}
    for name in projects:
        with open_hub(resolve_uri(uri), name, must_exist=True) as hub:
            counts = hub.upgrade_datasets(dry_run=dry_run, **dict(filters))
        for key in total:
            total[key] += counts[key]
    verb = "would rewrite" if dry_run else "rewrote"
    click.echo(f"{verb} {total['datasets']} dataset(s) ({total['arrays']} array(s)) in the current chunk format; "
               f"{total['current']} dataset(s) already current")


COMMANDS = [upgrade_command]
