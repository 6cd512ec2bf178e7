"""The one error type of the data layer."""

from __future__ import annotations


class DataError(ValueError):
    """Input data that cannot be used. The message names the file or CSV row and what to do."""
