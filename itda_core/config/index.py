"""Options of ``itda index`` (:class:`IndexConfig`): how much held-out text to encode with every stored
dictionary and how much of each atom's activity to keep."""

from __future__ import annotations

from dataclasses import dataclass

from itda_core.errors import ITDAError
from itda_core.options import option


@dataclass
class IndexConfig:
    """How much held-out text to encode and how much of each atom's activity to keep."""

    max_tokens: int | None = option(
        8192, help="Held-out tokens to encode per model, the density denominator (0 = all held-out documents).")
    top_n: int = option(20, help="Top-activating contexts kept per atom.")
    n_quantiles: int = option(10, flag="--quantiles", help="Equal-probability coefficient bins per atom.")
    per_quantile: int = option(5, help="Sample contexts kept per bin.")
    hist_bins: int = option(32, help="Bins of the signed coefficient histogram.")
    batch_size: int = option(32, help="Documents per forward pass.")
    encode_chunk: int = option(4096, help="Tokens per MP call (bounds memory).", cli=False)
    keep_codes: bool = option(True, help="Also store the raw sparse codes (table 'codes').")
    reindex: bool = option(False, help="Index again dictionaries that already have an index.")
    progress: bool = option(True, help="Show progress bars.")
    timeout: float = option(600.0, help="Longest wait for the store's lock (seconds).", cli=False)

    def __post_init__(self) -> None:
        if self.max_tokens == 0:  # the CLI's "0 = all"
            self.max_tokens = None
        if min(self.top_n, self.n_quantiles, self.per_quantile) < 1 or self.hist_bins < 2:
            raise ITDAError("top-n, quantiles and per-quantile must be >= 1 and hist-bins >= 2")
        if self.batch_size < 1 or self.encode_chunk < 1:
            raise ITDAError("batch-size and the encode chunk must be >= 1")
