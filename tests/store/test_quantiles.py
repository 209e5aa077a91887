"""Quantile bins, histograms and top-N of per-atom coefficients, on distributions whose answer is known.
These run the exact SQL that ``itda index`` runs."""

from __future__ import annotations

import duckdb
import numpy as np
import pandas as pd
import pytest
import torch

from itda_core.store.quantiles import histogram, histogram_sql, quantile_bins, quantile_sql, top_sql
from tests.tolerance import unit_roundoff


def _expected_bins(values: np.ndarray, n_bins: int) -> np.ndarray:
    """Reference: bin = floor(n_bins * (# values strictly below) / n)."""
    values = np.asarray(values, dtype=np.float32)
    below = np.searchsorted(np.sort(values), values, side="left")
    return (below * n_bins) // len(values)


def _all_members(values, n_bins: int) -> pd.DataFrame:
    """Every value with its bin (per_bin large enough to sample everything)."""
    return quantile_bins(np.asarray(values), n_bins, per_bin=len(values) + 1)


def test_uniform_1_to_1000_gives_ten_exact_bins():
    values = np.random.default_rng(0).permutation(np.arange(1, 1001))
    q = quantile_bins(values, n_bins=10, per_bin=5)
    assert sorted(q["bin"].unique()) == list(range(10))
    for b, group in q.groupby("bin"):
        lo, hi = 100 * b + 1, 100 * b + 100
        assert len(group) == 5  # per_bin samples from each bin
        assert (group["bin_lo"] == lo).all() and (group["bin_hi"] == hi).all()
        assert (group["bin_count"] == 100).all()
        assert group["coef"].between(lo, hi).all()
        # bin / 10.0 in DOUBLE: the same correctly rounded division as Python's
        assert (group["q_lo"] == b / 10).all() and (group["q_hi"] == (b + 1) / 10).all()
    assert q["doc_id"].is_unique
    # the samples are spread over the bin, not its top or bottom five
    for _b, group in q.groupby("bin"):
        assert group["coef"].max() - group["coef"].min() > 20


def test_every_value_lands_in_its_reference_bin():
    rng = np.random.default_rng(1)
    for values in (rng.exponential(size=997), rng.normal(size=500), rng.integers(0, 7, size=300) + 0.5):
        for n_bins in (1, 3, 10, 64):
            q = _all_members(values, n_bins)
            assert len(q) == len(values)
            expected = _expected_bins(values, n_bins)[q["doc_id"].to_numpy()]
            assert (q["bin"].to_numpy() == expected).all()


def test_top_value_is_in_the_top_bin_and_bins_do_not_overlap():
    values = np.random.default_rng(2).lognormal(size=1234)
    q = _all_members(values, 10)
    ranges = q.groupby("bin").agg(lo=("coef", "min"), hi=("coef", "max"), n=("coef", "size"))
    assert ranges.index.max() == 9 and q.loc[q["coef"].idxmax(), "bin"] == 9
    assert (ranges["hi"].to_numpy()[:-1] <= ranges["lo"].to_numpy()[1:]).all()
    assert ranges["n"].sum() == 1234 and ranges["n"].between(123, 124).all()


def test_ties_never_split_across_bins():
    values = np.array([1.0] * 50 + [2.0] * 30 + [3.0] * 20)
    q = _all_members(values, 10)
    bins_of = q.groupby("coef")["bin"].unique()
    assert {v: list(b) for v, b in bins_of.items()} == {1.0: [0], 2.0: [5], 3.0: [8]}
    constant = _all_members(np.full(40, 7.5), 10)
    assert set(constant["bin"]) == {0} and (constant["bin_count"] == 40).all()


def test_fewer_values_than_bins():
    q = quantile_bins(np.array([5.0, -1.0, 3.0]), n_bins=10, per_bin=5)
    assert q.sort_values("coef")["bin"].tolist() == [0, 3, 6]
    assert (
        (q["bin_count"] == 1).all() and (q["bin_lo"] == q["coef"]).all() and (q["bin_hi"] == q["coef"]).all()
    )
    single = quantile_bins(np.array([2.5]), n_bins=10, per_bin=5)
    assert single["bin"].tolist() == [0] and single["coef"].tolist() == [2.5]


