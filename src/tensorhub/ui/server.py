"""Serving the dashboard with uvicorn: in the foreground (``tensorhub ui``), or in a thread on a
free port (tests, notebooks), returning the port it bound."""

from __future__ import annotations

import ipaddress
import logging
import threading
import time
from typing import Any

import uvicorn

from tensorhub.errors import ConfigurationError, TensorHubError
from tensorhub.hub import TensorHub

log = logging.getLogger(__name__)

DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 8765


def is_loopback(host: str) -> bool:
    """Whether ``host`` is a loopback name or address (127.0.0.0/8, ::1, localhost)."""
    if host.strip("[]").lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def check_host(host: str, token: str | None) -> None:
    """Refuse to listen beyond this machine without a token.

    Args:
        host: The address to bind.
        token: The token every request will need, or None.

    Raises:
        ConfigurationError: ``host`` is not a loopback address and no token is set.
    """
    if not is_loopback(host) and not token:
        raise ConfigurationError(f"--host {host} makes the dashboard reachable from other machines: set a token "
                                 "(--token or $TENSORHUB_UI_TOKEN), or bind 127.0.0.1")


class Server:
    """A uvicorn server running the dashboard in a daemon thread; ``stop()`` ends it."""

    def __init__(self, server: uvicorn.Server, thread: threading.Thread) -> None:
        self._server = server
        self._thread = thread
        sockets = [s for srv in (server.servers or []) for s in (srv.sockets or [])]
        #: the port the server listens on (the real one when 0 was asked for)
        self.port: int = int(sockets[0].getsockname()[1])

    def stop(self, timeout: float = 10.0) -> None:
        """Ask the server to exit and wait for its thread (at most ``timeout`` seconds).

        Args:
            timeout: Seconds to wait for the thread.
        """
        self._server.should_exit = True
        self._thread.join(timeout)


def _config(hub: TensorHub, host: str, port: int, token: str | None, allow_actions: bool) -> uvicorn.Config:
    from tensorhub.ui.app import create_app

    check_host(host, token)
    app = create_app(hub, token=token, allow_actions=allow_actions)
    return uvicorn.Config(app, host=host, port=port, log_level="warning", lifespan="on", access_log=False)


def serve(hub: TensorHub, host: str = DEFAULT_HOST, port: int = DEFAULT_PORT, token: str | None = None,
          allow_actions: bool = False) -> None:
    """Serve the dashboard in this thread until interrupted (what ``tensorhub ui`` runs).

    Args:
        hub: The store and default project to show.
        host: The address to bind. Default 127.0.0.1; any other than a loopback one needs ``token``.
        port: The port. Default 8765.
        token: The token every request needs. Default None (loopback only).
        allow_actions: Enable cancel / requeue / delete. Default False.

    Raises:
        ConfigurationError: A non-loopback ``host`` without ``token``.
    """
    uvicorn.Server(_config(hub, host, port, token, allow_actions)).run()


def start_server(hub: TensorHub, host: str = DEFAULT_HOST, port: int = 0, token: str | None = None,
                 allow_actions: bool = False, timeout: float = 30.0) -> Server:
    """Serve the dashboard from a daemon thread; return once it listens (its ``.port``, ``.stop()``).

    Args:
        hub: The store and default project to show.
        host: The address to bind. Default 127.0.0.1.
        port: The port. Default 0: a free one (read it from ``.port``).
        token: The token every request needs. Default None.
        allow_actions: Enable cancel / requeue / delete. Default False.
        timeout: Seconds to wait for the server to start.

    Returns:
        The running :class:`Server`.

    Raises:
        ConfigurationError: A non-loopback ``host`` without ``token``.
        TensorHubError: The server did not start within ``timeout`` seconds.
    """
    server = uvicorn.Server(_config(hub, host, port, token, allow_actions))
    thread = threading.Thread(target=server.run, name="tensorhub-ui", daemon=True)
    thread.start()
    deadline = time.monotonic() + timeout
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            server.should_exit = True
            raise TensorHubError(f"the dashboard did not start on {host}:{port}")
        time.sleep(0.02)
    return Server(server, thread)
