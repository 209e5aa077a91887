"""The quality accumulator: shards merged in any grouping give the whole's figures, which are metrics.py's."""

from __future__ import annotations

import itertools
import json

import numpy as np
import pytest
import torch

from itda_core.evaluation.accumulate import QualityAccumulator, counted_tokens
from itda_core.evaluation.metrics import ReconstructionStats
from tests.evaluation.helpers import F64, variance_ratio
from tests.tolerance import cosine_tol, gamma, mean_tol


def _data(n: int = 300, d: int = 12, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Activations with an offset (so FVU's centring matters) and an imperfect reconstruction of them."""
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(n, d, generator=gen) + 2.0
    x_hat = 0.7 * x + 0.3 * torch.randn(n, d, generator=gen)
    return x, x_hat


def _tols(x: torch.Tensor) -> dict[str, float]:
    """How far two float64 summations of the same n d-term sums may be apart, per figure: FVU's numerator and
    denominator are off by gamma_{nd+2} times rho (the denominator's cancellation), the cosine mean by the
    n-term sum of float64 cosines."""
    n, d = x.shape
    sums = 2 * gamma(n * d + 2, F64) * (1 + variance_ratio(x))
    return {"fvu": 2 * sums, "mse": 2 * gamma(n * d + 1, F64), "cosine": cosine_tol(d, F64) + mean_tol(n, F64)}


def test_merged_shards_equal_the_whole() -> None:
    x, x_hat = _data()
    whole = QualityAccumulator().add(x, x_hat).result()
    cuts = [0, 7, 100, 101, 250, 300]  # uneven shards, one of a single row
    shards = [QualityAccumulator().add(x[a:b], x_hat[a:b]) for a, b in itertools.pairwise(cuts)]
    forward = QualityAccumulator()
    for s in shards:
        forward.merge(s)
    backward = QualityAccumulator()
    for s in reversed(shards):
        backward.merge(QualityAccumulator.from_dict(json.loads(json.dumps(s.to_dict()))))  # as Ray would send it
    tol = _tols(x)
    assert forward.tokens == backward.tokens == len(x)
    for merged in (forward.result(), backward.result()):
        for m in ("fvu", "cosine", "mse"):
            assert merged[m] == pytest.approx(whole[m], rel=tol[m]), m
    # adding an empty batch or merging an empty accumulator changes nothing
    before = forward.result()
    forward.add(x[:0], x_hat[:0]).merge(QualityAccumulator())
    assert forward.result() == before and forward.tokens == len(x)


def test_figures_are_those_of_metrics() -> None:
    x, x_hat = _data(seed=1)
    acc = QualityAccumulator()
    stats = ReconstructionStats(n_atoms=1)
    for a in range(0, len(x), 64):  # the same batches through both
        acc.add(x[a : a + 64], x_hat[a : a + 64])
        stats.update(x[a : a + 64], x_hat[a : a + 64])
    got, want = acc.result(), stats.result()
    tol = _tols(x)
    for m in ("fvu", "cosine", "mse"):
        assert got[m] == pytest.approx(want[m], rel=tol[m]), m
    # and the definition, written out: FVU = sum |x - x_hat|^2 / sum |x - mean x|^2, cosine the mean per token
    x64, h64 = x.double(), x_hat.double()
    fvu = float((x64 - h64).pow(2).sum() / (x64 - x64.mean(0)).pow(2).sum())
    cos = float(torch.nn.functional.cosine_similarity(x64, h64, dim=-1).mean())
    assert got["fvu"] == pytest.approx(fvu, rel=tol["fvu"] + 2 * gamma(len(x) + 1, F64) * variance_ratio(x))
    assert got["cosine"] == pytest.approx(cos, abs=2 * tol["cosine"])
    assert got["fvu"] > 0.05 and got["cosine"] < 0.999  # an imperfect reconstruction, so the checks can tell


def test_empty_and_mismatched() -> None:
    assert QualityAccumulator().result() == {"fvu": None, "cosine": None, "mse": None}
    x, x_hat = _data(n=5, d=4)
    acc = QualityAccumulator().add(x, x_hat)
    with pytest.raises(ValueError, match="width"):
        acc.merge(QualityAccumulator().add(torch.ones(2, 3), torch.ones(2, 3)))
    perfect = QualityAccumulator().add(x, x).result()
    assert perfect["fvu"] == 0 and perfect["mse"] == 0


def test_counted_tokens() -> None:
    ids = np.array([5, 0, 7, 1, 5])
    assert counted_tokens(ids, [0, 1]).tolist() == [True, False, True, False, True]
    assert counted_tokens(torch.tensor(ids), []).all()
    assert counted_tokens(np.zeros(0, np.int64), [0]).shape == (0,)
