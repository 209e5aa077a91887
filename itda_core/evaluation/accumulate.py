"""Reconstruction quality (FVU, cosine, MSE) as sums that merge: what ``itda index`` accumulates from the
activations it encodes anyway, chunk by chunk or shard by shard (the Ray engine merges one per shard).

The sums and the formulas are those of :class:`itda_core.evaluation.metrics.ReconstructionStats` (it computes
them here too), so an index-time FVU is the FVU ``itda eval`` reports on the same tokens. The tokens counted are
those ``itda eval`` counts: real tokens that are not special (:func:`counted_tokens`).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import Tensor

from itda_core.evaluation.metrics import ReconstructionStats

QUALITY_METRICS = ("fvu", "cosine", "mse")  # what :meth:`QualityAccumulator.result` gives


def counted_tokens(token_ids: np.ndarray | Tensor, special_ids: Sequence[int]) -> np.ndarray:
    """Which rows count in the quality figures: those whose token is not special (BOS, CLS, SEP, EOS, PAD...;
    :func:`itda_core.evaluation.ce_score.special_token_ids`), as the evaluation's ``tokens`` mask."""
    ids = token_ids.cpu().numpy() if isinstance(token_ids, Tensor) else np.asarray(token_ids)
    return ~np.isin(ids, np.asarray(list(special_ids), dtype=ids.dtype if ids.size else np.int64))


@dataclass
class QualityAccumulator:
    """Sums over tokens of ||x - x_hat||^2, ||x||^2, cos(x, x_hat) and x (float64): add batches, merge shards,
    read FVU, cosine and MSE. Merging in any grouping gives the figures of adding every row to one (up to the
    float64 rounding of the sums)."""

    tokens: int = 0
    sq_err: float = 0.0
    sq_norm: float = 0.0
    cos_sum: float = 0.0
    x_sum: Tensor | None = None  # [d] float64, on the CPU
    d_model: int = 0

    def add(self, x: Tensor, x_hat: Tensor) -> QualityAccumulator:
        """Add activations ``x`` [n, d] and their reconstructions ``x_hat`` [n, d] (any device, any float)."""
        part = ReconstructionStats(n_atoms=0)
        part.update(x, x_hat)
        return self.merge(QualityAccumulator(part.tokens, part.sq_err, part.sq_norm, part.cos_sum, part.x_sum,
                                             part.d_model))  # fmt: skip

    def merge(self, other: QualityAccumulator) -> QualityAccumulator:
        """Add ``other``'s sums to these (in place; returns self)."""
        if other.tokens == 0:
            return self
        if self.tokens and other.d_model != self.d_model:
            raise ValueError(f"cannot merge sums of width {other.d_model} into sums of width {self.d_model}")
        self.tokens += other.tokens
        self.sq_err += other.sq_err
        self.sq_norm += other.sq_norm
        self.cos_sum += other.cos_sum
        assert other.x_sum is not None
        xs = other.x_sum.to("cpu", torch.float64)
        self.x_sum = xs.clone() if self.x_sum is None else self.x_sum + xs
        self.d_model = other.d_model
        return self

    def result(self) -> dict[str, float | None]:
        """fvu, cosine and mse, by :meth:`ReconstructionStats.result`'s formulas (None without tokens)."""
        stats = ReconstructionStats(n_atoms=0, tokens=self.tokens, sq_err=self.sq_err, sq_norm=self.sq_norm,
                                    cos_sum=self.cos_sum, x_sum=self.x_sum, d_model=self.d_model)  # fmt: skip
        out = stats.result()
        return {m: (None if out[m] is None else float(out[m])) for m in QUALITY_METRICS}  # type: ignore[arg-type]

    def to_dict(self) -> dict[str, Any]:
        """The sums as JSON-ready values (to send a shard's sums between processes)."""
        x_sum = None if self.x_sum is None else self.x_sum.tolist()
        return {"tokens": self.tokens, "sq_err": self.sq_err, "sq_norm": self.sq_norm, "cos_sum": self.cos_sum,
                "x_sum": x_sum, "d_model": self.d_model}  # fmt: skip

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> QualityAccumulator:
        """The accumulator :meth:`to_dict` describes."""
        x_sum = data.get("x_sum")
        return cls(int(data["tokens"]), float(data["sq_err"]), float(data["sq_norm"]), float(data["cos_sum"]),
                   None if x_sum is None else torch.tensor(x_sum, dtype=torch.float64), int(data["d_model"]))


__all__ = ["QUALITY_METRICS", "QualityAccumulator", "counted_tokens"]
