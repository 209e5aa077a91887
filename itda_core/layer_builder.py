"""One layer's dictionary grown by the ITDA rule (:class:`LayerBuilder`): initial atoms from the most frequent
rows, then every activation MP reconstructs worse than the threshold becomes an atom. The trainer
(:mod:`itda_core.trainer`) streams batches of several layers through one builder each."""

from __future__ import annotations

import logging
from collections import deque

import torch
from torch import Tensor

from itda_core.dictionary import ITDA, ITDAConfig
from itda_core.errors import ITDAError
from itda_core.mp import GramCache, matching_pursuit, reconstruct
from itda_core.provenance import Provenance

log = logging.getLogger(__name__)


def default_threshold(d_model: int) -> float:
    """Default threshold: add an activation when cos(x, x_hat) < 0.85, i.e. err = (2 - 2*0.85) / d."""
    return 0.3 / d_model


def normalised_error(x: Tensor, x_hat: Tensor) -> Tensor:
    """mean over dims of (x/|x| - x_hat/|x_hat|)^2 per row, computed as (2 - 2 cos(x, x_hat)) / d; a zero
    reconstruction (or activation) counts as cos = 0, the largest error an orthogonal guess would get."""
    dot = (x * x_hat).sum(dim=-1)
    norms = x.norm(dim=-1) * x_hat.norm(dim=-1)
    cos = torch.where(norms > 0, dot / norms.clamp_min(1e-30), torch.zeros_like(dot)).clamp(-1.0, 1.0)
    return (2.0 - 2.0 * cos) / x.shape[-1]


# Every ERROR_SAMPLE-th token of a batch is encoded with all k steps, for the reported mean error. A prime
# stride: with documents of 128 tokens, 8 would sample position 0 (an attention sink in SmolLM2) in every one.
ERROR_SAMPLE = 7
# Residual energy (fraction of |x|^2) kept below the stop bound: the float rounding of the energy identity
# |r|^2 = |x|^2 - sum coef^2 and of the error itself is orders of magnitude smaller.
STOP_MARGIN = 0.01


def stop_fraction(threshold: float, d_model: int) -> float | None:
    """Residual energy fraction |r|^2 / |x|^2 at which a token provably stays under ``threshold`` (with
    the margin), or None when no residual is small enough to be sure (threshold 0)."""
    cos_needed = max(0.0, 1.0 - threshold * d_model / 2.0)
    frac = 1.0 - cos_needed**2 - STOP_MARGIN
    return frac if frac > 0 else None


INIT_RULES = ("first", "value")


def _first_unique_rows(x: Tensor, rule: str = "first") -> tuple[Tensor, Tensor]:
    """(first-occurrence index, count) of every distinct row of x, most frequent first; ties (rows seen
    equally often) by ``rule``: "first" by first occurrence, "value" in torch.unique's lexicographic order
    of the rows' values (the authors' code: unique, then a stable sort on counts)."""
    if rule not in INIT_RULES:
        raise ITDAError(f"unknown init_rule {rule!r}; use one of {', '.join(INIT_RULES)}")
    _, inverse, counts = torch.unique(x, dim=0, return_inverse=True, return_counts=True)
    n = x.shape[0]
    first = torch.full((counts.shape[0],), n, dtype=torch.long, device=x.device)
    first.scatter_reduce_(0, inverse, torch.arange(n, device=x.device), reduce="amin")
    # sort by count desc, then the tie key asc (stable sort on the secondary key first); unique's own order is
    # already by value
    order = torch.argsort(first, stable=True) if rule == "first" else torch.arange(len(counts), device=x.device)
    order = order[torch.argsort(counts[order], descending=True, stable=True)]
    return first[order], counts[order]


