"""Activation-similarity baselines: hand-checked values, invariances, symmetry, matrices, collection."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from itda_core.errors import ITDAError
from itda_core.extraction import extract
from itda_core.similarity import (
    baseline_matrix,
    collect_activations,
    linear_cka,
    linear_cka_feature_normalised,
    linear_regression_r2,
    relative_similarity,
    svcca,
)
from itda_core.similarity import baselines as bl
from tests.tiny import tiny_corpus, tiny_model
from tests.tolerance import at_maximum_tol, cosine_tol, forward_tol, gamma, similarity_tol, unit_roundoff


def rand(n: int, d: int, seed: int = 0) -> torch.Tensor:
    return torch.randn(n, d, generator=torch.Generator().manual_seed(seed))


def orthogonal(d: int, seed: int = 0) -> torch.Tensor:
    q, _ = torch.linalg.qr(rand(d, d, seed).double())
    return q.float()


# ---- tolerances: the measures run in float64 on float32 data (tolerance.similarity_tol) -----------------
F64 = torch.float64
F32 = torch.float32


def _eigenvalues(x: torch.Tensor) -> torch.Tensor:
    """Eigenvalues of x's centred covariance, largest first (float64, on the CPU)."""
    c = x.detach().cpu().double()
    c = c - c.mean(0)
    return torch.linalg.eigvalsh(c.T @ c).flip(0)


def cond(x: torch.Tensor, k: int | None = None) -> float:
    """Condition number of x's centred covariance over its top k directions (all when None): what a
    pseudo-inverse or a whitening of it amplifies."""
    ev = _eigenvalues(x)[: k or x.shape[1]]
    return float(ev[0] / ev[-1])


def subspace_cond(x: torch.Tensor, k: int) -> float:
    """(lambda_1 / gap)^2 of x's top-k principal subspace (gap = lambda_k - lambda_k+1; plain cond when k
    covers every direction): by Davis-Kahan a perturbation tilts that subspace by at most
    2 delta sqrt(d) lambda_1 / gap, the angle tolerance.at_maximum_tol takes as 2 sqrt(d cond) delta."""
    ev = _eigenvalues(x)
    if k >= len(ev):
        return float(ev[0] / ev[-1])
    return float(ev[0] / (ev[k - 1] - ev[k])) ** 2


def offset(*xs: torch.Tensor) -> float:
    """The largest |column mean| / column std of the data: how much the centring cancels."""
    return max(float((x.detach().cpu().double().mean(0).abs() / x.detach().cpu().double().std(0)).max())
               for x in xs)


def tol(*xs: torch.Tensor, cond: float = 1.0, input_error: float = 0.0) -> float:
    """similarity_tol of one float64 measure of these n x d matrices (d: the widest)."""
    return similarity_tol(xs[0].shape[0], max(x.shape[1] for x in xs), F64, cond=cond, offset=offset(*xs),
                          input_error=input_error)


def built_error(terms: int, offset: float = 0.0, q: int = 0) -> float:
    """Relative error of test data y = x @ a * s + c built in float32: a ``terms``-term product, the scaling
    and the shift (the shift's rounding ``offset`` times y's spread), and, for a float32 orthogonal matrix of
    width ``q``, its own distance from orthogonality (u sqrt(q) in norm)."""
    return gamma(terms + 2, F32) * (1 + offset) + unit_roundoff(F32) * math.sqrt(q)


def relative_tol(x: torch.Tensor, n_anchors: int = 300, seed: int = 0, delta: float = 0.0) -> float:
    """relative_similarity stores its unit relative vectors in float32: the dot product of two of them is off
    by 2 u (1 + u) (their rounded norms), besides the float64 cosines to the anchors and renormalisation and
    the mean of n * n_anchors products. A relative error ``delta`` of one input moves each cosine to an anchor
    by at most 2 delta, so the relative vector (its norm at least ``low``) by 4 delta sqrt(a) / low, which the
    final cosines feel only to second order (tolerance.at_maximum_tol of that, with d = 1)."""
    n, d = x.shape
    a = min(n_anchors, n)
    u = unit_roundoff(F32)
    xs = torch.nn.functional.normalize(x.detach().cpu().double(), dim=1)
    rel = xs @ xs[bl.anchor_indices(n, n_anchors, seed)].T
    low = float(rel.norm(dim=1).min())
    first = 2 * u * (1 + u) + cosine_tol(d, F64) + 2 * gamma(a + 2, F64) + gamma(n * a + 1, F64)
    return first + at_maximum_tol(1, 4 * delta * math.sqrt(a) / low)