def test_negative_values_order_by_sign():
    values = np.arange(-1000, 0)  # all negative: the most negative are the lowest bin
    q = quantile_bins(values, 10, 3)
    for b, group in q.groupby("bin"):
        assert group["coef"].between(-1000 + 100 * b, -901 + 100 * b).all()
    mixed = _all_members(np.arange(-500, 501), 4)  # zero is not an activation
    assert 0 not in set(mixed["coef"]) and len(mixed) == 1000
    assert (mixed.loc[mixed["coef"] < 0, "bin"] <= 1).all() and (
        mixed.loc[mixed["coef"] > 0, "bin"] >= 2
    ).all()


def test_atoms_are_binned_independently_and_sampling_is_reproducible():
    frame = pd.DataFrame(
        {
            "atom": np.repeat([0, 1], 100).astype(np.int32),
            "doc_id": np.tile(np.arange(100), 2).astype(np.int32),
            "position": np.zeros(200, dtype=np.int32),
            "coef": np.concatenate([np.arange(1, 101), np.arange(1001, 1101)]).astype(np.float32),
        }
    )
    con = duckdb.connect()
    con.register("codes_in", frame)
    q = con.execute(quantile_sql("codes_in", 4, 2)).df()
    again = con.execute(quantile_sql("codes_in", 4, 2)).df()
    con.close()
    pd.testing.assert_frame_equal(q, again)
    for atom, lo in ((0, 1), (1, 1001)):
        part = q[q["atom"] == atom]
        assert len(part) == 8
        for b, group in part.groupby("bin"):
            assert group["coef"].between(lo + 25 * b, lo + 25 * b + 24).all()


def test_histogram_counts_and_edges():
    rng = np.random.default_rng(3)
    values = np.concatenate([-rng.exponential(size=300), rng.exponential(size=700) * 3])
    h = histogram(values, 20)
    assert h["count"].sum() == 1000
    # the edges come from the coefficients rounded to FLOAT (one float32 rounding of the float64 values); the
    # top edge is then n_pos * max / n_pos in DOUBLE (two more roundings)
    u32, u64 = unit_roundoff(torch.float32), unit_roundoff(torch.float64)
    assert abs(h["lo"].min() - values.min()) <= u32 * abs(values.min())
    assert abs(h["hi"].max() - values.max()) <= (u32 + 2 * u64) * abs(values.max())
    assert ((h["lo"] < 0) & (h["hi"] > 0)).sum() == 0  # zero is an edge: no bin straddles it
    assert (h["hi"] <= 0).any() and (h["lo"] >= 0).any()  # both signs shown
    # each value falls in its bin's [lo, hi) (the top edge of the last bin is inclusive)
    edges = np.unique(np.concatenate([h["lo"], h["hi"]]))
    counts = np.histogram(values.astype(np.float32), bins=edges)[0]
    by_edge = dict(zip(h["lo"].round(6), h["count"], strict=True))
    for lo, count in zip(edges[:-1].round(6), counts, strict=True):
        assert by_edge.get(lo, 0) == count


def test_histogram_one_sign_and_uniform():
    pos = histogram(np.arange(100) + 0.5, 10)  # bins [0, 9.95), ..., [89.55, 99.5]
    assert pos["lo"].min() == 0 and pos["hi"].max() == 99.5 and (pos["count"] == 10).all()
    edges = histogram(np.arange(1, 101), 10)  # half-open bins: 10 falls in [10, 20), 100 in the last bin
    assert edges["count"].tolist() == [9] + [10] * 8 + [11]
    neg = histogram(-np.arange(1, 101), 10)
    assert neg["lo"].min() == -100 and neg["hi"].max() == 0 and neg["count"].sum() == 100
    assert histogram(np.array([0.0, 0.0]), 4).empty
    with pytest.raises(ValueError):
        histogram_sql("x", 1)


def test_top_sql_ranks_by_signed_coefficient():
    frame = pd.DataFrame(
        {
            "atom": np.zeros(6, dtype=np.int32),
            "doc_id": np.arange(6, dtype=np.int32),
            "position": np.zeros(6, dtype=np.int32),
            "coef": np.array([0.5, -3.0, 2.0, 2.0, 0.0, 1.0], dtype=np.float32),
        }
    )
    con = duckdb.connect()
    con.register("codes_in", frame)
    top = con.execute(top_sql("codes_in", 3)).df()
    con.close()
    assert top["rank"].tolist() == [1, 2, 3]
    assert top["coef"].tolist() == [2.0, 2.0, 1.0] and top["doc_id"].tolist() == [2, 3, 5]
