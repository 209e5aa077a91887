"""Activation-similarity baselines: hand-checked values, invariances, symmetry, matrices, collection."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from tiny import tiny_corpus, tiny_model

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


def rand(n: int, d: int, seed: int = 0) -> torch.Tensor:
    return torch.randn(n, d, generator=torch.Generator().manual_seed(seed))


def orthogonal(d: int, seed: int = 0) -> torch.Tensor:
    q, _ = torch.linalg.qr(rand(d, d, seed).double())
    return q.float()


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
    assert linear_cka(X1, Y1) == pytest.approx(R2_1D)
    x, y = rand(60, 5, 1), rand(60, 7, 2)
    y[:, :3] += 2 * x[:, :3]
    assert linear_cka(x, y) == pytest.approx(numpy_cka(x.double().numpy(), y.double().numpy()), rel=1e-9)


def test_cka_invariances_and_symmetry():
    x = rand(500, 16)
    y = x @ orthogonal(16, 3) * 7.5 + 3.0  # orthogonal transform, isotropic scaling, shift
    assert linear_cka(x, x) == pytest.approx(1.0)
    assert linear_cka(x, y) == pytest.approx(1.0, abs=1e-6)
    z = x[:, :8] + 0.5 * rand(500, 8, 9)
    assert linear_cka(x, z) == pytest.approx(linear_cka(z, x))
    # not invariant to anisotropic scaling
    assert linear_cka(x, x * torch.linspace(0.1, 10, 16)) < 0.9


def test_cka_feature_normalised():
    x = rand(400, 12)
    scaled = x * torch.linspace(0.1, 10, 12) + 5  # per-feature scaling: invisible after normalisation
    assert linear_cka_feature_normalised(x, scaled) == pytest.approx(1.0, abs=1e-6)
    assert linear_cka(x, scaled) < 0.9
    # equals plain CKA on data whose centred columns are already unit-norm
    xc = x - x.mean(0)
    xn = xc / xc.norm(dim=0)
    yn = rand(400, 6, 5)
    yn = (yn - yn.mean(0)) / (yn - yn.mean(0)).norm(dim=0)
    assert linear_cka_feature_normalised(x, yn) == pytest.approx(linear_cka(xn, yn), rel=1e-6)
    # reference: the authors' formula in numpy
    xa, ya = x.double().numpy(), (x[:, :4] ** 2).double().numpy()
    xa = (xa - xa.mean(0)) / np.linalg.norm(xa - xa.mean(0), axis=0)
    ya = (ya - ya.mean(0)) / np.linalg.norm(ya - ya.mean(0), axis=0)
    ref = np.linalg.norm(xa.T @ ya) ** 2 / (np.linalg.norm(xa.T @ xa) * np.linalg.norm(ya.T @ ya))
    assert linear_cka_feature_normalised(x, x[:, :4] ** 2) == pytest.approx(ref, rel=1e-9)


# ---- SVCCA ------------------------------------------------------------------------------------------------
def test_svcca_hand_checked():
    assert svcca(X1, Y1) == pytest.approx(np.sqrt(R2_1D))  # one direction: |Pearson r|


def test_svcca_identity_invertible_maps_symmetry():
    x = rand(600, 8)
    a = rand(8, 8, 4) + 3 * torch.eye(8)  # invertible; with d <= n_directions every direction is kept
    assert svcca(x, x) == pytest.approx(1.0)
    assert svcca(x, x @ a + 1.0) == pytest.approx(1.0, abs=1e-6)
    wide = rand(800, 40) * torch.linspace(3, 0.1, 40)  # > 20 dims: top directions map under rotation+scale
    assert svcca(wide, wide @ orthogonal(40, 6) * 0.3) == pytest.approx(1.0, abs=1e-6)
    y = x[:, :5] @ rand(5, 6, 8) + 0.3 * rand(600, 6, 9)
    assert svcca(x, y) == pytest.approx(svcca(y, x), rel=1e-9)


def test_svcca_mean_of_canonical_correlations():
    # two reduced spaces of one dimension each, correlated by construction: CCA = |corr|
    t = rand(1000, 1, 3)
    noise = rand(1000, 1, 4)
    x, y = t, t + noise
    r = np.corrcoef(x[:, 0].numpy(), y[:, 0].numpy())[0, 1]
    assert svcca(x, y) == pytest.approx(abs(r), rel=1e-6)


# ---- relative representations -----------------------------------------------------------------------------
def test_relative_identity_and_invariances():
    x = rand(500, 16)
    assert relative_similarity(x, x) == pytest.approx(1.0)
    assert relative_similarity(x, x @ orthogonal(16, 2) * 4.0) == pytest.approx(1.0, abs=1e-6)


def test_relative_reference():
    x, y = rand(50, 6, 1), rand(50, 3, 2)
    anchors = bl.anchor_indices(50, 10, seed=3).numpy()

    def rel(m: np.ndarray) -> np.ndarray:
        m = m / np.linalg.norm(m, axis=1, keepdims=True)
        r = m @ m[anchors].T
        return r / np.linalg.norm(r, axis=1, keepdims=True)

    ref = float(np.mean(np.sum(rel(x.double().numpy()) * rel(y.double().numpy()), axis=1)))
    assert relative_similarity(x, y, n_anchors=10, seed=3) == pytest.approx(ref, rel=1e-5)
    assert relative_similarity(x, y, n_anchors=10, seed=3) == relative_similarity(x, y, n_anchors=10, seed=3)


# ---- linear regression ------------------------------------------------------------------------------------
def test_r2_hand_checked_affine_and_asymmetric():
    assert linear_regression_r2(X1, Y1) == pytest.approx(R2_1D)
    x = rand(300, 6)
    y = x @ rand(6, 4, 1) + torch.tensor([1.0, -2.0, 3.0, 0.5])
    assert linear_regression_r2(x, y) == pytest.approx(1.0, abs=1e-6)
    # y has 2 of x's 6 dimensions: y from x is perfect, x from y is not
    assert linear_regression_r2(x, x[:, :2]) == pytest.approx(1.0, abs=1e-6)
    assert linear_regression_r2(x[:, :2], x) < 0.5


def test_r2_reference_lstsq():
    x, y = rand(200, 5, 3), rand(200, 3, 4)
    y = y + x[:, :3]
    xa = np.hstack([x.double().numpy(), np.ones((200, 1))])
    ya = y.double().numpy()
    w, *_ = np.linalg.lstsq(xa, ya, rcond=None)
    ref = 1 - ((ya - xa @ w) ** 2).sum() / ((ya - ya.mean(0)) ** 2).sum()
    assert linear_regression_r2(x, y) == pytest.approx(ref, rel=1e-9)
    # collinear predictors (rank-deficient) are fine
    xx = torch.cat([x, x[:, :1] * 2], dim=1)
    assert linear_regression_r2(xx, y) == pytest.approx(ref, rel=1e-6)


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
    assert np.allclose(np.diag(m.to_numpy()), 1.0) and np.allclose(m.to_numpy(), m.to_numpy().T)
    assert m.loc[0, 1] == pytest.approx(1.0, abs=1e-6) and m.loc[0, 2] < 0.3
    assert m.loc[0, 2] == pytest.approx(linear_cka(acts[0], acts[2]))
    r2 = baseline_matrix(acts, {5: base[:, :3]}, measure="linear_regression_r2")
    assert r2.shape == (3, 1) and r2.loc[0, 5] == pytest.approx(1.0, abs=1e-6)
    for measure, fn in [("svcca", svcca), ("relative", relative_similarity),
                        ("cka_normalised", linear_cka_feature_normalised)]:
        mm = baseline_matrix(acts, measure=measure)
        assert mm.loc[1, 2] == pytest.approx(fn(acts[1], acts[2]), rel=1e-6)


def test_collect_activations_matches_extract():
    model, corpus = tiny_model("gpt2"), tiny_corpus()
    acts = collect_activations(model, corpus, [0, 2], n_tokens=50, batch_size=3)
    assert sorted(acts) == [0, 2] and acts[0].shape == (50, model.d_model) and acts[2].dtype == torch.float32
    ref = torch.cat([b.acts[2] for b in extract(model, corpus, [2], max_tokens=50, progress=False)])
    torch.testing.assert_close(acts[2], ref)
    everything = collect_activations(model, corpus, [1], n_tokens=10**6)
    assert everything[1].shape[0] < 10**6  # trimmed to what the corpus has


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_on_cuda():
    x = rand(2000, 64).cuda()
    y = (x @ orthogonal(64).cuda()) * 2
    assert linear_cka(x, y) == pytest.approx(1.0, abs=1e-6)
    assert svcca(x, y) == pytest.approx(1.0, abs=1e-6)
    assert relative_similarity(x, y) == pytest.approx(1.0, abs=1e-5)
    assert linear_regression_r2(x, y) == pytest.approx(1.0, abs=1e-6)
    assert linear_cka(x, rand(2000, 64, 1).cuda()) == pytest.approx(linear_cka(x.cpu(), rand(2000, 64, 1)))


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
    for n in names:
        assert shared[n] == pytest.approx(alone[n], rel=1e-9, abs=1e-12), n
    assert alone["r2"][0] != pytest.approx(alone["r2"][1])  # R^2 is asymmetric: the transpose was used right
