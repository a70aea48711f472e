"""Progress bars that appear only when a person is watching (stderr is a terminal)."""

from __future__ import annotations

import os
import sys
from typing import Any

from tqdm.auto import tqdm


def interactive() -> bool:
    """True when a person is watching: stderr is a terminal, or this is a Jupyter kernel (its stderr is
    no terminal, and tqdm.auto draws a widget there). ``TENSORHUB_PROGRESS=0``/``1`` decides instead."""
    setting = os.environ.get("TENSORHUB_PROGRESS")
    if setting is not None:
        return setting not in ("0", "false", "no")
    isatty = getattr(sys.stderr, "isatty", None)
    return bool(isatty and isatty()) or _in_notebook()


def _in_notebook() -> bool:
    ipython = sys.modules.get("IPython")  # only if already imported: never import IPython for this
    try:
        shell = ipython.get_ipython() if ipython is not None else None
    except Exception:  # noqa: BLE001 - a half-initialised IPython is no notebook
        return False
    return getattr(shell, "kernel", None) is not None


def progress_bar(**kwargs: Any) -> tqdm:
    """A tqdm bar, disabled unless :func:`interactive`."""
    return tqdm(disable=not interactive(), leave=False, **kwargs)
