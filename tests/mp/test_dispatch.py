"""The fast paths: the float16-screened kernel decides exactly and refreshes loose rows; CUDA (Triton, torch)."""

from __future__ import annotations

import importlib.util

import pytest
import torch

from itda_core.mp import (
    GramCache,
    backends,
    gram_matrix,
    gram_matrix_half,
    matching_pursuit,
    reconstruct,
    textbook_matching_pursuit,
)
from tests.mp.helpers import acts, assert_greedy_up_to_rounding, assert_same_codes, unit_atoms
from tests.tolerance import dot_tol, mp_tol


def test_screened_kernel_decides_near_duplicates_exactly() -> None:
    # twins 3e-4 apart: float16 Gram rows (error ~6e-5 per unit coefficient) cannot order them after a
    # few steps, so only the exact dot products keep the screened path's steps greedy
    if backends._screened_kernel() is None:
        pytest.skip("numba kernel unavailable")
    base = unit_atoms(400, 32)
    noise = torch.randn(400, 32, generator=torch.Generator().manual_seed(5))
    twins = base + 3e-4 * noise
    atoms = torch.cat([base, twins / twins.norm(dim=1, keepdim=True)])
    x = acts(60, 32)
    k = 30
    ti, tc = textbook_matching_pursuit(x, atoms, k)
    hg = gram_matrix_half(atoms)
    gi, gc = matching_pursuit(x, atoms, k, gram=hg)
    assert_greedy_up_to_rounding(x, atoms, gi, gc)  # every step takes a best atom, up to float32 rounding
    twin_picks = (gi >= 400).sum().item()
    assert 100 < twin_picks < 60 * 30 - 100  # both members of pairs get chosen
    # where a token took the same pair at every step as the textbook loop, the reconstructions differ only by
    # the swaps within pairs: each moves the residual by at most 2 delta |r| (I - a a^T is a projection)
    same = ((ti % 400) == (gi % 400)).all(dim=1)
    assert same.float().mean() > 0.9  # (a different pair later on needs a near-tie between two pairs)
    delta = float((atoms[:400] - atoms[400:]).norm(dim=1).max())
    scale = x.norm(dim=1)
    diff = (reconstruct(gi, gc, atoms) - reconstruct(ti, tc, atoms)).norm(dim=1)
    assert (diff[same] <= (2 * k * delta + 2 * mp_tol(32, k)) * scale[same]).all()


@pytest.mark.parametrize("rows", [[0, 1, 2, 3, 4], [2, 0, 3, 4, 1]])
def test_screened_kernel_refreshes_when_the_residual_vanishes(rows: list[int], monkeypatch: pytest.MonkeyPatch) -> None:
    # x = 2.5 * an atom: after one step the residual is ~1e-7 while the float16 error bound is ~1e-4, so
    # every atom is a candidate; the row must be recomputed exactly (r @ D.T) rather than dot-checked.
    # The kernel encodes rows in pairs: the second order pairs each such row with an ordinary one, and
    # leaves one of them alone at the end (odd count)
    kernel = backends._screened_kernel()
    if kernel is None:
        pytest.skip("numba kernel unavailable")
    calls: list[int] = []

    def counting(*args: object) -> None:
        calls.append(1)
        kernel(*args)

    monkeypatch.setattr(backends, "_screened_kernel", lambda: counting)
    atoms = unit_atoms(3000, 16)
    x = torch.cat([2.5 * atoms[[17, 2999]], acts(3, 16)])[rows]
    idx, coef = matching_pursuit(x, atoms, 6, gram=gram_matrix_half(atoms))
    ti, tc = textbook_matching_pursuit(x, atoms, 6)
    assert len(calls) >= 2  # a second pass for the refreshed rows
    twin = [rows.index(0), rows.index(1)]
    plain = [i for i in range(5) if i not in twin]
    assert idx[twin, 0].tolist() == [17, 2999]
    assert coef[twin, 1:].abs().max() <= 2 * mp_tol(16, 6, scale=2.5)  # nothing left but rounding
    assert_same_codes((idx[plain], coef[plain]), (ti[plain], tc[plain]), x[plain], atoms)
    assert_greedy_up_to_rounding(x, atoms, idx, coef)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("m", [2000, 20000])  # Triton: corr row in registers / in tiles
def test_cuda_matches_textbook(m: int, monkeypatch: pytest.MonkeyPatch) -> None:
    atoms, x = unit_atoms(m, 64), acts(300, 64)
    ref = textbook_matching_pursuit(x, atoms, 20)
    dev = torch.device("cuda")
    xc, ac = x.to(dev), atoms.to(dev)
    for use_triton in ("1", "0"):
        monkeypatch.setenv("ITDA_MP_TRITON", use_triton)
        for method in ("auto", "gram", "textbook"):
            idx, coef = matching_pursuit(xc, ac, 20, method=method)
            assert idx.device.type == "cuda" and coef.device.type == "cuda"
            assert_greedy_up_to_rounding(x, atoms, idx.cpu(), coef.cpu())
            same = (idx.cpu() == ref[0]).all(dim=1)
            assert same.float().mean() > 0.98  # a near-tie may flip a row
            assert_same_codes((idx.cpu()[same], coef.cpu()[same]), (ref[0][same], ref[1][same]), x[same], atoms)
    monkeypatch.setenv("ITDA_MP_TRITON", "1")
    if importlib.util.find_spec("triton") is not None:
        assert backends._triton_module() is not None  # the Triton kernels ran rather than failing over
    cache = GramCache(dev, torch.float32)
    cache.update(ac[: m // 2])
    g = cache.update(ac)  # incremental on the GPU too
    assert g is not None and g.device.type == "cuda"
    torch.testing.assert_close(g, gram_matrix(ac), atol=2 * dot_tol(64), rtol=0)
    idx, _ = matching_pursuit(xc, ac, 20, gram=g)
    assert (idx.cpu() == ref[0]).all(dim=1).float().mean() > 0.98


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("use_triton", ["1", "0"])
def test_cuda_ties_and_zeros(use_triton: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ITDA_MP_TRITON", use_triton)
    eye = torch.eye(4)
    atoms = torch.stack([eye[0], eye[1], eye[2], eye[1], eye[3], eye[2]]).cuda()
    x = torch.tensor([[0.0, 0.0, 5.0, 0.0], [0.0, -2.0, 0.0, 0.0], [1.0, 1.0, 1.0, 1.0], [0.0] * 4]).cuda()
    idx, coef = matching_pursuit(x, atoms, 4, method="gram")
    assert idx[:, 0].tolist() == [2, 1, 0, 0]
    assert coef[:, 0].tolist() == [5.0, -2.0, 1.0, 0.0]
    assert idx[2].tolist() == [0, 1, 2, 4] and idx[3].tolist() == [0, 0, 0, 0]