# Hand-checked 1-D example: x = [1, 2, 3], y = [1, 4, 9]. Centred: xc = [-1, 0, 1], yc = [-11, -2, 13] / 3;
# xc.yc = 8, |xc|^2 = 2, |yc|^2 = 294 / 9, so Pearson r^2 = 64 / (2 * 294 / 9) = 576 / 588.
X1 = torch.tensor([[1.0], [2.0], [3.0]])
Y1 = torch.tensor([[1.0], [4.0], [9.0]])
R2_1D = 576 / 588


def numpy_cka(x: np.ndarray, y: np.ndarray) -> float:
    """Reference: HSIC form tr(K H L H) / sqrt(tr(K H K H) tr(L H L H)) with linear kernels."""
    n = x.shape[0]
    h = np.eye(n) - 1.0 / n
    k, l_ = x @ x.T, y @ y.T
    kh, lh = k @ h, l_ @ h
    return float(np.trace(kh @ lh) / np.sqrt(np.trace(kh @ kh) * np.trace(lh @ lh)))


# ---- linear CKA -------------------------------------------------------------------------------------------
def test_cka_hand_checked_and_reference():
    assert linear_cka(X1, Y1) == pytest.approx(R2_1D, abs=tol(X1, Y1))
    x, y = rand(60, 5, 1), rand(60, 7, 2)
    y[:, :3] += 2 * x[:, :3]
    # the numpy reference centres through n x n float64 products: its sums chain d + 3 n terms
    ref_tol = similarity_tol(3 * 60 + 7, 7, F64, offset=offset(x, y))
    assert linear_cka(x, y) == pytest.approx(numpy_cka(x.double().numpy(), y.double().numpy()),
                                             abs=tol(x, y) + ref_tol)


def test_cka_invariances_and_symmetry():
    x = rand(500, 16)
    y = x @ orthogonal(16, 3) * 7.5 + 3.0  # orthogonal transform, isotropic scaling, shift
    assert linear_cka(x, x) == pytest.approx(1.0, abs=tol(x))
    # y is x's image only up to its float32 rounding; CKA is at its maximum there, so that costs delta^2
    assert linear_cka(x, y) == pytest.approx(1.0, abs=tol(x, y) + at_maximum_tol(16, built_error(16, offset(y), 16)))
    z = x[:, :8] + 0.5 * rand(500, 8, 9)
    assert linear_cka(x, z) == pytest.approx(linear_cka(z, x), abs=2 * tol(x, z))  # X^T Z vs Z^T X
    # not invariant to anisotropic scaling
    assert linear_cka(x, x * torch.linspace(0.1, 10, 16)) < 0.9


def test_cka_feature_normalised():
    x = rand(400, 12)
    scaled = x * torch.linspace(0.1, 10, 12) + 5  # per-feature scaling: invisible after normalisation
    # the per-column scales vanish in the normalisation; only the rounding of the product and the shift stays
    assert linear_cka_feature_normalised(x, scaled) == pytest.approx(
        1.0, abs=tol(x, scaled) + at_maximum_tol(12, built_error(0, offset(scaled))))
    assert linear_cka(x, scaled) < 0.9
    # equals plain CKA on data whose centred columns are already unit-norm (normalised in float64, so they
    # are unit-norm to gamma_{n+2} in float64: plain CKA would see float32 column norms' errors at first order)
    xc = x.double() - x.double().mean(0)
    xn = xc / xc.norm(dim=0)
    yn = rand(400, 6, 5).double()
    yn = (yn - yn.mean(0)) / (yn - yn.mean(0)).norm(dim=0)
    assert linear_cka_feature_normalised(x, yn) == pytest.approx(
        linear_cka(xn, yn), abs=2 * tol(x, yn, input_error=gamma(400 + 2, F64)))
    # reference: the authors' formula in numpy
    xa, ya = x.double().numpy(), (x[:, :4] ** 2).double().numpy()
    xa = (xa - xa.mean(0)) / np.linalg.norm(xa - xa.mean(0), axis=0)
    ya = (ya - ya.mean(0)) / np.linalg.norm(ya - ya.mean(0), axis=0)
    ref = np.linalg.norm(xa.T @ ya) ** 2 / (np.linalg.norm(xa.T @ xa) * np.linalg.norm(ya.T @ ya))
    # ours and the numpy reference: two float64 computations of the same products
    assert linear_cka_feature_normalised(x, x[:, :4] ** 2) == pytest.approx(ref, abs=2 * tol(x, x[:, :4] ** 2))


