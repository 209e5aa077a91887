"""The ``itda`` app: its commands come from one module per command group (train, inputs, store, similarity,
evaluate, dashboard, export, extract, bench, convergence). Heavy imports happen inside commands so that ``--help``
is instant."""

from __future__ import annotations

import sys

import typer

from itda_core.errors import ITDAError

app = typer.Typer(
    help="ITDA: build dictionaries of real language-model activations, read their atoms, compare layers "
    "and models. Models: embedded aliases (smollm2-135m, gemma3-270m, minilm-l6), a Hugging Face id, a "
    "local folder or a .gguf file. Corpora: 'default' (embedded English), a .txt or .jsonl file, or a "
    "Hugging Face dataset.",
    no_args_is_help=True,
    add_completion=False,
    rich_markup_mode="markdown",
    pretty_exceptions_enable=False,
)

def _register_commands() -> None:
    """Commands that live in their own modules (one concern each)."""
    from itda_core.cli import bench as bench_commands
    from itda_core.cli import convergence as convergence_commands
    from itda_core.cli import dashboard as dashboard_commands
    from itda_core.cli import evaluate as evaluate_commands
    from itda_core.cli import export as export_commands
    from itda_core.cli import extract as extract_commands
    from itda_core.cli import inputs as input_commands
    from itda_core.cli import similarity as similarity_commands
    from itda_core.cli import store as store_commands
    from itda_core.cli import train as train_commands

    train_commands.register(app)
    input_commands.register(app)
    similarity_commands.register(app)
    evaluate_commands.register(app)
    store_commands.register(app)
    dashboard_commands.register(app)
    export_commands.register(app)
    extract_commands.register(app)
    bench_commands.register(app)
    convergence_commands.register(app)


_register_commands()


def main() -> None:
    """Entry point: run the app, turning user errors into one line on stderr."""
    try:
        app()
    except ITDAError as err:
        typer.echo(f"error: {err}", err=True)
        sys.exit(2)
    except KeyboardInterrupt:
        typer.echo("interrupted", err=True)
        sys.exit(130)


if __name__ == "__main__":
    main()
