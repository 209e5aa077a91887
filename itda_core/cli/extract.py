"""``itda extract`` (activations of a corpus's training split into a cache folder, see
:mod:`itda_core.activation_cache`) and the cache side of ``itda train --activations`` (the greedy build from a
cache, without the model's weights)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import typer

from itda_core.cli.derive import from_configs
from itda_core.cli.options import CorpusChoice, ModelChoice, TrainOutput
from itda_core.config.extract import ActivationCacheConfig
from itda_core.config.train import TrainConfig
from itda_core.errors import ITDAError
from itda_core.layers import parse_layers
from itda_core.options import default_of, help_of, option


@dataclass
class ExtractTarget:
    """Which layers and split ``itda extract`` reads, and where the cache goes (the CLI's part)."""

    layers: str = option(default_of(TrainOutput, "layers"), help=help_of(TrainOutput, "layers"))
    held_out: float = option(default_of(TrainOutput, "held_out"), help=help_of(TrainOutput, "held_out"))
    out: Path = option(Path("data/activations"), help="The cache folder (manifest.json + safetensors shards); "
                       "written beside itself and renamed into place when complete.")


@from_configs
def extract_command(source: ModelChoice, text: CorpusChoice, target: ExtractTarget,
                    config: ActivationCacheConfig) -> None:
    """Write the activations of the corpus's training split (the documents 'itda train' would read, same split)
    into an activation cache, with their provenance, for 'itda train --activations' anywhere."""
    from itda_core.activation_cache_write import check_out, write_cache
    from itda_core.corpus import load_corpus
    from itda_core.models import load_model

    check_out(target.out, config.overwrite)  # before loading anything
    lm = load_model(source.model, device=source.device)
    layers = parse_layers(target.layers, lm.n_layers)
    train_part, _held = load_corpus(text.corpus, split=text.hf_split, text_field=text.text_field).split(
        target.held_out)
    manifest = write_cache(lm, train_part, layers, target.out, config,
                           loader=lambda name: load_model(name, device=source.device))
    size = sum(s.bytes for s in manifest.shards) / 2**20
    typer.echo(f"wrote {manifest.tokens:,} tokens x {len(layers)} layers of {lm.name} ({manifest.documents:,} "
               f"documents of {train_part.corpus_id}) in {len(manifest.shards)} shards, {size:,.1f} MiB, "
               f"into {target.out}/")


def train_from_activations(folder: Path, output: TrainOutput, options: TrainConfig) -> None:
    """``itda train --activations``: the greedy build from a cache; its reading options are the cache's."""
    from itda_core.activation_cache import open_cache
    from itda_core.trainer import Trainer

    if output.store is not None:
        raise ITDAError("--store needs the model's tokenizer and corpus: train from the cache without --store, or "
                        "run 'itda train --store' where the model is")
    if options.max_documents is not None:
        raise ITDAError("--max-documents is chosen when the cache is written: pass it to 'itda extract'")
    cache = open_cache(folder)
    m = cache.manifest
    model = cache.model
    spec = output.layers.strip().lower()
    options.layers = list(m.layers) if spec in ("all", "*") else parse_layers(output.layers, model.n_layers)
    options.seq_len, options.batch_size = m.seq_len, m.batch_size
    options.skip_special_tokens = m.skip_special_tokens
    trainer = Trainer(model, m.corpus(), options)  # type: ignore[arg-type] # CachedModel stands in for the model
    dictionaries = trainer.run(source=cache.batches(trainer.layers, max_tokens=options.max_tokens))
    out = output.out / model.name.replace("/", "--").replace(".gguf", "")
    for itda in dictionaries.values():
        itda.save(out / itda.config.site)
    typer.echo(f"cache {folder}: {model.name} ({model.model_id}), d_model {model.d_model}, layers "
               f"{','.join(map(str, m.layers))}; seq-len {m.seq_len}, batch size {m.batch_size}, "
               f"{m.tokens:,} tokens of {m.corpus_id} ({m.dtype})")
    typer.echo(trainer.report.summary())
    typer.echo(f"saved {len(dictionaries)} dictionaries under {out}/")


def register(app: typer.Typer) -> None:
    """Add ``extract`` to the ``itda`` app."""
    app.command("extract")(extract_command)
