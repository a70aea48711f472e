"""``tensorhub import-tensorlayer``: bring a TensorLayer (``tl.db.TensorHub``) MongoDB database into a store."""

from __future__ import annotations

import click

from tensorhub.commands.common import resolve_uri
from tensorhub.hub import TensorHub
from tensorhub.importers.tensorlayer import WHY_PICKLE, import_tensorlayer, survey_tensorlayer


@click.command("import-tensorlayer")
@click.argument("source", metavar="MONGODB_URI")
@click.option("--to", "--uri", "to", default=None, metavar="URI",
              help="The destination store (--uri is the same; default: $TENSORHUB_URI, else the embedded store).")
@click.option("--project", "-p", "projects", multiple=True, metavar="NAME",
              help="Import only this TensorLayer project (repeatable; default: every project). Each goes into "
                   "the tensorhub project of the same name.")
@click.option("--trust-pickle", is_flag=True,
              help="Read the pickled datasets and parameters (only numpy arrays and Python containers/scalars are "
                   "rebuilt). Without it the command only lists what it found.")
def import_tensorlayer_command(source: str, to: str | None, projects: tuple[str, ...], trust_pickle: bool) -> None:
    """Import a TensorLayer database (datasets, model parameters, logs, tasks) from MONGODB_URI.

    Times and the user's fields are kept; a model's TensorLayer architecture is kept as JSON text only
    (parameters are imported). A second run skips what the first imported.
    """
    if not trust_pickle:
        report = survey_tensorlayer(source, projects or None)
        for line in report.lines():
            click.echo(line)
        raise click.ClickException("nothing imported: " + WHY_PICKLE.replace("trust_pickle=True (--trust-pickle)",
                                                                             "--trust-pickle"))
    with TensorHub(resolve_uri(to)) as hub:
        report = import_tensorlayer(source, hub, projects or None, trust_pickle=True)
    for line in report.lines():
        click.echo(line)


COMMANDS = (import_tensorlayer_command,)