# ---- SVCCA ------------------------------------------------------------------------------------------------
def test_svcca_hand_checked():
    assert svcca(X1, Y1) == pytest.approx(np.sqrt(R2_1D), abs=tol(X1, Y1))  # one direction: |Pearson r|


def test_svcca_identity_invertible_maps_symmetry():
    x = rand(600, 8)
    a = rand(8, 8, 4) + 3 * torch.eye(8)  # invertible; with d <= n_directions every direction is kept
    assert svcca(x, x) == pytest.approx(1.0, abs=tol(x, cond=cond(x)))
    xa = x @ a + 1.0  # whitening amplifies by the covariances' condition numbers; xa's rounding costs delta^2
    assert svcca(x, xa) == pytest.approx(1.0, abs=tol(x, xa, cond=max(cond(x), cond(xa))) + at_maximum_tol(
        8, built_error(8, offset(xa)), cond=subspace_cond(xa, 8)))
    wide = rand(800, 40) * torch.linspace(3, 0.1, 40)  # > 20 dims: top directions map under rotation+scale
    rotated = wide @ orthogonal(40, 6) * 0.3  # its top-20 subspace, tilted by its rounding, sets the delta^2 term
    assert svcca(wide, rotated) == pytest.approx(1.0, abs=tol(wide, rotated, cond=max(cond(wide, 20), cond(
        rotated, 20))) + at_maximum_tol(40, built_error(40, offset(rotated), 40), cond=subspace_cond(rotated, 20)))
    y = x[:, :5] @ rand(5, 6, 8) + 0.3 * rand(600, 6, 9)
    assert svcca(x, y) == pytest.approx(svcca(y, x), abs=2 * tol(x, y, cond=max(cond(x), cond(y))))


def test_svcca_mean_of_canonical_correlations():
    # two reduced spaces of one dimension each, correlated by construction: CCA = |corr|
    t = rand(1000, 1, 3)
    noise = rand(1000, 1, 4)
    x, y = t, t + noise
    r = np.corrcoef(x[:, 0].numpy(), y[:, 0].numpy())[0, 1]
    assert svcca(x, y) == pytest.approx(abs(r), abs=2 * tol(x, y))  # ours and np.corrcoef, both float64


# ---- relative representations -----------------------------------------------------------------------------
def test_relative_identity_and_invariances():
    x = rand(500, 16)
    assert relative_similarity(x, x) == pytest.approx(1.0, abs=relative_tol(x))
    assert relative_similarity(x, x @ orthogonal(16, 2) * 4.0) == pytest.approx(
        1.0, abs=relative_tol(x, delta=built_error(16, 0.0, 16)))


def test_relative_reference():
    x, y = rand(50, 6, 1), rand(50, 3, 2)
    anchors = bl.anchor_indices(50, 10, seed=3).numpy()

    def rel(m: np.ndarray) -> np.ndarray:
        m = m / np.linalg.norm(m, axis=1, keepdims=True)
        r = m @ m[anchors].T
        return r / np.linalg.norm(r, axis=1, keepdims=True)

    ref = float(np.mean(np.sum(rel(x.double().numpy()) * rel(y.double().numpy()), axis=1)))
    # the float32 relative vectors against numpy's float64 ones (whose own error is within relative_tol's
    # float64 terms)
    assert relative_similarity(x, y, n_anchors=10, seed=3) == pytest.approx(
        ref, abs=relative_tol(x, 10, 3) + relative_tol(y, 10, 3))
    assert relative_similarity(x, y, n_anchors=10, seed=3) == relative_similarity(x, y, n_anchors=10, seed=3)


