"""Small text helpers shared by error messages."""

from __future__ import annotations

from collections.abc import Sequence

#: How many offending items an error message lists before "... and N more".
MAX_SHOWN = 5


def first_few(items: Sequence[str], unit: str = "rows", limit: int = MAX_SHOWN) -> str:
    """``"a, b, c"`` or ``"a, ..., e ... and 3 more (8 rows in total)"``."""
    text = ", ".join(items[:limit])
    extra = len(items) - limit
    return text + (f" ... and {extra} more ({len(items)} {unit} in total)" if extra > 0 else "")
