"""User-facing errors: one clear line that says what went wrong and what to do."""

from __future__ import annotations


class ITDAError(Exception):
    """An error caused by the user's input or environment, printed as one line by the CLI."""
