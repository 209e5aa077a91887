"""Gram matrices: GramCache grows incrementally (float32 and float16), the tiers auto picks, the budget."""

from __future__ import annotations

import pytest
import torch

from itda_core.mp import (
    GramCache,
    HalfGram,
    backends,
    dispatch,
    gram_matrix,
    gram_matrix_half,
    matching_pursuit,
    textbook_matching_pursuit,
)
from itda_core.mp import gram as tiers
from tests.mp.helpers import acts, assert_same_codes, unit_atoms
from tests.tolerance import dot_tol, unit_roundoff


@pytest.mark.parametrize("block_bytes", [None, 7 * 300 * 4])
def test_gram_cache_incremental_equals_full(block_bytes: int | None, monkeypatch: pytest.MonkeyPatch) -> None:
    if block_bytes is not None:  # new rows computed a few at a time
        monkeypatch.setattr(tiers, "_GRAM_BLOCK_BYTES", block_bytes)
    atoms = unit_atoms(300, 16)
    cache = GramCache("cpu", torch.float32, half=False)
    for m in (5, 6, 40, 41, 130, 300):
        g = cache.update(atoms[:m])
        assert g is not None and g.shape == (m, m)
        # unit atoms: each entry is a length-16 dot product, rounded differently by the two products
        torch.testing.assert_close(g, gram_matrix(atoms[:m]), atol=2 * dot_tol(16), rtol=0)
    assert cache.size == 300
    # a shrunken dictionary is recomputed rather than trusted
    torch.testing.assert_close(cache.update(atoms[:10]), gram_matrix(atoms[:10]), atol=2 * dot_tol(16), rtol=0)