# ---- linear regression ------------------------------------------------------------------------------------
def test_r2_hand_checked_affine_and_asymmetric():
    assert linear_regression_r2(X1, Y1) == pytest.approx(R2_1D, abs=tol(X1, Y1))
    x = rand(300, 6)
    y = x @ rand(6, 4, 1) + torch.tensor([1.0, -2.0, 3.0, 0.5])
    # the pseudo-inverse amplifies by cond(x); y's float32 rounding leaves a residual of delta^2 (R^2 max 1)
    assert linear_regression_r2(x, y) == pytest.approx(
        1.0, abs=tol(x, y, cond=cond(x)) + at_maximum_tol(6, built_error(6, offset(y))))
    # y has 2 of x's 6 dimensions: y from x is perfect, x from y is not
    assert linear_regression_r2(x, x[:, :2]) == pytest.approx(1.0, abs=tol(x, cond=cond(x)))
    assert linear_regression_r2(x[:, :2], x) < 0.5


def test_r2_reference_lstsq():
    x, y = rand(200, 5, 3), rand(200, 3, 4)
    y = y + x[:, :3]
    xa = np.hstack([x.double().numpy(), np.ones((200, 1))])
    ya = y.double().numpy()
    w, *_ = np.linalg.lstsq(xa, ya, rcond=None)
    ref = 1 - ((ya - xa @ w) ** 2).sum() / ((ya - ya.mean(0)) ** 2).sum()
    # ours and numpy's lstsq: two float64 least-squares fits amplifying by the same cond(x)
    assert linear_regression_r2(x, y) == pytest.approx(ref, abs=2 * tol(x, y, cond=cond(x)))
    # collinear predictors (rank-deficient) are fine: the pseudo-inverse keeps x's 5 directions
    xx = torch.cat([x, x[:, :1] * 2], dim=1)
    assert linear_regression_r2(xx, y) == pytest.approx(ref, abs=2 * tol(xx, y, cond=cond(xx, 5)))


# ---- random inputs ----------------------------------------------------------------------------------------
def test_independent_inputs_score_low():
    x, y = rand(4000, 32, 10), rand(4000, 32, 11)
    assert linear_cka(x, y) < 0.05
    assert linear_cka_feature_normalised(x, y) < 0.05
    assert svcca(x, y) < 0.15
    assert abs(relative_similarity(x, y)) < 0.1
    assert linear_regression_r2(x, y) < 0.05


def test_input_checks():
    with pytest.raises(ITDAError, match="same tokens"):
        linear_cka(rand(10, 3), rand(11, 3))
    with pytest.raises(ITDAError, match="unknown similarity measure"):
        baseline_matrix({0: rand(10, 3)}, measure="nope")


# ---- matrices ---------------------------------------------------------------------------------------------
def test_baseline_matrix():
    base = rand(300, 8)
    acts = {0: base, 1: base @ orthogonal(8, 1), 2: rand(300, 8, 7)}
    m = baseline_matrix(acts, measure="cka")
    assert list(m.index) == [0, 1, 2] and list(m.columns) == [0, 1, 2]
    assert np.abs(np.diag(m.to_numpy()) - 1.0).max() <= tol(*acts.values())
    assert np.array_equal(m.to_numpy(), m.to_numpy().T)  # the lower triangle is a copy of the upper one
    assert m.loc[0, 1] == pytest.approx(1.0, abs=tol(base, acts[1]) + at_maximum_tol(8, built_error(8, q=8)))
    assert m.loc[0, 2] < 0.3
    # a cell is the very computation linear_cka runs (prepare both, then pair): bit for bit the same
    assert m.loc[0, 2] == linear_cka(acts[0], acts[2])
    r2 = baseline_matrix(acts, {5: base[:, :3]}, measure="linear_regression_r2")
    assert r2.shape == (3, 1) and r2.loc[0, 5] == pytest.approx(1.0, abs=tol(base, cond=cond(base)))
    for measure, fn in [("svcca", svcca), ("relative", relative_similarity),
                        ("cka_normalised", linear_cka_feature_normalised)]:
        mm = baseline_matrix(acts, measure=measure)
        assert mm.loc[1, 2] == fn(acts[1], acts[2]), measure  # the same prepare-then-pair computation


