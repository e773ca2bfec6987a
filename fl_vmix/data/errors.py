"""The one exception type of the data layer.

`DataError` subclasses `ValueError` so callers that already guard against bad input with
`except ValueError` keep working; every message names the problem *and* the fix.
"""

from __future__ import annotations


class DataError(ValueError):
    """Bad dataset name, missing/corrupt files or impossible partitioning; the message says how to fix it."""