def test_gram_cache_half_incremental_equals_full(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(tiers, "_GRAM_BLOCK_BYTES", 7 * 300 * 4)  # new rows a few at a time
    atoms = unit_atoms(300, 16)
    cache = GramCache("cpu", torch.float32, half=True)
    for m in (5, 40, 41, 300):
        g = cache.update(atoms[:m])
        assert isinstance(g, HalfGram) and g.rows.dtype == torch.float16 and g.shape == (m, m)
        exact = gram_matrix(atoms[:m])
        # float16 rounding of entries |g| <= 1, on top of the two float32 products' own rounding
        bound = unit_roundoff(torch.float16) * float(exact.abs().max()) + 2 * dot_tol(16)
        assert (g.rows.float() - exact).abs().max() <= bound
        # each row's error covers every column, the ones added after the row was first computed too (measured
        # against float32 products that may round differently from those here)
        measured = (g.rows.float() - exact).abs().amax(dim=1)
        torch.testing.assert_close(g.row_err, measured, atol=2 * dot_tol(16), rtol=0)
        full = gram_matrix_half(atoms[:m])
        torch.testing.assert_close(full.row_err, measured, atol=2 * dot_tol(16), rtol=0)
    assert cache.size == 300


def test_gram_cache_switches_to_float16_when_float32_does_not_fit() -> None:
    if backends._screened_kernel() is None:
        pytest.skip("numba kernel unavailable")
    atoms, x = unit_atoms(60, 8), acts(40, 8)
    cache = GramCache("cpu", torch.float32, max_bytes=40 * 40 * 4)
    g = cache.update(atoms[:30])
    assert isinstance(g, torch.Tensor) and g.dtype == torch.float32  # fits in float32
    g = cache.update(atoms[:50])  # 50^2 floats do not fit, 50^2 halves do
    assert isinstance(g, HalfGram)
    exact = gram_matrix(atoms[:50])
    torch.testing.assert_close(g.row_err, (g.rows.float() - exact).abs().amax(dim=1), atol=2 * dot_tol(8), rtol=0)
    assert_same_codes(matching_pursuit(x, atoms[:50], 12, gram=g), textbook_matching_pursuit(x, atoms[:50], 12),
                       x, atoms[:50])
    assert cache.update(atoms) is None  # 60^2 halves do not fit either


def test_auto_uses_float16_gram_between_the_two_budgets(monkeypatch: pytest.MonkeyPatch) -> None:
    if backends._screened_kernel() is None:
        pytest.skip("numba kernel unavailable")
    atoms, x = unit_atoms(64, 8), acts(200, 8)
    monkeypatch.setenv("ITDA_GRAM_MAX_BYTES", str(64 * 64 * 3))
    built: list[bool] = []
    monkeypatch.setattr(tiers, "gram_matrix_half", lambda a: built.append(True) or gram_matrix_half(a))
    got = matching_pursuit(x, atoms, 12)
    assert built
    assert_same_codes(got, textbook_matching_pursuit(x, atoms, 12), x, atoms)
    # atoms far from unit norm would overflow float16 entries: the textbook loop instead
    built.clear()
    big = 300 * atoms  # (three steps only: MP over atoms this long blows the residual up)
    assert_same_codes(matching_pursuit(x, big, 3), textbook_matching_pursuit(x, big, 3), x, big)
    assert not built


def test_large_dictionaries_prefer_the_float16_gram(monkeypatch: pytest.MonkeyPatch) -> None:
    # from HALF_FROM_BYTES of float32 Gram on, auto and the Gram cache store it in float16 even though the
    # float32 matrix fits the budget; below it, and for float64 atoms, they keep the float32 (float64) one
    if backends._screened_kernel() is None:
        pytest.skip("numba kernel unavailable")
    monkeypatch.setattr(tiers, "HALF_FROM_BYTES", 100 * 100 * 4)  # "large" = 100 atoms and more
    atoms, x = unit_atoms(150, 16), acts(300, 16)
    assert isinstance(tiers.auto_gram(atoms), HalfGram)
    small = tiers.auto_gram(atoms[:99])
    assert isinstance(small, torch.Tensor) and small.dtype == torch.float32
    wide = tiers.auto_gram(atoms.double())
    assert isinstance(wide, torch.Tensor) and wide.dtype == torch.float64
    assert isinstance(tiers.auto_gram(atoms, budget=150 * 150 * 3), HalfGram)  # float32 too big, float16 fits
    assert tiers.auto_gram(atoms, budget=100) is None  # neither: the textbook fallback
    screened: list[bool] = []
    real = dispatch._gram_mp_screened
    monkeypatch.setattr(dispatch, "_gram_mp_screened", lambda *a, **kw: screened.append(True) or real(*a, **kw))
    assert_same_codes(matching_pursuit(x, atoms, 12), textbook_matching_pursuit(x, atoms, 12), x, atoms)
    assert screened
    cache = GramCache("cpu", torch.float32)
    assert isinstance(cache.update(atoms[:60]), torch.Tensor)
    grown = cache.update(atoms)  # crosses the size: the cached float32 rows are converted
    assert isinstance(grown, HalfGram)
    exact = gram_matrix(atoms)
    torch.testing.assert_close(grown.row_err, (grown.rows.float() - exact).abs().amax(dim=1), atol=2 * dot_tol(16),
                               rtol=0)
    assert GramCache("cpu", torch.float32, half=False).update(atoms).dtype == torch.float32  # type: ignore[union-attr]
    for bad in (torch.empty(0, 16), torch.ones(16), "atoms"):
        with pytest.raises(ValueError, match="non-empty 2-D tensor"):
            tiers.auto_gram(bad)  # type: ignore[arg-type]


def test_half_gram_rejects_malformed_parts() -> None:
    with pytest.raises(ValueError, match="square float16"):
        HalfGram(torch.zeros(4, 4), torch.zeros(4))
    with pytest.raises(ValueError, match="one entry per row"):
        HalfGram(torch.zeros(4, 4, dtype=torch.float16), torch.zeros(3))
    atoms = unit_atoms(5, 4)
    with pytest.raises(ValueError, match="gram must be"):
        matching_pursuit(acts(2, 4), atoms, 3, gram=gram_matrix_half(unit_atoms(6, 4)))


def test_gram_cache_budget_and_fallback() -> None:
    atoms, x = unit_atoms(64, 8), acts(40, 8)
    cache = GramCache("cpu", torch.float32, max_bytes=32 * 32 * 4, half=False)
    assert cache.update(atoms[:32]) is not None
    assert cache.update(atoms) is None  # 64^2 floats > budget: caller gets the fallback
    ref = textbook_matching_pursuit(x, atoms, 12)
    assert_same_codes(matching_pursuit(x, atoms, 12, gram=None), ref, x, atoms)


def test_auto_falls_back_when_gram_too_big(monkeypatch: pytest.MonkeyPatch) -> None:
    atoms, x = unit_atoms(64, 8), acts(200, 8)
    monkeypatch.setenv("ITDA_GRAM_MAX_BYTES", "100")
    called: list[bool] = []
    monkeypatch.setattr(tiers, "gram_matrix", lambda a: called.append(True) or a @ a.T)
    monkeypatch.setattr(tiers, "gram_matrix_half", lambda a: called.append(True) or gram_matrix_half(a))
    got = matching_pursuit(x, atoms, 12, chunk_size=16)
    assert not called
    assert_same_codes(got, textbook_matching_pursuit(x, atoms, 12), x, atoms)
    monkeypatch.delenv("ITDA_GRAM_MAX_BYTES")
    matching_pursuit(x, atoms, 12)
    assert called  # with room, auto builds G for a batch this size
