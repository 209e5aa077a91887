"""``itda train`` (dictionaries from one pass over a corpus, optionally into a store) and ``itda
check-provenance`` (re-extract atoms' sources)."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from itda_core.cli.derive import from_configs
from itda_core.cli.options import CorpusChoice, ModelChoice, TrainOutput
from itda_core.config.extract import ActivationInput
from itda_core.config.loading import LoadingConfig, RemoteConfig
from itda_core.config.train import TrainConfig
from itda_core.errors import ITDAError
from itda_core.layers import parse_layers
from itda_core.options import CORPUS_HELP, DEVICE_HELP

if TYPE_CHECKING:
    from itda_core.corpus import Corpus
    from itda_core.dictionary import ITDA
    from itda_core.models import LoadedModel


@from_configs
def train(source: ModelChoice, text: CorpusChoice, output: TrainOutput, options: TrainConfig,
          cache: ActivationInput, loading: LoadingConfig, remote: RemoteConfig) -> None:
    """Train ITDA dictionaries for one or more layers from a single pass over the corpus (or an activation cache)."""
    if cache.activations is not None:
        from itda_core.cli.extract import train_from_activations

        if remote.remote:
            raise ITDAError("--activations trains from a cache, --remote from NDIF's forward passes: choose one")
        return train_from_activations(cache.activations, output, options)
    from itda_core.corpus import load_corpus
    from itda_core.extraction import extract
    from itda_core.models.choice import load_for_layers, open_remote
    from itda_core.trainer import Trainer

    if output.store is not None:  # before loading and training: a locked or read-only store fails now, not after
        from itda_core.store.connection import check_writable

        check_writable(output.store)
    nn_source = open_remote(source.model, source.device, loading) if remote.remote else None
    if nn_source is not None:
        lm = nn_source.lm
        options.layers = parse_layers(output.layers, lm.n_layers)
    else:
        lm, options.layers = load_for_layers(source.model, output.layers, source.device, loading)
    full_corpus = load_corpus(text.corpus, split=text.hf_split, text_field=text.text_field)
    train_part, _held = full_corpus.split(output.held_out)
    trainer = Trainer(lm, train_part, options)
    batches = None
    if nn_source is not None:  # the batches of NDIF's forward passes, tokenised and numbered as in process
        batches = extract(lm, train_part, trainer.layers, options.seq_len, options.batch_size,
                          skip_special_tokens=options.skip_special_tokens, max_tokens=options.max_tokens,
                          progress=False, max_documents=options.max_documents, forward=nn_source.forward)
    dictionaries = trainer.run(source=batches)
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


def check_provenance(
    dictionary: Annotated[Path, typer.Argument(help="A dictionary folder written by 'itda train'.")],
    model: Annotated[
        str | None,
        typer.Option("--model", "-m", help="Model to re-extract with (default: the one recorded in the dictionary)."),
    ] = None,
    corpus: Annotated[str, typer.Option(help=CORPUS_HELP)] = "default",
    max_atoms: Annotated[int, typer.Option(help="Check at most this many atoms (0 = all).")] = 0,
    device: Annotated[str, typer.Option(help=DEVICE_HELP)] = "auto",
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


def register(app: typer.Typer) -> None:
    """Add ``train`` and ``check-provenance`` to the ``itda`` app."""
    app.command("train")(train)
    app.command("check-provenance")(check_provenance)
