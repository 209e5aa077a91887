"""Running sums for the evaluation metrics, reduced batch by batch so memory stays bounded.

Every sum is kept in float64 on the CPU. Reconstruction metrics are over *tokens* (rows of activations);
loss metrics are over *predicted positions* (position t predicting token t+1).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor


def distinct_per_row(indices: Tensor) -> Tensor:
    """Number of distinct atom indices in each row of an [n, k] index matrix (MP may pick an atom twice)."""
    if indices.ndim == 1:
        indices = indices[:, None]
    if indices.shape[1] == 0:
        return torch.zeros(indices.shape[0], dtype=torch.long, device=indices.device)
    ordered = indices.sort(dim=1).values
    return 1 + (ordered[:, 1:] != ordered[:, :-1]).sum(dim=1)


@dataclass
class ReconstructionStats:
    """Sums for FVU, MSE, cosine, L0 and atom usage over the evaluated tokens."""

    n_atoms: int
    tokens: int = 0
    sq_err: float = 0.0  # sum ||x - x_hat||^2
    sq_norm: float = 0.0  # sum ||x||^2
    cos_sum: float = 0.0
    steps_sum: float = 0.0  # sum of MP steps per token (= k per token)
    distinct_sum: float = 0.0  # sum of distinct atoms per token
    x_sum: Tensor | None = None  # [d] float64, for the mean activation
    atom_counts: Tensor | None = None  # [n_atoms] int64: how often each atom was picked
    d_model: int = 0

    def update(self, x: Tensor, x_hat: Tensor, indices: Tensor | None = None) -> None:
        """Add activations ``x`` [n, d], reconstructions ``x_hat`` [n, d] and MP ``indices`` [n, k]."""
        if x.shape[0] == 0:
            return
        x64 = x.detach().to("cpu", torch.float64)
        h64 = x_hat.detach().to("cpu", torch.float64)
        self.d_model = x64.shape[1]
        self.tokens += x64.shape[0]
        self.sq_err += float((x64 - h64).pow(2).sum())
        self.sq_norm += float(x64.pow(2).sum())
        self.cos_sum += float(torch.nn.functional.cosine_similarity(x64, h64, dim=-1, eps=1e-12).sum())
        xs = x64.sum(dim=0)
        self.x_sum = xs if self.x_sum is None else self.x_sum + xs
        if indices is not None:
            idx = indices.detach().to("cpu", torch.long)
            if idx.ndim == 1:
                idx = idx[:, None]
            self.steps_sum += float(idx.shape[0] * idx.shape[1])
            self.distinct_sum += float(distinct_per_row(idx).sum())
            counts = torch.bincount(idx.flatten(), minlength=self.n_atoms)[: self.n_atoms]
            self.atom_counts = counts if self.atom_counts is None else self.atom_counts + counts

    def result(self) -> dict[str, float | int | None]:
        """fvu, mse, cosine, l0, l0_distinct, atoms_used, dead_fraction (None where undefined)."""
        n = self.tokens
        if n == 0:
            return {
                "fvu": None,
                "mse": None,
                "cosine": None,
                "l0": None,
                "l0_distinct": None,
                "atoms_used": None,
                "dead_fraction": None,
            }
        assert self.x_sum is not None
        total_var = self.sq_norm - float(self.x_sum.pow(2).sum()) / n  # sum ||x - mean(x)||^2
        fvu = self.sq_err / total_var if total_var > 0 else (0.0 if self.sq_err == 0 else math.inf)
        out: dict[str, float | int | None] = {
            "fvu": fvu,
            "mse": self.sq_err / (n * self.d_model),
            "cosine": self.cos_sum / n,
            "l0": self.steps_sum / n if self.atom_counts is not None else None,
            "l0_distinct": self.distinct_sum / n if self.atom_counts is not None else None,
            "atoms_used": None,
            "dead_fraction": None,
        }
        if self.atom_counts is not None and self.n_atoms > 0:
            used = int((self.atom_counts > 0).sum())
            out["atoms_used"] = used
            out["dead_fraction"] = 1.0 - used / self.n_atoms
        return out


@dataclass
class LossStats:
    """Sums of next-token cross-entropy (and KL to the clean run) over counted positions."""

    positions: int = 0
    ce_sum: float = 0.0
    kl_sum: float = 0.0

    def update(self, ce: Tensor, kl: Tensor | None = None) -> None:
        """Add per-position cross-entropies ``ce`` [n] (and KL(clean || this run) [n])."""
        self.positions += int(ce.numel())
        self.ce_sum += float(ce.detach().double().sum())
        if kl is not None:
            self.kl_sum += float(kl.detach().double().sum())

    @property
    def ce(self) -> float | None:
        return self.ce_sum / self.positions if self.positions else None

    @property
    def kl(self) -> float | None:
        return self.kl_sum / self.positions if self.positions else None


def ce_loss_score(h_orig: float | None, h_spliced: float | None, h_zero: float | None) -> float | None:
    """(H* - H0) / (H_orig - H0): 1 = as good as the clean model, 0 = as bad as zero-ablation."""
    if h_orig is None or h_spliced is None or h_zero is None:
        return None
    denom = h_orig - h_zero
    if denom == 0:
        return None
    return (h_spliced - h_zero) / denom
