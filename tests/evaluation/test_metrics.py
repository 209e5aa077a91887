"""Evaluation's metrics: the CE loss score formula and the reconstruction statistics."""

from __future__ import annotations

import math

import pytest
import torch

from itda_core.evaluation import ReconstructionStats, ce_loss_score
from tests.evaluation.helpers import F64, variance_ratio
from tests.tolerance import cosine_tol, gamma, mean_tol, unit_roundoff


# ---- the score -----------------------------------------------------------------------------------------
def test_ce_loss_score_formula() -> None:
    assert ce_loss_score(2.0, 2.0, 5.0) == 1.0
    assert ce_loss_score(2.0, 5.0, 5.0) == 0.0
    assert ce_loss_score(2.0, 3.5, 5.0) == 0.5  # exact binary operands: (-1.5) / (-3.0) is exact
    assert ce_loss_score(2.0, 3.0, 2.0) is None  # undefined when zero-ablation changes nothing
    assert ce_loss_score(None, 1.0, 2.0) is None


def test_reconstruction_metrics() -> None:
    torch.manual_seed(0)
    x = torch.randn(50, 8) + 3.0
    perfect = ReconstructionStats(n_atoms=4)
    perfect.update(x[:20], x[:20], torch.tensor([[0, 0, 1]] * 20))
    perfect.update(x[20:], x[20:], torch.tensor([[1, 1, 1]] * 30))
    out = perfect.result()
    n, d = x.shape
    # float64 cosines of 8-wide vectors with themselves, averaged over n tokens
    assert out["fvu"] == 0 and out["mse"] == 0
    assert out["cosine"] == pytest.approx(1.0, abs=cosine_tol(d, F64) + mean_tol(n, F64))
    # a sum of exact counts over n: one rounded division, the same as the literal's
    assert out["l0"] == 3 and out["l0_distinct"] == (20 * 2 + 30 * 1) / 50
    assert out["atoms_used"] == 2 and out["dead_fraction"] == 0.5
    # FVU = sum |x - x_hat|^2 / (sum |x|^2 - |sum x|^2 / n) in float64: the two n d-term sums are off by
    # gamma_{nd} relative, the denominator's difference by gamma_{nd+2} sum |x|^2 = gamma_{nd+2} rho of itself
    rho = variance_ratio(x)
    sums = gamma(n * d + 1, F64) + 2 * gamma(n * d + 2, F64) * rho
    mean_only = ReconstructionStats(n_atoms=1)
    mean_only.update(x, x.mean(dim=0).expand_as(x))
    # predicting the mean explains nothing; x's float32 mean is off by mean_tol, which adds
    # n |mean error|^2 / sum |x - mean|^2 to the FVU
    err = mean_tol(n, scale=float(x.abs().max()))
    total_var = float((x.double() - x.double().mean(0)).pow(2).sum())
    assert mean_only.result()["fvu"] == pytest.approx(1.0, abs=sums + n * d * err**2 / total_var)
    half = ReconstructionStats(n_atoms=1)
    half.update(x, x * 0.5)
    # the reference in float64 (x - x / 2 is exact): its centring and sums add the same kind of error
    x64 = x.double()
    expected = float((x64 * 0.5).pow(2).sum() / (x64 - x64.mean(0)).pow(2).sum())
    centring = 2 * (unit_roundoff(F64) + gamma(n + 1, F64) * math.sqrt(rho))
    assert half.result()["fvu"] == pytest.approx(expected, rel=2 * sums + centring)
