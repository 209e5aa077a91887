"""Options of an evaluation (:class:`StoreEvalConfig`, the run's options of ``itda eval`` with or without
``--store``) and the evaluation's defaults, apart from the evaluation code so that reading them (the CLI's
help) loads no torch."""

from __future__ import annotations

from dataclasses import dataclass

from itda_core.options import DEVICE_HELP, option

DEFAULT_MAX_TOKENS = 10_000
DEFAULT_BATCH_SIZE = 4  # documents per forward pass; small because logits are [batch, seq, vocab]
DEFAULT_KS = (10, 20, 40, 80)  # the k values (L0) of a sweep


@dataclass
class StoreEvalConfig:
    """How to evaluate dictionaries: each field with help is also an ``itda eval`` option (for one saved
    dictionary as for a store's)."""

    ks: list[int] | None = option(None, help="L0 values to evaluate at; None = each dictionary's own k.", cli=False)
    max_tokens: int | None = option(
        DEFAULT_MAX_TOKENS, help="Tokens to evaluate (non-special, in document order; 0 = the whole held-out split).")
    batch_size: int = option(DEFAULT_BATCH_SIZE, help="Documents per forward pass. Keep it small for big "
                             "vocabularies (logits are batch x seq_len x vocab).")
    splice_special: bool = option(True, help="Also replace the activation at special-token positions (e.g. BOS) "
                                  "by its reconstruction. They are never counted either way.")
    exclude_first: bool = option(
        False, help="Leave each document's first position out of every metric. Useful for models without a BOS "
        "token, whose first token is an attention sink with a huge norm that dominates FVU and MSE.")
    device: str = option("auto", help=DEVICE_HELP)
    progress: bool = option(True, help="Show a progress bar on stderr.")
    timeout: float = option(600.0, help="Longest wait for the store's lock (seconds).", cli=False)

    def __post_init__(self) -> None:
        """Read the CLI's "0 = no limit" for ``max_tokens``."""
        if self.max_tokens == 0:
            self.max_tokens = None
