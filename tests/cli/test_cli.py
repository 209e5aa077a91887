"""CLI: help text, one-line errors, and `itda train` end to end on a local model."""

from __future__ import annotations

import json
import subprocess
import sys

import torch
from typer.testing import CliRunner

from itda_core.cli.app import app
from itda_core.dictionary import ITDA
from tests.tiny import TEXTS, tiny_model


def test_help_lists_commands_and_options():
    runner = CliRunner()
    result = runner.invoke(app, ["--help"])
    assert result.exit_code == 0
    for command in ("train", "models", "corpus-stats", "check-provenance"):
        assert command in result.output
    result = runner.invoke(app, ["train", "--help"])
    assert result.exit_code == 0
    for option in ("--model", "--layers", "--max-tokens", "--threshold", "--k", "--out", "--save-on-interrupt",
                   "--gram-memory-gib", "--no-early-stop"):
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


def test_train_end_to_end_on_a_local_model(tmp_path):
    # `itda train` on a model folder and a .jsonl corpus: one dictionary folder per layer, loadable, and the
    # same dictionaries with and without early stop
    made = tiny_model("gpt2")
    folder = tmp_path / "tiny-gpt2"
    made.model.save_pretrained(folder)
    made.tokenizer.save_pretrained(folder)
    corpus = tmp_path / "docs.jsonl"
    corpus.write_text("".join(json.dumps({"text": t}) + "\n" for t in TEXTS * 3))
    runner = CliRunner()
    outputs = {}
    for flag in ("--early-stop", "--no-early-stop"):
        out = tmp_path / flag
        result = runner.invoke(app, ["train", "--model", str(folder), "--corpus", str(corpus), "--layers", "0,2",
                                     "--k", "6", "--batch-size", "4", "--held-out", "0.2", "--out", str(out),
                                     "--no-progress", flag])
        assert result.exit_code == 0, result.output
        assert "mean error (last batches" in result.output and "saved 2 dictionaries" in result.output
        assert ("every 7th token" in result.output) == (flag == "--early-stop")  # else every token counts
        sites = sorted(p.name for p in next(out.iterdir()).iterdir())
        assert sites == ["blocks.0.hook_resid_post", "blocks.2.hook_resid_post"]
        outputs[flag] = [ITDA.load(p) for p in sorted(next(out.iterdir()).iterdir())]
    for fast, full in zip(outputs["--early-stop"], outputs["--no-early-stop"], strict=True):
        assert torch.equal(fast.atoms, full.atoms) and fast.provenance.keys() == full.provenance.keys()


def _readme_commands() -> list[str]:
    """Every ``itda ...`` line of README.md's code blocks, without its trailing comment."""
    import re
    from pathlib import Path

    readme = (Path(__file__).resolve().parents[2] / "README.md").read_text()
    blocks = re.findall(r"```(?:bash|sh|console)?\n(.*?)```", readme, flags=re.S)
    lines = [line.split("  #")[0].strip() for block in blocks for line in block.splitlines()]
    return [line for line in lines if line.startswith("itda ")]


def _parse_command_line(line: str) -> None:
    """Parse an ``itda`` command line the way the CLI would (options, arguments, sub-commands), running nothing."""
    import shlex

    import typer

    command = typer.main.get_command(app)  # typer's own click: groups are told apart by resolve_command
    args, parent, name = shlex.split(line)[1:], None, "itda"
    while True:
        try:
            ctx = command.make_context(name, list(args), parent=parent)
        except typer.Exit:  # --help
            return
        if not hasattr(command, "resolve_command"):
            return
        rest = [*getattr(ctx, "_protected_args", []), *ctx.args]
        name, sub, args = command.resolve_command(ctx, rest)
        assert sub is not None, line
        command, parent = sub, ctx


def test_readme_command_lines_parse():
    lines = _readme_commands()
    assert len(lines) > 15 and any(line.startswith("itda eval") for line in lines)
    for line in lines:
        try:
            _parse_command_line(line)
        except Exception as err:  # a usage error names the README line that no longer matches the CLI
            raise AssertionError(f"README: {line!r}: {err}") from err
