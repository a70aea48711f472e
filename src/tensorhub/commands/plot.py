"""``tensorhub plot``: a metric's training curves as a standalone HTML page (plotly.js inlined, no CDN)."""

from __future__ import annotations

from pathlib import Path

import click

from tensorhub.commands.common import open_hub, parse_query, project_option, uri_option
from tensorhub.logs import COLLECTIONS
from tensorhub.plots import DEFAULT_MAX_POINTS, X_FIELDS


@click.command("plot")
@click.argument("metric")
@uri_option
@project_option
@click.option("--run", "runs", multiple=True, metavar="ID", help="A run (task) id to draw; repeat for several.")
@click.option("--query", "-q", default=None, metavar="QUERY",
              help='JSON query selecting runs (task fields, e.g. \'{"run_name": "mlp"}\'), instead of --run.')
@click.option("--x", "x", default="step", show_default=True, type=click.Choice(X_FIELDS), help="The x axis.")
@click.option("--kind", default="training", show_default=True, type=click.Choice(sorted(COLLECTIONS)),
              help="Which logs.")
@click.option("--max-points", default=DEFAULT_MAX_POINTS, show_default=True, type=click.IntRange(min=2),
              help="At most this many points per line (lowest and highest of each bucket kept).")
@click.option("--output", "-o", required=True, type=click.Path(dir_okay=False, path_type=Path),
              help="The HTML file to write (standalone: opens offline).")
def plot_command(metric: str, uri: str | None, project: str | None, runs: tuple[str, ...], query: str | None,
                 x: str, kind: str, max_points: int, output: Path) -> None:
    """Write METRIC's curves (one line per run and attempt) to a standalone HTML page.

    Without --run or --query, every run of the project that logged METRIC.
    """
    if runs and query:
        raise click.UsageError("pass --run or --query, not both")
    selected = parse_query(query, "--query") if query else {}
    with open_hub(uri, project, must_exist=True) as hub:
        figure = hub.plot_logs(metric, list(runs) or None, x=x, kind=kind, max_points=max_points, **selected)
    if not figure.data:
        click.echo(f"no {kind} log rows with {metric!r} in project {hub.project_name!r}", err=True)
    figure.write_html(str(output), include_plotlyjs=True, full_html=True)
    click.echo(f"wrote {len(figure.data)} line(s) of {metric!r} to {output}")


COMMANDS = (plot_command,)
