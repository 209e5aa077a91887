"""Options of a training run (:class:`TrainConfig`), apart from the trainer so that reading them (the CLI's
help) loads no torch."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from itda_core.options import option


@dataclass
class TrainConfig:
    """Options of a training run; each field is also an ``itda train`` option (help text below)."""

    layers: list[int] = option(factory=lambda: [0], help="Layers (blocks, 0-based) to train.", cli=False)
    k: int = option(40, help="Matching-pursuit steps per activation (the L0).")
    threshold: float | None = option(
        None, help="Add an activation as an atom when mean((x/|x| - x_hat/|x_hat|)^2) exceeds this. "
        "Default 0.3/d_model (cos < 0.85).")
    max_tokens: int | None = option(100_000, help="Activations to stream per layer (0 = the whole training split).")
    max_documents: int | None = option(
        None, help="Stop after this many whole documents (use it, with --max-tokens 0, for models that are to be "
        "compared: Jaccard needs the same documents, and token counts differ across tokenizers).")
    seq_len: int = option(128, help="Tokens per document (longer ones are truncated), 128 as in the paper.")
    batch_size: int = option(32, help="Documents per forward pass.")
    max_size: int | None = option(None, help="Stop adding atoms at this dictionary size.")
    dedupe: bool = option(True, help="Drop exact duplicate activations among a batch's new atoms.")
    skip_special_tokens: bool = option(False, flag="--skip-special",
                                       help="Skip BOS/CLS/SEP positions (the paper keeps them).")
    seed: int = option(0, help="Recorded; the run itself is deterministic for a given corpus and order.", cli=False)
    init_rule: Literal["first", "value"] = option(
        "first", help="How the initial atoms break ties among rows seen equally often (most are seen once): "
        "'first' (first occurrence: the same (document, position) picks everywhere; matched layers best in the "
        "5-seed benchmark) or 'value' (sorted by value, as the authors' code: an arbitrary pick in every layer).")
    gram_memory_gib: float = option(
        4.0, help="Memory for all layers' Gram matrices together (GiB). A layer whose float32 matrix outgrows its "
        "share, or ~11,600 atoms, uses float16 rows (CPU), then the much slower textbook loop; the tiers agree up "
        "to float rounding (near-ties may resolve differently).")
    early_stop: bool = option(
        True, help="Stop matching pursuit for a token once it provably stays under the threshold: the same "
        "dictionaries, faster; the reported mean error is then sampled on every 7th token.")
    save_on_interrupt: bool = option(False, help="On Ctrl-C, save what was built so far (marked interrupted).")
    progress: bool = option(True, help="Show a progress bar with tokens/s, atoms and ETA.")

    def __post_init__(self) -> None:
        if self.max_tokens == 0:  # the CLI's "0 = no limit"
            self.max_tokens = None
