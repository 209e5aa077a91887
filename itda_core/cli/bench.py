"""``itda bench layer-matching``: the paper's layer-matching benchmark on the command line (logic in
:mod:`itda_core.similarity.layer_matching`)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer

from itda_core.errors import ITDAError

HELP = (
    "Layer matching (Kornblith et al. 2019): for models of one architecture trained from different seeds, "
    "layer i of one model should be most similar to layer i of the other. For every ordered pair of models "
    "and every layer, checks whether the argmax over the other model's layers is the same index, for ITDA "
    "Jaccard and the baselines (linear CKA textbook and feature-normalised, SVCCA, relative representations, "
    "linear-regression R^2 with and without intercept), all on the same prompts. Scored the authors' way "
    "(layers 1..n-1, all M x M ordered pairs including each model against itself, ties to the lowest layer), "
    "with the score over pairs of different models only beside it. Prints the accuracy table; --out saves "
    "JSON with every matrix. Models: HF ids, local folders or aliases, e.g. --models A B C, or --paper-models "
    "for the paper's five stanford-crfm GPT-2 small seeds (needs internet)."
)

bench_app = typer.Typer(help="Benchmarks that reproduce the paper's results.", no_args_is_help=True)


def parse_measures(spec: str) -> tuple[str, ...]:
    """'all' or a comma-separated list of jaccard, cka, cka_normalised, svcca, relative, r2, r2_no_intercept."""
    from itda_core.similarity.layer_matching import LAYER_MATCHING_MEASURES as MEASURES

    if spec.strip().lower() == "all":
        return MEASURES
    chosen = tuple(dict.fromkeys(p.strip().lower() for p in spec.split(",") if p.strip()))
    bad = [m for m in chosen if m not in MEASURES]
    if bad or not chosen:
        raise ITDAError(f"unknown measure(s) {bad or spec!r}; use 'all' or any of {', '.join(MEASURES)}")
    return chosen


def parse_jaccard_options(spec: str | None) -> dict:
    """A JSON object of keyword arguments for the Jaccard call, e.g. '{"method": "keys"}'."""
    if not spec:
        return {}
    try:
        value = json.loads(spec)
    except json.JSONDecodeError as err:
        raise ITDAError(f"--jaccard-options must be a JSON object (got {spec!r}: {err})") from err
    if not isinstance(value, dict):
        raise ITDAError(f"--jaccard-options must be a JSON object (got {spec!r})")
    return value


@bench_app.command("layer-matching", help=HELP)
def layer_matching(
    extra: Annotated[list[str] | None, typer.Argument(help="More models (so --models A B C works).")] = None,
    models: Annotated[list[str] | None, typer.Option("--models", help="Models to compare (at least two).")] = None,
    paper_models: Annotated[
        bool, typer.Option("--paper-models", help="The paper's 5 stanford-crfm GPT-2 small seeds.")
    ] = False,
    tokens: Annotated[int, typer.Option(help="Tokens per model for the dictionaries (one pass).")] = 100_000,
    baseline_tokens: Annotated[
        int | None, typer.Option(help="First N of those tokens for the baselines (default: all).")
    ] = None,
    k: Annotated[int, typer.Option(help="Matching-pursuit steps (L0) of the dictionaries.")] = 40,
    threshold: Annotated[float | None, typer.Option(help="Dictionary threshold (default 0.3 / d_model).")] = None,
    layers: Annotated[
        str, typer.Option(help="Layers to match: 'default' (1..n-1, the authors'), 'all' (0..n-1) or e.g. '1-11'.")
    ] = "default",
    measures: Annotated[str, typer.Option(
        help="'all' or e.g. 'jaccard,cka,cka_normalised,svcca,relative,r2,r2_no_intercept'.")] = "all",
    protocol: Annotated[str, typer.Option(
        help="Headline score: 'authors' (M x M pairs, self included) or 'cross' (different models only); "
             "both are always printed.")] = "authors",
    ties: Annotated[str, typer.Option(
        help="A tied maximum goes to the 'lowest' layer (the authors') or counts as 'wrong'.")] = "lowest",
    jaccard_options: Annotated[str | None, typer.Option(
        help="JSON object of extra keyword arguments for the Jaccard call, e.g. '{\"method\": \"keys\"}'.")] = None,
    corpus: Annotated[str, typer.Option(help="'default', a .txt/.jsonl file or a HF dataset.")] = "default",
    split: Annotated[str, typer.Option(help="Part of the corpus for the prompts: train, held_out or all.")] = "train",
    seq_len: Annotated[int, typer.Option(help="Tokens per prompt (the paper truncates to 128).")] = 128,
    batch_size: Annotated[int, typer.Option(help="Prompts per forward pass.")] = 32,
    device: Annotated[str, typer.Option(help="auto (cuda if available), cpu, cuda or cuda:N.")] = "auto",
    out: Annotated[Path | None, typer.Option(help="Save the full result (accuracies, matrices) as JSON.")] = None,
    progress: Annotated[bool, typer.Option(help="Show a progress bar per model.")] = True,
) -> None:
    from itda_core.layers import parse_layers
    from itda_core.similarity.layer_matching import (
        PAPER_MODELS,
        LayerMatchingConfig,
        format_table,
        run_layer_matching,
    )

    names = [*(models or []), *(extra or [])]
    if paper_models:
        names = [*PAPER_MODELS, *names]
    if len(names) < 2:
        raise ITDAError("give at least two models: --models A B [C ...] (or --paper-models)")
    if out is not None and out.suffix.lower() != ".json":
        raise ITDAError(f"--out must end in .json (got {out.name})")
    layer_list = None
    if layers.strip().lower() != "default":
        from itda_core.models import load_model

        first = load_model(names[0], device="cpu")  # only to know the depth
        layer_list = parse_layers(layers, first.n_layers)
        del first
    config = LayerMatchingConfig(
        tokens=tokens, baseline_tokens=baseline_tokens, k=k, threshold=threshold, seq_len=seq_len,
        batch_size=batch_size, corpus=corpus, split=split, layers=layer_list, measures=parse_measures(measures),
        protocol=protocol, ties=ties, jaccard_options=parse_jaccard_options(jaccard_options), device=device,
        progress=progress,
    )
    result = run_layer_matching(names, config)
    typer.echo(format_table(result))
    typer.echo(f"({result.seconds:.0f} s)")
    if out is not None:
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(result.to_dict(), indent=2))
        typer.echo(f"saved {out}")


def register(app: typer.Typer) -> None:
    """Add ``itda bench ...`` to ``app``."""
    app.add_typer(bench_app, name="bench")
