"""How polling loops wait between two looks at a store: runners (``tensorhub worker``) and study drivers.

A poll that found work is followed quickly by the next; polls that find nothing back off, doubling
their wait up to the caller's ``poll``. Where the index store can tell cheaply that nothing was
written since the last look (:meth:`~tensorhub.backends.base.IndexStore.change_token`, ``file://``),
the wait goes on, checked every :data:`FAST` seconds, until something was written or ``poll`` has
passed. A runner or driver on such a store then reacts within milliseconds of a change (a trial
that ended, a task queued) while an idle one costs a ``PRAGMA`` every few milliseconds, not a query.
Elsewhere the backoff alone bounds how often an idle poller queries the store.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Any

#: seconds between two looks at a change token, and the first wait after a productive poll where
#: the store has tokens
FAST = 0.002


class ChangeWait:
    """The wait between two polls of one store. Call :meth:`mark` before a poll reads the store and
    :meth:`wait` after it.

    Args:
        change_token: The store's :meth:`~tensorhub.backends.base.IndexStore.change_token`.
        poll: The longest wait, in seconds (a poll at least this often, whatever the token says:
            leases expire without a write).
        first: The first wait after a productive poll where the store has no tokens.
    """

    def __init__(self, change_token: Callable[[], Any], poll: float, first: float) -> None:
        self._token_of = change_token
        self.poll = poll
        self._first = first
        self._token: Any = None
        self.delay = 0.0

    def mark(self) -> None:
        """Take the store's token: a write after this moment ends the next :meth:`wait` early."""
        self._token = self._token_of()

    def wait(self, progress: bool, stop: threading.Event | None = None, deadline: float | None = None) -> None:
        """Wait before the next poll: after ``progress`` the shortest wait, else twice the last (up to
        ``poll``); then, where the store has tokens, on until it was written to or ``poll`` has passed.
        Returns early when ``stop`` is set or at ``deadline`` (a ``time.monotonic()`` value)."""
        tokens = self._token is not None
        start = time.monotonic()
        if progress or self.delay <= 0:
            self.delay = min(FAST if tokens else self._first, self.poll)
        else:
            self.delay = min(self.delay * 2, self.poll)
        end = start + (self.poll if tokens else self.delay)
        if deadline is not None:
            end = min(end, deadline)
        earliest = start + self.delay
        while True:
            now = time.monotonic()
            if now >= end or (tokens and now >= earliest and self._token_of() != self._token):
                return
            pause = max(0.0, min(FAST if tokens and now >= earliest else earliest - now, end - now))
            if stop is not None:
                if stop.wait(pause):
                    return
            else:
                time.sleep(pause)
