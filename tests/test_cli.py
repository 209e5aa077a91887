"""CLI: layer parsing, help text, and one-line errors."""

from __future__ import annotations

import subprocess
import sys

import pytest
from typer.testing import CliRunner

from itda_core.cli import app, parse_layers
from itda_core.errors import ITDAError


@pytest.mark.parametrize(
    ("spec", "expected"),
    [
        ("all", list(range(6))),
        ("middle", [3]),
        ("2", [2]),
        ("0-2", [0, 1, 2]),
        ("0,4-5", [0, 4, 5]),
        ("-1", [5]),
        ("1, 1, 0", [0, 1]),
    ],
)
def test_parse_layers(spec, expected):
    assert parse_layers(spec, 6) == expected


@pytest.mark.parametrize(
    ("spec", "message"), [("7", "out of range"), ("a-b", "cannot read"), ("3-1", "backwards"), (",", "no layers")]
)
def test_parse_layers_errors(spec, message):
    with pytest.raises(ITDAError, match=message):
        parse_layers(spec, 6)


def test_help_lists_commands_and_options():
    runner = CliRunner()
    result = runner.invoke(app, ["--help"])
    assert result.exit_code == 0
    for command in ("train", "models", "corpus-stats", "check-provenance"):
        assert command in result.output
    result = runner.invoke(app, ["train", "--help"])
    assert result.exit_code == 0
    for option in ("--model", "--layers", "--max-tokens", "--threshold", "--k", "--out", "--save-on-interrupt",
                   "--gram-memory-gib"):
        assert option in result.output


def test_user_error_is_one_line_exit_2():
    proc = subprocess.run(
        [sys.executable, "-m", "itda_core.cli", "train", "--model", "smollm2"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 2
    assert proc.stderr.strip().startswith("error:") and len(proc.stderr.strip().splitlines()) == 1
