"""matching_pursuit and reconstruct: every path equals the textbook loop; edge cases, early stop, errors."""

from __future__ import annotations

import pytest
import torch

from itda_core.mp import (
    backends,
    dispatch,
    gram_matrix,
    gram_matrix_half,
    matching_pursuit,
    orthogonal_matching_pursuit,
    reconstruct,
    textbook_matching_pursuit,
)
from tests.mp.helpers import GRAM_PATHS, acts, assert_same_codes, run_path, unit_atoms
from tests.tolerance import dot_tol, gamma, mp_tol


@pytest.mark.parametrize("path", GRAM_PATHS)
@pytest.mark.parametrize(("n", "m", "d", "k"), [(1, 7, 5, 3), (37, 64, 16, 8), (50, 300, 32, 20),
                                                (20, 5, 8, 12), (9, 3000, 24, 6), (5, 1, 4, 3)])
def test_gram_paths_equal_textbook(path: str, n: int, m: int, d: int, k: int,
                                   monkeypatch: pytest.MonkeyPatch) -> None:
    atoms, x = unit_atoms(m, d), acts(n, d)
    ref = textbook_matching_pursuit(x, atoms, k)
    assert_same_codes(run_path(path, x, atoms, k, monkeypatch), ref, x, atoms)
    assert_same_codes(run_path(path, x, atoms, k, monkeypatch, chunk_size=4), ref, x, atoms)


@pytest.mark.parametrize("method", ["auto", "textbook"])
def test_other_methods_equal_textbook(method: str) -> None:
    atoms, x = unit_atoms(200, 24), acts(70, 24)
    ref = textbook_matching_pursuit(x, atoms, 15)
    assert_same_codes(matching_pursuit(x, atoms, 15, method=method), ref, x, atoms)
    assert_same_codes(matching_pursuit(x, atoms, 15, method=method, chunk_size=8), ref, x, atoms)
    # an explicitly given Gram matrix (also a strided view, as GramCache returns) is used as is
    big = torch.zeros(256, 256)
    big[:200, :200] = gram_matrix(atoms)
    assert_same_codes(matching_pursuit(x, atoms, 15, gram=big[:200, :200]), ref, x, atoms)
    big[30:230, 7:207] = gram_matrix(atoms)  # a view with a storage offset
    assert_same_codes(matching_pursuit(x, atoms, 15, gram=big[30:230, 7:207]), ref, x, atoms)
    column_major = gram_matrix(atoms).T.contiguous().T
    assert_same_codes(matching_pursuit(x, atoms, 15, gram=column_major), ref, x, atoms)


def test_k_greater_than_m_rechooses_atoms() -> None:
    atoms, x = unit_atoms(4, 6), acts(10, 6)
    idx, coef = matching_pursuit(x, atoms, 10)
    assert idx.shape == (10, 10)
    # with 4 atoms and 10 steps every row picks some atom more than once
    assert all(len(set(row.tolist())) < 10 for row in idx)
    assert_same_codes((idx, coef), textbook_matching_pursuit(x, atoms, 10), x, atoms)


@pytest.mark.parametrize("path", GRAM_PATHS)
def test_exact_ties_go_to_lowest_index(path: str, monkeypatch: pytest.MonkeyPatch) -> None:
    # atoms 2 and 5 are the same vector, as are 1 and 3; the basis makes every product exact
    eye = torch.eye(4)
    atoms = torch.stack([eye[0], eye[1], eye[2], eye[1], eye[3], eye[2]])
    x = torch.tensor([[0.0, 0.0, 5.0, 0.0], [0.0, -2.0, 0.0, 0.0], [1.0, 1.0, 1.0, 1.0]])
    idx, coef = run_path(path, x, atoms, 1, monkeypatch)
    assert idx[:, 0].tolist() == [2, 1, 0]
    assert coef[:, 0].tolist() == [5.0, -2.0, 1.0]
    ti, _ = textbook_matching_pursuit(x, atoms, 4)
    gi, _ = run_path(path, x, atoms, 4, monkeypatch)
    assert torch.equal(gi, ti)
    assert gi[2].tolist() == [0, 1, 2, 4]  # equal |corr| everywhere: lowest index each step


@pytest.mark.parametrize("path", GRAM_PATHS)
def test_x_equal_to_an_atom(path: str, monkeypatch: pytest.MonkeyPatch) -> None:
    atoms = unit_atoms(50, 16)
    x = 2.5 * atoms[[17, 3]]
    idx, coef = run_path(path, x, atoms, 3, monkeypatch)
    assert idx[:, 0].tolist() == [17, 3]
    tol = mp_tol(16, 3, scale=2.5)  # |x| = 2.5 |atom|, and |atom| = 1 up to rounding
    assert ((coef[:, 0] - 2.5).abs() <= tol).all()
    assert coef[:, 1:].abs().max() <= 2 * tol  # nothing left after the first step but rounding
    assert (reconstruct(idx, coef, atoms) - x).norm(dim=1).max() <= 4 * tol


