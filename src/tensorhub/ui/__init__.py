"""The dashboard (``tensorhub ui``): projects, runs with live status and curves, comparisons,
datasets, models and the queue, in a browser. Needs ``tensorhub[ui]`` (Starlette, uvicorn, Jinja2,
plotly). Every asset is served from the installed packages: no CDN, nothing downloaded at run time.

``create_app(hub)`` is the ASGI app; ``serve(hub)`` runs it with uvicorn in the foreground;
``start_server(hub, port=0)`` runs it in a thread and returns its port (tests, notebooks).
"""

from __future__ import annotations

from tensorhub.ui.app import create_app
from tensorhub.ui.server import Server, check_host, serve, start_server

__all__ = ["Server", "check_host", "create_app", "serve", "start_server"]
