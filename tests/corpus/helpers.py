"""Helpers shared by the corpus tests: write a corpus file, check that an error is one line."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from itda_core.errors import ITDAError


def write_text(path: Path, text: str) -> Path:
    """Write ``text`` to ``path`` as UTF-8 and return the path."""
    path.write_text(text, encoding="utf-8")
    return path


def write_jsonl(path: Path, rows: list[object]) -> Path:
    """Write one JSON value per line to ``path`` and return the path."""
    return write_text(path, "\n".join(json.dumps(r) for r in rows) + "\n")


def one_line_error(excinfo: pytest.ExceptionInfo[ITDAError]) -> str:
    """The error's message, checked to be a single non-empty line."""
    message = str(excinfo.value)
    assert "\n" not in message and message
    return message