class LayerBuilder:
    """The growing dictionary of one layer: atoms, provenance and the bookkeeping for MP."""

    def __init__(
        self,
        d_model: int,
        k: int,
        threshold: float,
        max_size: int | None,
        dedupe: bool,
        device: torch.device,
        gram_bytes: int,
        early_stop: bool = True,
        init_rule: str = "first",
    ) -> None:
        self.d_model = d_model
        self.k = k
        self.threshold = threshold
        self.max_size = max_size
        self.dedupe = dedupe
        self.stop = stop_fraction(threshold, d_model) if early_stop else None
        self.init_rule = init_rule
        self.capacity = 0
        self.size = 0
        self.buffer = torch.empty((0, d_model), device=device)
        self.prov: list[Provenance] = []
        self.errors: list[Tensor] = []
        self.init_counts: list[Tensor] = []  # per atom: how often its activation occurred in its batch (init), else 0
        self.gram = GramCache(device, torch.float32, max_bytes=gram_bytes)
        self.recent_error: deque[float] = deque(maxlen=10)
        self.init_atoms = 0
        self._seen: set[bytes] = set()  # raw bytes of every activation that became an atom (for dedupe)

    @property
    def atoms(self) -> Tensor:
        return self.buffer[: self.size]

    def _full(self) -> bool:
        return self.max_size is not None and self.size >= self.max_size

    def _append(self, rows: Tensor, prov: Provenance, errors: Tensor, init_counts: Tensor | None = None) -> None:
        if init_counts is None:
            init_counts = torch.zeros(rows.shape[0], dtype=torch.int32)
        if self.max_size is not None:
            room = self.max_size - self.size
            if rows.shape[0] > room:
                rows, errors, init_counts = rows[:room], errors[:room], init_counts[:room]
                prov = prov.select(torch.arange(room))
        n = rows.shape[0]
        if n == 0:
            return
        if self.size + n > self.capacity:  # grow with doubling so appends stay amortised O(1)
            self.capacity = max(2 * self.capacity, self.size + n, 1024)
            grown = torch.empty((self.capacity, self.d_model), device=self.buffer.device)
            grown[: self.size] = self.atoms
            self.buffer = grown
        self.buffer[self.size : self.size + n] = rows / rows.norm(dim=-1, keepdim=True)
        self.size += n
        self.prov.append(prov)
        self.errors.append(errors.float().cpu())
        self.init_counts.append(init_counts.to(device="cpu", dtype=torch.int32))

    def _unseen(self, x: Tensor, rows: Tensor) -> Tensor:
        """Positions in ``rows`` (in order) whose activation is not bit-identical to an atom or an earlier
        row; marks them seen. Exact duplicates of atoms reconstruct with error ~0, but float noise can still
        put them over a tiny threshold, so they are filtered explicitly."""
        data = x[rows].detach().cpu().numpy()
        keep = []
        for i in range(data.shape[0]):
            key = data[i].tobytes()
            if key not in self._seen:
                self._seen.add(key)
                keep.append(i)
        return torch.tensor(keep, dtype=torch.long, device=rows.device)

    def initialise(self, x: Tensor, prov: Provenance) -> None:
        """Add the most frequent identical rows of ``x`` until the dictionary has d_model atoms."""
        nonzero = x.norm(dim=-1) > 0
        idx = nonzero.nonzero().flatten()
        if idx.numel() == 0:
            return
        first, counts = _first_unique_rows(x[idx], self.init_rule)
        room = self.d_model - self.size
        take, counts = idx[first[:room]], counts[:room]
        if self.dedupe:
            keep = self._unseen(x, take)
            take, counts = take[keep], counts[keep.to(counts.device)]
        before = self.size
        self._append(x[take], prov.select(take.cpu()), torch.full((take.numel(),), float("nan")), counts)
        self.init_atoms += self.size - before

    def step(self, x: Tensor, prov: Provenance) -> tuple[int, float]:
        """Encode a batch, add the rows above the threshold; returns (atoms added, mean error)."""
        if self.size < self.d_model and not self._full():
            self.initialise(x, prov)
        if self.size == 0:
            return 0, float("nan")
        # the layer's Gram matrix within its share of the memory; past it, the textbook loop (which needs none)
        gram = self.gram.update(self.atoms)
        method = "auto" if gram is not None else "textbook"
        n = x.shape[0]
        energy = torch.linalg.vector_norm(x, dim=-1, dtype=torch.float64).square()
        stop = None
        if self.stop is not None:  # the sampled tokens run all k steps: their errors give the mean
            stop = torch.full((n,), self.stop, dtype=torch.float64, device=x.device)
            stop[::ERROR_SAMPLE] = -1.0
        indices, coefs = matching_pursuit(x, self.atoms, self.k, gram=gram, method=method, stop_residual=stop)
        if stop is None:
            rows = torch.arange(n, device=x.device)
            err = normalised_error(x, reconstruct(indices, coefs, self.atoms))
            mean_err = float(err.mean())
        else:
            # a row whose residual energy proves it stays under the threshold needs no reconstruction; the
            # others ran all k steps (or stopped at the bound: then their error is below the threshold too)
            left = energy - coefs.double().square().sum(dim=1)
            rows = ((left > stop * energy) | (stop < 0)).nonzero().flatten()
            err = normalised_error(x[rows], reconstruct(indices[rows], coefs[rows], self.atoms))
            mean_err = float(err[rows % ERROR_SAMPLE == 0].mean())
        self.recent_error.append(mean_err)
        if self._full():
            return 0, mean_err
        over = (err > self.threshold) & (energy[rows] > 0)
        add, add_err = rows[over], err[over]
        if add.numel() and self.dedupe:
            keep = self._unseen(x, add)
            add, add_err = add[keep], add_err[keep.to(add_err.device)]
        before = self.size
        if add.numel():
            self._append(x[add], prov.select(add.cpu()), add_err)
        return self.size - before, mean_err

    def build(self, config: ITDAConfig) -> ITDA:
        prov = Provenance.concat(self.prov)
        errors = torch.cat(self.errors) if self.errors else torch.zeros(0)
        counts = torch.cat(self.init_counts) if self.init_counts else torch.zeros(0, dtype=torch.int32)
        config.init_atoms = self.init_atoms
        config.init_rule = self.init_rule
        return ITDA(self.atoms.detach().clone().cpu(), prov, config, errors, init_count=counts)
