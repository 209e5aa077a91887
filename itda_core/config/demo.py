"""Options of the demo store (:class:`DemoConfig`, ``itda demo`` and ``itda demo-build``)."""

from __future__ import annotations

import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Literal

from itda_core.config.train import TrainConfig
from itda_core.errors import ITDAError
from itda_core.options import COMMA_LIST, DEVICE_HELP, default_of, help_of, option
from itda_core.store.connection import DEFAULT_STORE

if TYPE_CHECKING:
    from itda_core.corpus import Corpus
    from itda_core.models import LoadedModel

DEMO_MODELS = ["smollm2-135m", "minilm-l6", "gemma3-270m"]
# Training documents, the same for every model (about 24,000 SmolLM2 tokens; see docs/store.md for times).
DEMO_TRAIN_DOCUMENTS = 200


def _stderr(line: str) -> None:
    """Default progress log: one line on stderr."""
    print(line, file=sys.stderr, flush=True)


def _train(name: str, cli: bool = True) -> object:
    """A training option the demo passes on to the trainer: TrainConfig's default and help."""
    return option(default_of(TrainConfig, name), help=help_of(TrainConfig, name), cli=cli)


@dataclass
class DemoConfig:
    """What the demo store holds and how it is built (each field with help is an ``itda demo`` option)."""

    store: Path = option(DEFAULT_STORE, help="The DuckDB store to build (if missing or incomplete) and browse.")
    models: list[str] = option(factory=lambda: list(DEMO_MODELS), text=COMMA_LIST,
                               help="Models in build order (comma-separated).")
    train_documents: int = option(
        DEMO_TRAIN_DOCUMENTS, help="Whole training documents for every model (the same text for each, so that "
        "their dictionaries can be compared).")
    index_tokens: int = option(4096, help="Held-out tokens encoded per model for the atom summaries.")
    held_out_fraction: float = option(0.1, flag="--held-out",
                                      help="Fraction of documents held out (the indexing text).")
    split_seed: int = option(0, help="Seed of the document order and the held-out split.", cli=False)
    k: int = _train("k")  # type: ignore[assignment]
    # the demo's recipe: a store built with another tie rule is refused (itda demo --rebuild)
    init_rule: Literal["first", "value"] = _train("init_rule", cli=False)  # type: ignore[assignment]
    seq_len: int = _train("seq_len", cli=False)  # type: ignore[assignment]
    batch_size: int = _train("batch_size")  # type: ignore[assignment]
    gram_memory_gib: float = _train("gram_memory_gib")  # type: ignore[assignment]
    ce_layers: int = option(
        3, help="Layers of each causal model whose CE loss score the demo computes, evenly spaced (the quartiles "
        "of its depth for 3; 0 = none). Encoders have no CE loss score; FVU and cosine come with every index.")
    ce_tokens: int = option(1024, help="Held-out tokens per layer for the demo's CE loss score.")
    atom_maps: bool = option(True, help="Compute and cache each dictionary's UMAP atom map after indexing.")
    rebuild: bool = option(False, help="Delete the store first and build everything again.")
    progress: bool = option(True, help="Show progress bars.")
    device: str = option("auto", help=DEVICE_HELP)
    loader: Callable[[str], LoadedModel] | None = option(
        None, help="name -> LoadedModel (default: load_model).", cli=False)
    corpus: Corpus | None = option(None, help="The FULL corpus (default: load_corpus('default')).", cli=False)
    log: Callable[[str], None] = option(_stderr, help="Where progress lines go.", cli=False)

    def __post_init__(self) -> None:
        """Bound the CE loss score's budget (a layer count and tokens per layer)."""
        if not 0 <= self.ce_layers <= 1024:
            raise ITDAError(f"ce-layers must be between 0 and 1024 (got {self.ce_layers})")
        if not 1 <= self.ce_tokens <= 10_000_000:
            raise ITDAError(f"ce-tokens must be between 1 and 10,000,000 (got {self.ce_tokens})")