def test_collect_activations_matches_extract():
    model, corpus = tiny_model("gpt2"), tiny_corpus()
    acts = collect_activations(model, corpus, [0, 2], n_tokens=50, batch_size=3)
    assert sorted(acts) == [0, 2] and acts[0].shape == (50, model.d_model) and acts[2].dtype == torch.float32
    ref = torch.cat([b.acts[2] for b in extract(model, corpus, [2], max_tokens=50, progress=False)])
    # other batches, other padding: two float32 forwards through 3 blocks (tolerance.forward_tol), per token
    d_ff = model.model.config.n_inner or 4 * model.d_model
    seq = max(len(model.tokenizer(doc.text)["input_ids"]) for doc in corpus.documents)
    scale = ref.norm(dim=-1, keepdim=True)
    torch.testing.assert_close(acts[2] / scale, ref / scale, rtol=0, atol=2 * forward_tol(3, model.d_model, d_ff, seq))
    everything = collect_activations(model, corpus, [1], n_tokens=10**6)
    assert everything[1].shape[0] < 10**6  # trimmed to what the corpus has


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_on_cuda():
    x = rand(2000, 64).cuda()
    y = (x @ orthogonal(64).cuda()) * 2
    delta = built_error(64, 0.0, 64)  # y's float32 rounding: second order in every measure at its maximum
    assert linear_cka(x, y) == pytest.approx(1.0, abs=tol(x, y) + at_maximum_tol(64, delta))
    assert svcca(x, y) == pytest.approx(1.0, abs=tol(x, y, cond=max(cond(x, 20), cond(y, 20))) + at_maximum_tol(
        64, delta, cond=subspace_cond(y, 20)))
    assert relative_similarity(x, y) == pytest.approx(1.0, abs=relative_tol(x, delta=delta))
    assert linear_regression_r2(x, y) == pytest.approx(1.0, abs=tol(x, y, cond=cond(x)) + at_maximum_tol(64, delta))
    z = rand(2000, 64, 1)
    assert linear_cka(x, z.cuda()) == pytest.approx(linear_cka(x.cpu(), z), abs=2 * tol(x, z))  # two devices


def test_shared_cross_products_give_the_same_values():
    """Inside shared_cross_products one centred cross product serves CKA, feature-normalised CKA and R^2 both
    ways; every value equals the one computed on its own."""
    from itda_core.similarity.baselines import MEASURES, shared_cross_products

    gen = torch.Generator().manual_seed(7)
    x = torch.randn(300, 12, generator=gen) * torch.linspace(0.5, 3, 12) + 1.5
    y = x @ torch.randn(12, 9, generator=gen) + 0.3 * torch.randn(300, 9, generator=gen)
    names = ["cka", "cka_normalised", "r2"]
    prepared = {n: (MEASURES[n].prepare(x), MEASURES[n].prepare(y)) for n in names}
    alone = {n: (MEASURES[n].pair(a, b), MEASURES[n].pair(b, a)) for n, (a, b) in prepared.items()}
    with shared_cross_products():
        shared = {n: (MEASURES[n].pair(a, b), MEASURES[n].pair(b, a)) for n, (a, b) in prepared.items()}
    # the shared cross product is the same float64 product, transposed or column-scaled afterwards: each
    # value is two computations of one measure apart (R^2's pseudo-inverses amplify by the conditions)
    pair_tol = 2 * tol(x, y, cond=max(cond(x), cond(y)))
    for n in names:
        assert shared[n] == pytest.approx(alone[n], abs=pair_tol), n
    # R^2 is asymmetric: the transpose was used right
    assert alone["r2"][0] != pytest.approx(alone["r2"][1], abs=pair_tol)
