"""Shared by the MP tests: random unit atoms and activations, a runner forced down one Gram path, and the
checks that codes equal the textbook loop's (or are greedy up to rounding where near-ties allow either)."""

from __future__ import annotations

import pytest
import torch

from itda_core.mp import backends, gram_matrix_half, matching_pursuit, reconstruct
from tests.tolerance import gamma, mp_tol

GRAM_PATHS = ["half", "numba", "torch"]


def unit_atoms(m: int, d: int, seed: int = 0, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """m random unit-norm atoms of width d."""
    g = torch.Generator().manual_seed(seed)
    a = torch.randn(m, d, generator=g, dtype=dtype)
    return a / a.norm(dim=1, keepdim=True)


def acts(n: int, d: int, seed: int = 1) -> torch.Tensor:
    """n raw activations of width d (Gaussian, scaled and offset like real ones)."""
    g = torch.Generator().manual_seed(seed)
    return 3.0 * torch.randn(n, d, generator=g) + 1.0  # raw, not normalised, with an offset


def run_path(path: str, x: torch.Tensor, atoms: torch.Tensor, k: int, monkeypatch: pytest.MonkeyPatch,
             **kw: object) -> tuple[torch.Tensor, torch.Tensor]:
    """matching_pursuit forced down the float16-screened kernel (given a HalfGram), the float32 numba
    recurrence or the torch Gram loop."""
    if path == "torch":
        monkeypatch.setenv("ITDA_MP_NUMBA", "0")
    else:
        monkeypatch.delenv("ITDA_MP_NUMBA", raising=False)
        if backends._numba_kernel() is None:
            pytest.skip("numba kernel unavailable")
    if path == "half":
        if backends._screened_kernel() is None:
            pytest.skip("numba kernel unavailable")
        kw = {**kw, "gram": gram_matrix_half(atoms)}
    return matching_pursuit(x, atoms, k, method="gram", **kw)  # type: ignore[arg-type]


def assert_same_codes(got: tuple[torch.Tensor, torch.Tensor], ref: tuple[torch.Tensor, torch.Tensor],
                       x: torch.Tensor, atoms: torch.Tensor) -> None:
    """Indices identical (random data has no near-ties), coefficients and reconstructions within rounding: each
    coefficient is within MP's rounding bound of the exact one (so two are within twice that), and a
    reconstruction sums k of them times unit atoms."""
    gi, gc = got
    ri, rc = ref
    assert gi.dtype == torch.int64 and gi.shape == ri.shape and gc.shape == rc.shape
    assert torch.equal(gi, ri)
    k, d = gi.shape[1], atoms.shape[1]
    scale = x.norm(dim=1, keepdim=True) * atoms.norm(dim=1).max()
    coef_tol = 2 * mp_tol(d, k) * scale
    assert ((gc - rc).abs() <= coef_tol).all(), float(((gc - rc).abs() / scale).max())
    # k coefficient differences, plus each reconstruction's own k-term sums (|coef| <= |x| for unit atoms)
    diff = (reconstruct(gi, gc, atoms) - reconstruct(ri, rc, atoms)).abs()
    assert (diff <= k * coef_tol + 2 * gamma(k) * k * scale).all(), float((diff / scale).max())


def assert_greedy_up_to_rounding(x: torch.Tensor, atoms: torch.Tensor, idx: torch.Tensor,
                                  coef: torch.Tensor) -> None:
    """Replay the codes in float64: at step s the chosen atom's |r_s . D_j| is within the float32 rounding
    bound of the largest |r_s . D_i|, and its coefficient within the same bound of r_s . D_j. The bound is
    that of s + 1 steps' correlations (:func:`tolerance.mp_tol`), twice for the comparison of two of them."""
    n, k = idx.shape
    d = atoms.shape[1]
    a64 = atoms.double()
    r = x.double().clone()
    scale = x.double().norm(dim=1)
    rows = torch.arange(n)
    for s in range(k):
        corr = r @ a64.T
        tol = mp_tol(d, s + 1) * scale
        chosen = corr[rows, idx[:, s]]
        best = corr.abs().amax(dim=1)
        slack = best - chosen.abs()
        assert (slack <= 2 * tol).all(), f"step {s}: an atom {float((slack / scale).max()):.2e} |x| short of the best"
        gap = (coef[:, s].double() - chosen).abs()
        assert (gap <= tol).all(), f"step {s}: a coefficient {float((gap / scale).max()):.2e} |x| off its correlation"
        r -= coef[:, s, None].double() * a64[idx[:, s]]
