"""``tensorhub study``: drive a study (``hub.run_study``) from the command line."""

from __future__ import annotations

import json
import logging

import click

from tensorhub.commands.common import open_hub, project_option, uri_option


@click.command("study")
@click.argument("name")
@uri_option
@project_option
@click.option("--timeout", default=None, type=click.FloatRange(min=0),
              help="Drive at most this many seconds (run it again to continue). Default: until done.")
@click.option("--poll", default=0.5, show_default=True, type=click.FloatRange(min=0, min_open=True),
              help="Longest wait between two looks at the store (file://: a write ends it).")
@click.option("--once", is_flag=True, help="One pass (tell, prune, queue trials), then exit.")
def study_command(name: str, uri: str | None, project: str | None, timeout: float | None, poll: float,
                  once: bool) -> None:
    """Drive the study NAME (made by hub.create_study) until all its trials ended; print what it found.

    Keeps the study's trials queued for `tensorhub worker` runners, each trial's parameters chosen
    by Optuna told every ended trial. Its state is in the store: after a crash, run it again.
    A study created with an Optuna sampler or pruner object needs hub.run_study instead.
    """
    if not logging.getLogger().isEnabledFor(logging.INFO):
        logging.getLogger("tensorhub").setLevel(logging.INFO)
    with open_hub(uri, project, must_exist=True) as hub:
        summary = hub.run_study(name, timeout=timeout, poll=poll, wait=not once)
    click.echo(json.dumps(summary, default=str))


COMMANDS = (study_command,)
