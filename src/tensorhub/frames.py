"""``as_frame=True``: rows of a ``find_*`` as a pandas DataFrame (pandas is optional: ``tensorhub[frames]``)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from tensorhub.errors import ConfigurationError


def to_frame(rows: list[dict], what: str, columns: Sequence[str] | None = None) -> Any:
    """``rows`` as a DataFrame, one column per field (``columns`` name them when there is no row)."""
    try:
        import pandas
    except ImportError as exc:
        raise ConfigurationError(f"as_frame=True needs pandas (pip install pandas, or 'tensorhub[frames]'); without "
                                 f"it, {what} returns a list of dicts") from exc
    if not rows:
        return pandas.DataFrame(columns=list(columns or []))
    return pandas.DataFrame(rows)