@pytest.mark.parametrize("method", ["auto", "gram", "textbook", "half"])
def test_zero_vectors(method: str) -> None:
    atoms = unit_atoms(30, 8)
    x = torch.zeros(3, 8)
    x[1] = acts(1, 8)[0]
    if method == "half":
        if backends._screened_kernel() is None:
            pytest.skip("numba kernel unavailable")
        idx, coef = matching_pursuit(x, atoms, 5, gram=gram_matrix_half(atoms))
    else:
        idx, coef = matching_pursuit(x, atoms, 5, method=method)
    ti, _ = textbook_matching_pursuit(x, atoms, 5)
    assert idx[0].tolist() == [0] * 5 and idx[2].tolist() == [0] * 5
    assert coef[0].abs().sum() == 0 and coef[2].abs().sum() == 0
    assert torch.equal(idx, ti)


def test_single_atom() -> None:
    atoms = unit_atoms(1, 6)
    x = acts(4, 6)
    idx, coef = matching_pursuit(x, atoms, 3)
    assert idx.tolist() == [[0, 0, 0]] * 4
    scale = x.norm(dim=1)
    assert ((coef[:, 0] - x @ atoms[0]).abs() <= 2 * dot_tol(6) * scale).all()  # two roundings of one dot product
    assert (coef[:, 1:].abs() <= 2 * mp_tol(6, 3) * scale[:, None]).all()  # the residual is orthogonal after one step


def test_negative_coefficients_and_reconstruct_sums_repeats() -> None:
    atoms, x = unit_atoms(40, 12), acts(30, 12)
    _idx, coef = matching_pursuit(x, atoms, 10)
    assert (coef < 0).any() and (coef > 0).any()
    # reconstruct adds repeated indices: same atom twice == once with the summed coefficient
    idx = torch.tensor([[3, 3, 1], [0, 2, 0]])
    c = torch.tensor([[1.5, -0.5, 2.0], [1.0, 1.0, 0.25]])
    expected = torch.stack([1.0 * atoms[3] + 2.0 * atoms[1], 1.25 * atoms[0] + atoms[2]])
    torch.testing.assert_close(reconstruct(idx, c, atoms), expected)
    assert reconstruct(idx[:, :0], c[:, :0], atoms).abs().sum() == 0


def test_residual_norm_non_increasing() -> None:
    atoms, x = unit_atoms(100, 20), acts(25, 20)
    idx, coef = matching_pursuit(x, atoms, 30)
    prev = x.norm(dim=1)
    for s in range(30):
        cur = (x - reconstruct(idx[:, : s + 1], coef[:, : s + 1], atoms)).norm(dim=1)
        # each residual norm is recomputed here from s + 1 float32 steps: within MP's bound of the exact one
        assert (cur <= prev + 2 * mp_tol(20, s + 1) * x.norm(dim=1)).all()
        prev = cur


@pytest.mark.parametrize("path", [*GRAM_PATHS, "textbook"])
def test_stop_residual_truncates_the_same_codes(path: str, monkeypatch: pytest.MonkeyPatch) -> None:
    atoms, x = unit_atoms(400, 24), acts(60, 24)
    x[5] = atoms[7] * 2.0  # residual 0 after one step
    x[10] = 0.0
    k = 25
    frac = torch.full((60,), 0.1)
    frac[::3] = -1.0  # these rows never stop
    if path == "textbook":
        full = matching_pursuit(x, atoms, k, method="textbook")
        got = matching_pursuit(x, atoms, k, method="textbook", stop_residual=frac)
    else:
        full = run_path(path, x, atoms, k, monkeypatch)
        if path in ("numba", "half"):  # the numba kernels skip the steps themselves: nothing to cut afterwards
            monkeypatch.setattr(dispatch, "_apply_stop", lambda *a: pytest.fail("cut afterwards, not skipped"))
        got = run_path(path, x, atoms, k, monkeypatch, stop_residual=frac)
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
    atoms = unit_atoms(10, 4)
    idx, coef = matching_pursuit(torch.zeros(0, 4), atoms, 3)
    assert idx.shape == (0, 3) and coef.shape == (0, 3) and idx.dtype == torch.int64
    x = acts(6, 4)
    i16, c16 = matching_pursuit(x.half(), atoms, 3)
    assert c16.dtype == torch.float16 and i16.shape == (6, 3)
    i64, c64 = matching_pursuit(x.double(), atoms.double(), 3)
    assert c64.dtype == torch.float64
    ti, _ = textbook_matching_pursuit(x.double(), atoms.double(), 3)
    assert torch.equal(i64, ti)


def test_errors() -> None:
    atoms, x = unit_atoms(10, 4), acts(3, 4)
    with pytest.raises(ValueError, match="empty"):
        matching_pursuit(x, torch.zeros(0, 4), 3)
    with pytest.raises(ValueError, match="k"):
        matching_pursuit(x, atoms, 0)
    with pytest.raises(ValueError, match="width"):
        matching_pursuit(x, unit_atoms(10, 5), 3)
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
