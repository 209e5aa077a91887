"""Matching pursuit: every path equals the textbook loop; edge cases; Gram cache; OMP."""

from __future__ import annotations

import importlib.util

import pytest
import torch

from itda_core import mp
from itda_core.mp import (
    GramCache,
    HalfGram,
    gram_matrix,
    gram_matrix_half,
    matching_pursuit,
    orthogonal_matching_pursuit,
    reconstruct,
    textbook_matching_pursuit,
)
from tests.tolerance import dot_tol, gamma, mp_tol, unit_roundoff

GRAM_PATHS = ["half", "numba", "torch"]


def _unit(m: int, d: int, seed: int = 0, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    a = torch.randn(m, d, generator=g, dtype=dtype)
    return a / a.norm(dim=1, keepdim=True)


def _acts(n: int, d: int, seed: int = 1) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return 3.0 * torch.randn(n, d, generator=g) + 1.0  # raw, not normalised, with an offset


def _run(path: str, x: torch.Tensor, atoms: torch.Tensor, k: int, monkeypatch: pytest.MonkeyPatch,
         **kw: object) -> tuple[torch.Tensor, torch.Tensor]:
    """matching_pursuit forced down the float16-screened kernel (given a HalfGram), the float32 numba
    recurrence or the torch Gram loop."""
    if path == "torch":
        monkeypatch.setenv("ITDA_MP_NUMBA", "0")
    else:
        monkeypatch.delenv("ITDA_MP_NUMBA", raising=False)
        if mp._numba_kernel() is None:
            pytest.skip("numba kernel unavailable")
    if path == "half":
        if mp._screened_kernel() is None:
            pytest.skip("numba kernel unavailable")
        kw = {**kw, "gram": gram_matrix_half(atoms)}
    return matching_pursuit(x, atoms, k, method="gram", **kw)  # type: ignore[arg-type]


def _assert_same_codes(got: tuple[torch.Tensor, torch.Tensor], ref: tuple[torch.Tensor, torch.Tensor],
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


@pytest.mark.parametrize("path", GRAM_PATHS)
@pytest.mark.parametrize(("n", "m", "d", "k"), [(1, 7, 5, 3), (37, 64, 16, 8), (50, 300, 32, 20),
                                                (20, 5, 8, 12), (9, 3000, 24, 6), (5, 1, 4, 3)])
def test_gram_paths_equal_textbook(path: str, n: int, m: int, d: int, k: int,
                                   monkeypatch: pytest.MonkeyPatch) -> None:
    atoms, x = _unit(m, d), _acts(n, d)
    ref = textbook_matching_pursuit(x, atoms, k)
    _assert_same_codes(_run(path, x, atoms, k, monkeypatch), ref, x, atoms)
    _assert_same_codes(_run(path, x, atoms, k, monkeypatch, chunk_size=4), ref, x, atoms)


@pytest.mark.parametrize("method", ["auto", "textbook"])
def test_other_methods_equal_textbook(method: str) -> None:
    atoms, x = _unit(200, 24), _acts(70, 24)
    ref = textbook_matching_pursuit(x, atoms, 15)
    _assert_same_codes(matching_pursuit(x, atoms, 15, method=method), ref, x, atoms)
    _assert_same_codes(matching_pursuit(x, atoms, 15, method=method, chunk_size=8), ref, x, atoms)
    # an explicitly given Gram matrix (also a strided view, as GramCache returns) is used as is
    big = torch.zeros(256, 256)
    big[:200, :200] = gram_matrix(atoms)
    _assert_same_codes(matching_pursuit(x, atoms, 15, gram=big[:200, :200]), ref, x, atoms)
    big[30:230, 7:207] = gram_matrix(atoms)  # a view with a storage offset
    _assert_same_codes(matching_pursuit(x, atoms, 15, gram=big[30:230, 7:207]), ref, x, atoms)
    column_major = gram_matrix(atoms).T.contiguous().T
    _assert_same_codes(matching_pursuit(x, atoms, 15, gram=column_major), ref, x, atoms)


def test_k_greater_than_m_rechooses_atoms() -> None:
    atoms, x = _unit(4, 6), _acts(10, 6)
    idx, coef = matching_pursuit(x, atoms, 10)
    assert idx.shape == (10, 10)
    # with 4 atoms and 10 steps every row picks some atom more than once
    assert all(len(set(row.tolist())) < 10 for row in idx)
    _assert_same_codes((idx, coef), textbook_matching_pursuit(x, atoms, 10), x, atoms)


@pytest.mark.parametrize("path", GRAM_PATHS)
def test_exact_ties_go_to_lowest_index(path: str, monkeypatch: pytest.MonkeyPatch) -> None:
    # atoms 2 and 5 are the same vector, as are 1 and 3; the basis makes every product exact
    eye = torch.eye(4)
    atoms = torch.stack([eye[0], eye[1], eye[2], eye[1], eye[3], eye[2]])
    x = torch.tensor([[0.0, 0.0, 5.0, 0.0], [0.0, -2.0, 0.0, 0.0], [1.0, 1.0, 1.0, 1.0]])
    idx, coef = _run(path, x, atoms, 1, monkeypatch)
    assert idx[:, 0].tolist() == [2, 1, 0]
    assert coef[:, 0].tolist() == [5.0, -2.0, 1.0]
    ti, _ = textbook_matching_pursuit(x, atoms, 4)
    gi, _ = _run(path, x, atoms, 4, monkeypatch)
    assert torch.equal(gi, ti)
    assert gi[2].tolist() == [0, 1, 2, 4]  # equal |corr| everywhere: lowest index each step


@pytest.mark.parametrize("path", GRAM_PATHS)
def test_x_equal_to_an_atom(path: str, monkeypatch: pytest.MonkeyPatch) -> None:
    atoms = _unit(50, 16)
    x = 2.5 * atoms[[17, 3]]
    idx, coef = _run(path, x, atoms, 3, monkeypatch)
    assert idx[:, 0].tolist() == [17, 3]
    tol = mp_tol(16, 3, scale=2.5)  # |x| = 2.5 |atom|, and |atom| = 1 up to rounding
    assert ((coef[:, 0] - 2.5).abs() <= tol).all()
    assert coef[:, 1:].abs().max() <= 2 * tol  # nothing left after the first step but rounding
    assert (reconstruct(idx, coef, atoms) - x).norm(dim=1).max() <= 4 * tol


@pytest.mark.parametrize("method", ["auto", "gram", "textbook", "half"])
def test_zero_vectors(method: str) -> None:
    atoms = _unit(30, 8)
    x = torch.zeros(3, 8)
    x[1] = _acts(1, 8)[0]
    if method == "half":
        if mp._screened_kernel() is None:
            pytest.skip("numba kernel unavailable")
        idx, coef = matching_pursuit(x, atoms, 5, gram=gram_matrix_half(atoms))
    else:
        idx, coef = matching_pursuit(x, atoms, 5, method=method)
    ti, _ = textbook_matching_pursuit(x, atoms, 5)
    assert idx[0].tolist() == [0] * 5 and idx[2].tolist() == [0] * 5
    assert coef[0].abs().sum() == 0 and coef[2].abs().sum() == 0
    assert torch.equal(idx, ti)


def test_single_atom() -> None:
    atoms = _unit(1, 6)
    x = _acts(4, 6)
    idx, coef = matching_pursuit(x, atoms, 3)
    assert idx.tolist() == [[0, 0, 0]] * 4
    scale = x.norm(dim=1)
    assert ((coef[:, 0] - x @ atoms[0]).abs() <= 2 * dot_tol(6) * scale).all()  # two roundings of one dot product
    assert (coef[:, 1:].abs() <= 2 * mp_tol(6, 3) * scale[:, None]).all()  # the residual is orthogonal after one step


def test_negative_coefficients_and_reconstruct_sums_repeats() -> None:
    atoms, x = _unit(40, 12), _acts(30, 12)
    _idx, coef = matching_pursuit(x, atoms, 10)
    assert (coef < 0).any() and (coef > 0).any()
    # reconstruct adds repeated indices: same atom twice == once with the summed coefficient
    idx = torch.tensor([[3, 3, 1], [0, 2, 0]])
    c = torch.tensor([[1.5, -0.5, 2.0], [1.0, 1.0, 0.25]])
    expected = torch.stack([1.0 * atoms[3] + 2.0 * atoms[1], 1.25 * atoms[0] + atoms[2]])
    torch.testing.assert_close(reconstruct(idx, c, atoms), expected)
    assert reconstruct(idx[:, :0], c[:, :0], atoms).abs().sum() == 0


def test_residual_norm_non_increasing() -> None:
    atoms, x = _unit(100, 20), _acts(25, 20)
    idx, coef = matching_pursuit(x, atoms, 30)
    prev = x.norm(dim=1)
    for s in range(30):
        cur = (x - reconstruct(idx[:, : s + 1], coef[:, : s + 1], atoms)).norm(dim=1)
        # each residual norm is recomputed here from s + 1 float32 steps: within MP's bound of the exact one
        assert (cur <= prev + 2 * mp_tol(20, s + 1) * x.norm(dim=1)).all()
        prev = cur


@pytest.mark.parametrize("path", [*GRAM_PATHS, "textbook"])
def test_stop_residual_truncates_the_same_codes(path: str, monkeypatch: pytest.MonkeyPatch) -> None:
    atoms, x = _unit(400, 24), _acts(60, 24)
    x[5] = atoms[7] * 2.0  # residual 0 after one step
    x[10] = 0.0
    k = 25
    frac = torch.full((60,), 0.1)
    frac[::3] = -1.0  # these rows never stop
    if path == "textbook":
        full = matching_pursuit(x, atoms, k, method="textbook")
        got = matching_pursuit(x, atoms, k, method="textbook", stop_residual=frac)
    else:
        full = _run(path, x, atoms, k, monkeypatch)
        if path in ("numba", "half"):  # the numba kernels skip the steps themselves: nothing to cut afterwards
            monkeypatch.setattr(mp, "_apply_stop", lambda *a: pytest.fail("cut afterwards, not skipped"))
        got = _run(path, x, atoms, k, monkeypatch, stop_residual=frac)
        monkeypatch.undo()
    # reference: the full codes cut after the first step whose residual energy |x|^2 - sum coef^2 (= |r|^2
    # for unit atoms), in float64 as documented, is at most 0.1 |x|^2
    energy = torch.linalg.vector_norm(x, dim=1, dtype=torch.float64).square()
    left = energy - full[1].double().square().cumsum(dim=1).T
    steps = torch.full((60,), k)
    for s in range(k):
        reached = (left[s] <= 0.1 * energy) & (steps == k) & (frac > 0)
        steps[reached] = s + 1
    assert steps[::3].eq(k).all() and steps[5] == 1 and steps[10] == 1 and 1 < steps.float().mean() < k
    for t in range(60):
        n = int(steps[t])
        assert torch.equal(got[0][t, :n], full[0][t, :n]) and torch.equal(got[1][t, :n], full[1][t, :n])
        assert got[0][t, n:].eq(0).all() and got[1][t, n:].eq(0).all()
    assert torch.equal(got[0], matching_pursuit(x, atoms, k, method="textbook", stop_residual=frac)[0])
    # a float applies to every row
    one = matching_pursuit(x, atoms, k, stop_residual=0.1)
    assert (one[1] != 0).sum(1).max() < k


def test_empty_batch_and_dtypes() -> None:
    atoms = _unit(10, 4)
    idx, coef = matching_pursuit(torch.zeros(0, 4), atoms, 3)
    assert idx.shape == (0, 3) and coef.shape == (0, 3) and idx.dtype == torch.int64
    x = _acts(6, 4)
    i16, c16 = matching_pursuit(x.half(), atoms, 3)
    assert c16.dtype == torch.float16 and i16.shape == (6, 3)
    i64, c64 = matching_pursuit(x.double(), atoms.double(), 3)
    assert c64.dtype == torch.float64
    ti, _ = textbook_matching_pursuit(x.double(), atoms.double(), 3)
    assert torch.equal(i64, ti)


def test_errors() -> None:
    atoms, x = _unit(10, 4), _acts(3, 4)
    with pytest.raises(ValueError, match="empty"):
        matching_pursuit(x, torch.zeros(0, 4), 3)
    with pytest.raises(ValueError, match="k"):
        matching_pursuit(x, atoms, 0)
    with pytest.raises(ValueError, match="width"):
        matching_pursuit(x, _unit(10, 5), 3)
    with pytest.raises(ValueError, match="2-D"):
        matching_pursuit(x[0], atoms, 3)
    with pytest.raises(ValueError, match="method"):
        matching_pursuit(x, atoms, 3, method="nope")
    with pytest.raises(ValueError, match="gram"):
        matching_pursuit(x, atoms, 3, gram=torch.zeros(9, 9))
    with pytest.raises(ValueError, match="chunk_size"):
        matching_pursuit(x, atoms, 3, chunk_size=0)
    with pytest.raises(ValueError, match="NaN"):
        matching_pursuit(torch.full((2, 4), float("nan")), atoms, 3)
    with pytest.raises(ValueError, match="k"):
        orthogonal_matching_pursuit(x, atoms, 11)
    with pytest.raises(ValueError, match="stop_residual must be a float or one value per row"):
        matching_pursuit(x, atoms, 3, stop_residual=torch.zeros(2))
    with pytest.raises(ValueError, match="stop_residual must be finite"):
        matching_pursuit(x, atoms, 3, stop_residual=float("nan"))
    with pytest.raises(ValueError, match="stop_residual must be a number or a tensor"):
        matching_pursuit(x, atoms, 3, stop_residual="0.1")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="plain MP only"):
        matching_pursuit(x, atoms, 3, method="omp", stop_residual=0.1)
    with pytest.raises(ValueError, match="same"):
        reconstruct(torch.zeros(2, 3, dtype=torch.int64), torch.zeros(2, 2), atoms)


@pytest.mark.parametrize("block_bytes", [None, 7 * 300 * 4])
def test_gram_cache_incremental_equals_full(block_bytes: int | None, monkeypatch: pytest.MonkeyPatch) -> None:
    if block_bytes is not None:  # new rows computed a few at a time
        monkeypatch.setattr(mp, "_GRAM_BLOCK_BYTES", block_bytes)
    atoms = _unit(300, 16)
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
    monkeypatch.setattr(mp, "_GRAM_BLOCK_BYTES", 7 * 300 * 4)  # new rows a few at a time
    atoms = _unit(300, 16)
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


def test_screened_kernel_decides_near_duplicates_exactly() -> None:
    # twins 3e-4 apart: float16 Gram rows (error ~6e-5 per unit coefficient) cannot order them after a
    # few steps, so only the exact dot products keep the screened path's steps greedy
    if mp._screened_kernel() is None:
        pytest.skip("numba kernel unavailable")
    base = _unit(400, 32)
    noise = torch.randn(400, 32, generator=torch.Generator().manual_seed(5))
    twins = base + 3e-4 * noise
    atoms = torch.cat([base, twins / twins.norm(dim=1, keepdim=True)])
    x = _acts(60, 32)
    k = 30
    ti, tc = textbook_matching_pursuit(x, atoms, k)
    hg = gram_matrix_half(atoms)
    gi, gc = matching_pursuit(x, atoms, k, gram=hg)
    _assert_greedy_up_to_rounding(x, atoms, gi, gc)  # every step takes a best atom, up to float32 rounding
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
    kernel = mp._screened_kernel()
    if kernel is None:
        pytest.skip("numba kernel unavailable")
    calls: list[int] = []

    def counting(*args: object) -> None:
        calls.append(1)
        kernel(*args)

    monkeypatch.setattr(mp, "_screened_kernel", lambda: counting)
    atoms = _unit(3000, 16)
    x = torch.cat([2.5 * atoms[[17, 2999]], _acts(3, 16)])[rows]
    idx, coef = matching_pursuit(x, atoms, 6, gram=gram_matrix_half(atoms))
    ti, tc = textbook_matching_pursuit(x, atoms, 6)
    assert len(calls) >= 2  # a second pass for the refreshed rows
    twin = [rows.index(0), rows.index(1)]
    plain = [i for i in range(5) if i not in twin]
    assert idx[twin, 0].tolist() == [17, 2999]
    assert coef[twin, 1:].abs().max() <= 2 * mp_tol(16, 6, scale=2.5)  # nothing left but rounding
    _assert_same_codes((idx[plain], coef[plain]), (ti[plain], tc[plain]), x[plain], atoms)
    _assert_greedy_up_to_rounding(x, atoms, idx, coef)


def test_gram_cache_switches_to_float16_when_float32_does_not_fit() -> None:
    if mp._screened_kernel() is None:
        pytest.skip("numba kernel unavailable")
    atoms, x = _unit(60, 8), _acts(40, 8)
    cache = GramCache("cpu", torch.float32, max_bytes=40 * 40 * 4)
    g = cache.update(atoms[:30])
    assert isinstance(g, torch.Tensor) and g.dtype == torch.float32  # fits in float32
    g = cache.update(atoms[:50])  # 50^2 floats do not fit, 50^2 halves do
    assert isinstance(g, HalfGram)
    exact = gram_matrix(atoms[:50])
    torch.testing.assert_close(g.row_err, (g.rows.float() - exact).abs().amax(dim=1), atol=2 * dot_tol(8), rtol=0)
    _assert_same_codes(matching_pursuit(x, atoms[:50], 12, gram=g), textbook_matching_pursuit(x, atoms[:50], 12),
                       x, atoms[:50])
    assert cache.update(atoms) is None  # 60^2 halves do not fit either


def test_auto_uses_float16_gram_between_the_two_budgets(monkeypatch: pytest.MonkeyPatch) -> None:
    if mp._screened_kernel() is None:
        pytest.skip("numba kernel unavailable")
    atoms, x = _unit(64, 8), _acts(200, 8)
    monkeypatch.setenv("ITDA_GRAM_MAX_BYTES", str(64 * 64 * 3))
    built: list[bool] = []
    monkeypatch.setattr(mp, "gram_matrix_half", lambda a: built.append(True) or gram_matrix_half(a))
    got = matching_pursuit(x, atoms, 12)
    assert built
    _assert_same_codes(got, textbook_matching_pursuit(x, atoms, 12), x, atoms)
    # atoms far from unit norm would overflow float16 entries: the textbook loop instead
    built.clear()
    big = 300 * atoms  # (three steps only: MP over atoms this long blows the residual up)
    _assert_same_codes(matching_pursuit(x, big, 3), textbook_matching_pursuit(x, big, 3), x, big)
    assert not built


def test_large_dictionaries_prefer_the_float16_gram(monkeypatch: pytest.MonkeyPatch) -> None:
    # from HALF_FROM_BYTES of float32 Gram on, auto and the Gram cache store it in float16 even though the
    # float32 matrix fits the budget; below it, and for float64 atoms, they keep the float32 (float64) one
    if mp._screened_kernel() is None:
        pytest.skip("numba kernel unavailable")
    monkeypatch.setattr(mp, "HALF_FROM_BYTES", 100 * 100 * 4)  # "large" = 100 atoms and more
    atoms, x = _unit(150, 16), _acts(300, 16)
    assert isinstance(mp.auto_gram(atoms), HalfGram)
    small = mp.auto_gram(atoms[:99])
    assert isinstance(small, torch.Tensor) and small.dtype == torch.float32
    wide = mp.auto_gram(atoms.double())
    assert isinstance(wide, torch.Tensor) and wide.dtype == torch.float64
    assert isinstance(mp.auto_gram(atoms, budget=150 * 150 * 3), HalfGram)  # float32 too big, float16 fits
    assert mp.auto_gram(atoms, budget=100) is None  # neither: the textbook fallback
    screened: list[bool] = []
    real = mp._gram_mp_screened
    monkeypatch.setattr(mp, "_gram_mp_screened", lambda *a, **kw: screened.append(True) or real(*a, **kw))
    _assert_same_codes(matching_pursuit(x, atoms, 12), textbook_matching_pursuit(x, atoms, 12), x, atoms)
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
            mp.auto_gram(bad)  # type: ignore[arg-type]


def test_half_gram_rejects_malformed_parts() -> None:
    with pytest.raises(ValueError, match="square float16"):
        HalfGram(torch.zeros(4, 4), torch.zeros(4))
    with pytest.raises(ValueError, match="one entry per row"):
        HalfGram(torch.zeros(4, 4, dtype=torch.float16), torch.zeros(3))
    atoms = _unit(5, 4)
    with pytest.raises(ValueError, match="gram must be"):
        matching_pursuit(_acts(2, 4), atoms, 3, gram=gram_matrix_half(_unit(6, 4)))


def test_gram_cache_budget_and_fallback() -> None:
    atoms, x = _unit(64, 8), _acts(40, 8)
    cache = GramCache("cpu", torch.float32, max_bytes=32 * 32 * 4, half=False)
    assert cache.update(atoms[:32]) is not None
    assert cache.update(atoms) is None  # 64^2 floats > budget: caller gets the fallback
    ref = textbook_matching_pursuit(x, atoms, 12)
    _assert_same_codes(matching_pursuit(x, atoms, 12, gram=None), ref, x, atoms)


def test_auto_falls_back_when_gram_too_big(monkeypatch: pytest.MonkeyPatch) -> None:
    atoms, x = _unit(64, 8), _acts(200, 8)
    monkeypatch.setenv("ITDA_GRAM_MAX_BYTES", "100")
    called: list[bool] = []
    monkeypatch.setattr(mp, "gram_matrix", lambda a: called.append(True) or a @ a.T)
    monkeypatch.setattr(mp, "gram_matrix_half", lambda a: called.append(True) or gram_matrix_half(a))
    got = matching_pursuit(x, atoms, 12, chunk_size=16)
    assert not called
    _assert_same_codes(got, textbook_matching_pursuit(x, atoms, 12), x, atoms)
    monkeypatch.delenv("ITDA_GRAM_MAX_BYTES")
    matching_pursuit(x, atoms, 12)
    assert called  # with room, auto builds G for a batch this size


def test_omp_residual_orthogonal_to_chosen_atoms() -> None:
    atoms, x = _unit(60, 16), _acts(12, 16)
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


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("m", [2000, 20000])  # Triton: corr row in registers / in tiles
def test_cuda_matches_textbook(m: int, monkeypatch: pytest.MonkeyPatch) -> None:
    atoms, x = _unit(m, 64), _acts(300, 64)
    ref = textbook_matching_pursuit(x, atoms, 20)
    dev = torch.device("cuda")
    xc, ac = x.to(dev), atoms.to(dev)
    for use_triton in ("1", "0"):
        monkeypatch.setenv("ITDA_MP_TRITON", use_triton)
        for method in ("auto", "gram", "textbook"):
            idx, coef = matching_pursuit(xc, ac, 20, method=method)
            assert idx.device.type == "cuda" and coef.device.type == "cuda"
            _assert_greedy_up_to_rounding(x, atoms, idx.cpu(), coef.cpu())
            same = (idx.cpu() == ref[0]).all(dim=1)
            assert same.float().mean() > 0.98  # a near-tie may flip a row
            _assert_same_codes((idx.cpu()[same], coef.cpu()[same]), (ref[0][same], ref[1][same]), x[same], atoms)
    monkeypatch.setenv("ITDA_MP_TRITON", "1")
    if importlib.util.find_spec("triton") is not None:
        assert mp._triton_module() is not None  # the Triton kernels ran rather than failing over
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


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_reconstruct_equals_the_loop_over_steps(dtype) -> None:
    gen = torch.Generator().manual_seed(3)
    atoms = torch.randn(50, 16, generator=gen, dtype=dtype)
    idx = torch.randint(0, 50, (30, 7), generator=gen)
    coef = torch.randn(30, 7, generator=gen, dtype=dtype)
    expected = torch.zeros(30, 16, dtype=dtype)
    for s in range(7):
        expected += coef[:, s, None] * atoms[idx[:, s]]
    got = reconstruct(idx, coef, atoms)
    assert got.dtype == dtype
    # two 7-term sums of the same products, each within gamma_7 of the exact one (products rounded once more)
    bound = 2 * gamma(7 + 1, dtype) * (coef.abs()[:, :, None] * atoms[idx].abs()).sum(dim=1)
    assert ((got - expected).abs() <= bound).all()


# --------------------------------------------------------------------------------------------------
# Near-ties: ITDA dictionaries hold near-duplicate atoms (a batch adds similar tokens together), and there
# two correct MP implementations may break a near-tie differently. What every path must guarantee is that
# each step is a greedy MP step up to float rounding, and that the reconstruction stays as close as the
# near-duplicates allow -- not that the indices equal the textbook loop's.
# --------------------------------------------------------------------------------------------------


def _assert_greedy_up_to_rounding(x: torch.Tensor, atoms: torch.Tensor, idx: torch.Tensor,
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


def _near_duplicate_dictionary(seed: int = 0) -> tuple[torch.Tensor, torch.Tensor, float, int]:
    """Atoms in clusters of near-duplicates (distances 0 to 1e-5, around float32 rounding of a correlation)
    around orthonormal centres, shuffled as batch adds leave them; inputs that combine ``s`` centres with
    well-separated coefficients, so that only near-duplicates ever tie. Returns (atoms, x, delta, s), delta
    the largest distance between two atoms of a cluster."""
    d, clusters, s, n = 32, 24, 5, 400
    g = torch.Generator().manual_seed(seed)
    centres = torch.linalg.qr(torch.randn(d, d, generator=g, dtype=torch.float64))[0][:clusters]
    noise = torch.randn(clusters, 5, d, generator=g, dtype=torch.float64)
    noise /= noise.norm(dim=2, keepdim=True)
    eps = torch.tensor([0.0, 1e-7, 3e-7, 1e-6, 1e-5], dtype=torch.float64)
    members = centres[:, None, :] + eps[None, :, None] * noise
    members /= members.norm(dim=2, keepdim=True)
    atoms64 = members.reshape(-1, d)[torch.randperm(clusters * 5, generator=g)]
    atoms = atoms64.float()
    atoms /= atoms.norm(dim=1, keepdim=True)
    pick = torch.stack([torch.randperm(clusters, generator=g)[:s] for _ in range(n)])
    # |coefficients| 3, 2.4, 1.92, ... (ratio 0.8), random signs: at every step one cluster clearly leads
    mags = 3.0 * 0.8 ** torch.arange(s, dtype=torch.float64)
    signs = torch.randint(0, 2, (n, s), generator=g).double() * 2 - 1
    x = torch.einsum("ns,nsd->nd", mags * signs, centres[pick]).float()
    delta = float(torch.cdist(members, members).amax())
    return atoms, x, delta, s


@pytest.mark.parametrize("path", [*GRAM_PATHS, "textbook", "auto"])
def test_near_duplicates_every_path_is_greedy_up_to_rounding(path: str, monkeypatch: pytest.MonkeyPatch) -> None:
    atoms, x, delta, s = _near_duplicate_dictionary()
    k = 12
    if path in ("textbook", "auto"):
        got = matching_pursuit(x, atoms, k, method=path)
    else:
        got = _run(path, x, atoms, k, monkeypatch)
    _assert_greedy_up_to_rounding(x, atoms, *got)
    ref = textbook_matching_pursuit(x, atoms, k)
    # The reconstruction: while a centre's share is left, every greedy step picks a member of its cluster;
    # taking one member for another moves the residual by at most 2 delta |r| (I - a a^T is a projection),
    # so after s steps both residuals are under 2 s delta |x| (plus rounding), and so is any later one.
    scale = x.norm(dim=1, keepdim=True)
    bound = (2 * (2 * s * delta + mp_tol(atoms.shape[1], k))) * scale
    diff = (reconstruct(*got, atoms) - reconstruct(*ref, atoms)).norm(dim=1, keepdim=True)
    assert (diff <= bound).all(), f"reconstructions {float((diff / scale).max()):.2e} |x| apart"
    if path != "textbook":
        # the regime is exercised: within clusters the choices depend on rounding, and correlations within
        # 1e-7 |x| of each other are ordered differently by different summation orders
        assert (got[0] != ref[0]).any(dim=1).sum() > 0, "no near-tie resolved differently: not the near-tie regime"


def test_greedy_check_catches_a_second_best_choice() -> None:
    # the checker above must fail codes that take the runner-up at one step where the gap is real
    atoms, x = _unit(300, 24), _acts(50, 24)
    idx, coef = textbook_matching_pursuit(x, atoms, 6)
    _assert_greedy_up_to_rounding(x, atoms, idx, coef)
    corr = x @ atoms.T
    second = corr.abs().topk(2, dim=1).indices[:, 1]
    bad_idx, bad_coef = idx.clone(), coef.clone()
    bad_idx[:, 0], bad_coef[:, 0] = second, corr.gather(1, second[:, None])[:, 0]
    with pytest.raises(AssertionError, match="short of the best"):
        _assert_greedy_up_to_rounding(x, atoms, bad_idx, bad_coef)
    scaled = coef.clone()
    scaled[:, 0] *= 1 + 1e-3
    with pytest.raises(AssertionError, match="off its correlation"):
        _assert_greedy_up_to_rounding(x, atoms, idx, scaled)
