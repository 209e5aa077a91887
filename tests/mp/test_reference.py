"""The reference loops: OMP refits; MP never beats it."""

from __future__ import annotations

import torch

from itda_core.mp import (
    matching_pursuit,
    orthogonal_matching_pursuit,
    reconstruct,
)
from tests.mp.helpers import acts, unit_atoms
from tests.tolerance import gamma, mp_tol


def test_omp_residual_orthogonal_to_chosen_atoms() -> None:
    atoms, x = unit_atoms(60, 16), acts(12, 16)
    idx, coef = orthogonal_matching_pursuit(x, atoms, 6)
    assert idx.shape == coef.shape == (12, 6)
    assert all(len(set(row.tolist())) == 6 for row in idx)
    r = x - reconstruct(idx, coef, atoms)
    dots = torch.einsum("nkd,nd->nk", atoms[idx], r)
    # the least-squares solution is float64; rounding its coefficients to float32 and summing them moves the
    # residual by at most gamma_k (plus one rounding each) times sum |coef|, and a dot product adds gamma_d
    scale = coef.abs().sum(dim=1, keepdim=True) + x.norm(dim=1, keepdim=True)
    assert (dots.abs() <= 2 * gamma(6 + 16) * scale).all()
    i2, c2 = matching_pursuit(x, atoms, 6, method="omp")
    assert torch.equal(i2, idx) and torch.equal(c2, coef)  # the same function
    # OMP never does worse than MP with the same k (each residual norm within MP's rounding bound)
    mi, mc = matching_pursuit(x, atoms, 6)
    slack = 2 * mp_tol(16, 6) * x.norm(dim=1)
    assert ((x - reconstruct(mi, mc, atoms)).norm(dim=1) + slack >= r.norm(dim=1)).all()
