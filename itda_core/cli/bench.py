"""``itda bench layer-matching``: the paper's layer-matching benchmark on the command line (logic in
:mod:`itda_core.similarity.layer_matching`)."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import typer

from itda_core.cli.derive import from_configs
from itda_core.config.similarity import LayerMatchingConfig
from itda_core.errors import ITDAError
from itda_core.options import option

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


@dataclass
class LayerMatchingModels:
    """Which models ``itda bench layer-matching`` compares and where the result goes (the CLI's part; the
    benchmark's options are :class:`LayerMatchingConfig`)."""

    extra: list[str] | None = option(None, argument=True, help="More models (so --models A B C works).")
    models: list[str] | None = option(None, help="Models to compare (at least two).")
    paper_models: bool = option(False, help="The paper's 5 stanford-crfm GPT-2 small seeds.")
    out: Path | None = option(None, help="Save the full result (accuracies, matrices) as JSON.")


@bench_app.command("layer-matching", help=HELP)
@from_configs
def layer_matching(chosen: LayerMatchingModels, config: LayerMatchingConfig) -> None:
    """Run the layer-matching benchmark on the chosen models and print (or save) its accuracies."""
    from itda_core.similarity.layer_matching import PAPER_MODELS, format_table, run_layer_matching

    names = [*(chosen.models or []), *(chosen.extra or [])]
    if chosen.paper_models:
        names = [*PAPER_MODELS, *names]
    if len(names) < 2:
        raise ITDAError("give at least two models: --models A B [C ...] (or --paper-models)")
    out = chosen.out
    if out is not None and out.suffix.lower() != ".json":
        raise ITDAError(f"--out must end in .json (got {out.name})")
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
