"""Progress bars that appear only when a person is watching (stderr is a terminal)."""

from __future__ import annotations

import os
import sys
from typing import Any

from tqdm.auto import tqdm


def interactive() -> bool:
    """True when stderr is a terminal and ``TENSORHUB_PROGRESS`` is not ``0``."""
    setting = os.environ.get("TENSORHUB_PROGRESS")
    if setting is not None:
        return setting not in ("0", "false", "no")
    return sys.stderr.isatty()


def progress_bar(**kwargs: Any) -> tqdm:
    """A tqdm bar, disabled unless :func:`interactive`."""
    return tqdm(disable=not interactive(), leave=False, **kwargs)
