"""``itda similarity --store``: Jaccard and baselines written into a tiny store's similarities table in the form
the dashboard reads (its own lookup gives back the matrices), replaced on a rerun, and clear errors."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from itda_core.cli.app import app
from itda_core.errors import ITDAError
from itda_core.jobs.similarity import StoreSimilarityConfig, method_name, store_similarities
from itda_core.similarity import baselines
from itda_core.store.connection import connect_readonly
from tests.stores import build_tiny_store
from tests.tolerance import similarity_tol

FAST = StoreSimilarityConfig(tokens=150, n_directions=4, n_anchors=20, device="cpu")


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    return build_tiny_store(tmp_path_factory.mktemp("simstore"), atom_map=False)


def _count(path) -> dict[str, int]:
    with connect_readonly(path) as con:
        return dict(con.execute("SELECT method, count(*) FROM similarities GROUP BY method").fetchall())


def _diagonal_tol(acts: list[torch.Tensor]) -> float:
    """A measure of x against itself (CKA, R^2: exactly 1) in float64: tolerance.similarity_tol of the widest
    activations, amplified by the worst Gram condition number (R^2's pseudo-inverse), with their offset."""
    xs = [x.double().cpu() for x in acts]
    cond = max(float(torch.linalg.cond((x - x.mean(0)).T @ (x - x.mean(0)), 2)) for x in xs)
    offset = max(float((x.mean(0).abs() / x.std(0)).max()) for x in xs)
    return similarity_tol(max(x.shape[0] for x in xs), max(x.shape[1] for x in xs), cond=cond, offset=offset)


def test_store_similarities_match_dashboard(store, monkeypatch):
    seen: list[torch.Tensor] = []  # the activations the baselines are computed on, for their tolerances
    collect = baselines.collect_activations

    def recording(*args, **kwargs):
        out = collect(*args, **kwargs)
        seen.extend(out.values())
        return out

    monkeypatch.setattr(baselines, "collect_activations", recording)
    report = store_similarities(store["path"], None, FAST)
    counts = _count(store["path"])
    # 5 dictionaries: Jaccard for all 15 unordered pairs (llama x bert by spans); baselines only within a
    # tokenizer (3 llama layers -> 6 unordered pairs, 2 bert layers -> 3); R^2 in both orders (9 + 4)
    assert counts["jaccard"] == 15
    assert counts[method_name("cka")] == 9 and counts[method_name("svcca")] == 9
    assert counts[method_name("r2")] == 13
    assert report.rows == counts
    store_similarities(store["path"], None, FAST)  # a rerun replaces, never duplicates
    assert _count(store["path"]) == counts

    monkeypatch.setenv("ITDA_STORE", str(store["path"]))
    from itda_dashboard import similarity_data

    ids = [store["ids"][("llama", layer)] for layer in range(3)]
    assert method_name("cka") in set(similarity_data.stored_similarities()["method"])
    assert "jaccard" not in set(similarity_data.stored_similarities()["method"].str.lower())
    tol = _diagonal_tol(seen)
    cka = similarity_data.baseline(method_name("cka"), ids, ids)
    assert np.isfinite(cka).all() and np.abs(np.diagonal(cka) - 1.0).max() <= tol
    assert np.array_equal(cka, cka.T)  # one stored row serves both orders
    r2 = similarity_data.baseline(method_name("r2"), ids, ids)
    assert np.isfinite(r2).all() and np.abs(np.diagonal(r2) - 1.0).max() <= tol
    live = similarity_data.jaccard(ids, ids)["values"]
    with connect_readonly(store["path"]) as con:
        stored = dict(((a, b), v) for a, b, v in con.execute(
            "SELECT dict_a, dict_b, value FROM similarities WHERE method = 'jaccard'").fetchall())
    assert stored[(ids[0], ids[1])] == live[0, 1]  # shared / union of the same exact counts, stored as DOUBLE


def test_cli_store_and_errors(store, tmp_path):
    runner = CliRunner()
    res = runner.invoke(app, ["similarity", "--store", str(store["path"]), "--measures", "jaccard,cka", "--tokens",
                              "100", "--device", "cpu"])
    assert res.exit_code == 0, res.output
    assert "jaccard" in res.output and "linear CKA" in res.output
    bad = runner.invoke(app, ["similarity", "--store", str(store["path"]), "--out", str(tmp_path / "x.csv")])
    assert bad.exit_code != 0 and "--store writes into the store" in str(bad.exception)
    with pytest.raises(ITDAError, match="no dictionary 999"):
        store_similarities(store["path"], [999], FAST)
    with pytest.raises(ITDAError, match="unknown measure"):
        store_similarities(store["path"], None, StoreSimilarityConfig(measures=("cosine",)))
