"""Plain-text tables, as ``tensorhub ls`` and ``tensorhub demo`` print them.

Its own module so that the command (:mod:`tensorhub.cli`) and the demo (:mod:`tensorhub.demo`),
which the command runs, both import it without importing each other.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any


def format_table(rows: Sequence[dict[str, Any]], columns: Sequence[str]) -> str:
    """Rows as a plain-text table with the given columns (missing values shown empty)."""

    def cell(value: Any) -> str:
        if value is None:
            return ""
        if isinstance(value, float):
            return f"{value:.4g}"
        if hasattr(value, "strftime"):
            return value.strftime("%Y-%m-%d %H:%M:%S")
        text = value if isinstance(value, str) else json.dumps(value, default=str)
        return text if len(text) <= 40 else text[:37] + "..."

    cells = [[cell(row.get(c)) for c in columns] for row in rows]
    widths = [max([len(c)] + [len(r[i]) for r in cells]) for i, c in enumerate(columns)]
    lines = ["  ".join(c.ljust(w) for c, w in zip(columns, widths))]
    lines.append("  ".join("-" * w for w in widths))
    lines += ["  ".join(v.ljust(w) for v, w in zip(r, widths)) for r in cells]
    return "\n".join(lines)
