"""Options several commands share, declared once: which model and device, which corpus. Options of one job
live in that job's config (TrainConfig, IndexConfig, DemoConfig, ...); the commands derive both
(:mod:`itda_core.cli.derive`)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from itda_core.options import CORPUS_HELP, DEVICE_HELP, MODEL_HELP, option
from itda_core.store.connection import DEFAULT_STORE

DEFAULT_MODEL = "smollm2-135m"


@dataclass
class ModelChoice:
    """The model to load and where it runs."""

    model: str = option(DEFAULT_MODEL, help=MODEL_HELP, short="-m")
    device: str = option("auto", help=DEVICE_HELP)


@dataclass
class CorpusChoice:
    """The corpus to read and, for a Hugging Face dataset or a .jsonl file, which part of it."""

    corpus: str = option("default", help=CORPUS_HELP)
    hf_split: str = option("train", help="Split of a Hugging Face dataset corpus.")
    text_field: str = option("text", help="Text field of a .jsonl or Hugging Face dataset corpus.")


@dataclass
class TrainOutput:
    """What ``itda train`` trains and where the dictionaries go (the CLI's part of a training run)."""

    layers: str = option("middle", help="Layers (blocks, 0-based): 'all', 'middle', '12', '0-29', '0,5,10-12'.")
    held_out: float = option(0.1, help="Fraction of documents kept out of training (for evaluation).")
    out: Path = option(Path("data/dictionaries"), help="Folder for the dictionaries: one sub-folder per layer.")
    store: Path | None = option(
        None, help=f"Also write the dictionaries into this DuckDB store (e.g. {DEFAULT_STORE}); then run 'itda index'.")
    replace: bool = option(
        False, help="Replace dictionaries of the --store trained with the same options on the same data (without "
        "it, writing one of those is refused and nothing is written).")
