"""The reference loops: textbook matching pursuit (the result every fast path matches), its chunked form (the
fallback when no Gram matrix fits) and orthogonal matching pursuit."""

from __future__ import annotations

import torch
from torch import Tensor

from itda_core.mp.common import _compute_dtype, _default_chunk, _empty_codes, _validate


def _textbook_into(x: Tensor, atoms: Tensor, k: int, idx: Tensor, coef: Tensor) -> None:
    """Textbook MP of ``x`` written into ``idx``/``coef`` (one dense product per step)."""
    r = x.clone()
    at = atoms.T
    for s in range(k):
        corr = r @ at
        j = corr.abs().argmax(dim=1)
        a = corr.gather(1, j[:, None])
        idx[:, s] = j
        coef[:, s] = a[:, 0]
        if s < k - 1:
            r -= a * atoms[j]


@torch.no_grad()
def textbook_matching_pursuit(x: Tensor, atoms: Tensor, k: int) -> tuple[Tensor, Tensor]:
    """The literal MP loop (a full ``r @ atoms.T`` every step): the reference the fast paths match."""
    _validate(x, atoms, k)
    idx, coef = _empty_codes(x, k)
    if x.shape[0]:
        _textbook_into(x, atoms.to(x.dtype), k, idx, coef)
    return idx, coef


def _textbook_chunked(x: Tensor, atoms: Tensor, k: int, chunk: int) -> tuple[Tensor, Tensor]:
    """The textbook loop over chunks of tokens: no Gram matrix, bounded [chunk, m] buffers."""
    idx, coef = _empty_codes(x, k)
    for lo in range(0, x.shape[0], chunk):
        hi = min(lo + chunk, x.shape[0])
        _textbook_into(x[lo:hi], atoms, k, idx[lo:hi], coef[lo:hi])
    return idx, coef


# --------------------------------------------------------------------------------------------------


def _omp_into(x: Tensor, atoms: Tensor, k: int, idx: Tensor, coef: Tensor) -> None:
    """OMP of ``x``: pick argmax |r @ D.T| among unchosen atoms, then refit all chosen by least squares."""
    r = x.clone()
    at = atoms.T
    xd = x.double()
    sol = torch.zeros((x.shape[0], 0), dtype=torch.float64, device=x.device)
    for s in range(k):
        mag = (r @ at).abs()
        if s:
            mag.scatter_(1, idx[:, :s], -1.0)  # never re-pick: the residual is orthogonal to them
        idx[:, s] = mag.argmax(dim=1)
        chosen = atoms[idx[:, : s + 1]].double()  # [n, s+1, d]
        sol = torch.linalg.lstsq(chosen.transpose(1, 2), xd[:, :, None]).solution[:, :, 0]
        r = (xd - torch.bmm(sol[:, None, :], chosen)[:, 0]).to(x.dtype)
    coef.copy_(sol.to(coef.dtype))


@torch.no_grad()
def orthogonal_matching_pursuit(x: Tensor, atoms: Tensor, k: int) -> tuple[Tensor, Tensor]:
    """Orthogonal MP: like MP but all coefficients are refitted by least squares after every step.

    Column t holds the atom chosen at step t and its final least-squares coefficient; atoms are
    never chosen twice, so k must be <= m. Slower than MP (a batched lstsq per step).
    """
    _validate(x, atoms, k)
    if k > atoms.shape[0]:
        raise ValueError(f"OMP picks distinct atoms, so k ({k}) must be <= the number of atoms "
                         f"({atoms.shape[0]})")
    cdt = _compute_dtype(x, atoms)
    xc, d = x.to(cdt), atoms.to(cdt)
    idx = torch.zeros((x.shape[0], k), dtype=torch.int64, device=x.device)
    coef = torch.zeros((x.shape[0], k), dtype=cdt, device=x.device)
    chunk = max(1, min(_default_chunk(atoms.shape[0], x.device), (32 << 20) // (8 * k * x.shape[1])))
    for lo in range(0, x.shape[0], chunk):
        hi = min(lo + chunk, x.shape[0])
        _omp_into(xc[lo:hi], d, k, idx[lo:hi], coef[lo:hi])
    return idx, coef.to(x.dtype)


