"""``tensorhub ui``: the dashboard (:mod:`tensorhub.ui`) over a store, in a browser."""

from __future__ import annotations

import logging
import os
import threading
import webbrowser

import click

from tensorhub.commands.common import open_hub, project_option, uri_option
from tensorhub.errors import ConfigurationError

log = logging.getLogger(__name__)

#: the environment variable that holds the dashboard's token (a command line is visible to `ps`)
ENV_UI_TOKEN = "TENSORHUB_UI_TOKEN"


@click.command("ui")
@uri_option
@project_option
@click.option("--host", default="127.0.0.1", show_default=True,
              help="Address to listen on; any other than a loopback one needs --token.")
@click.option("--port", default=8765, show_default=True, type=click.IntRange(0, 65535), help="Port to listen on.")
@click.option("--open", "open_browser", is_flag=True, help="Open the dashboard in a web browser.")
@click.option("--token", default=None, metavar="TOKEN",
              help=f"Every request needs this token (default: ${ENV_UI_TOKEN}).")
@click.option("--allow-actions", is_flag=True, help="Enable the cancel / requeue / delete buttons.")
def ui_command(uri: str | None, project: str | None, host: str, port: int, open_browser: bool,
               token: str | None, allow_actions: bool) -> None:
    """Serve the dashboard: projects, runs (live), curves, comparisons, datasets, models, queue.

    Read-only unless --allow-actions. Listens on 127.0.0.1 unless --host; another address needs a
    token (--token or $TENSORHUB_UI_TOKEN), which every request must then carry.
    """
    try:
        from tensorhub.ui.server import check_host, serve
    except ImportError as exc:
        raise click.ClickException(f"the dashboard needs tensorhub[ui] (pip install 'tensorhub[ui]'): {exc}") from exc
    token = token or os.environ.get(ENV_UI_TOKEN) or None
    try:
        check_host(host, token)
    except ConfigurationError as exc:
        raise click.UsageError(str(exc)) from exc
    with open_hub(uri, project, must_exist=True) as hub:
        address = f"http://{'[' + host + ']' if ':' in host else host}:{port}/?project={hub.project_name}"
        click.echo(f"tensorhub dashboard on {address} ({'actions enabled' if allow_actions else 'read-only'}); "
                   "Ctrl-C stops it", err=True)
        if open_browser:
            threading.Timer(1.0, webbrowser.open, [address + (f"&token={token}" if token else "")]).start()
        serve(hub, host=host, port=port, token=token, allow_actions=allow_actions)


COMMANDS = [ui_command]
