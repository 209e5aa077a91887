"""Fixtures of the store tests: the tiny corpus (four copies), a tiny Llama and BERT, and an indexed store of
both, built once per session (test_store.py and test_queries.py read it)."""

from __future__ import annotations

import pytest

from itda_core.jobs.index import IndexConfig, index_model
from itda_core.store.writer import write_dictionary
from tests.store.helpers import train_layers
from tests.tiny import tiny_corpus, tiny_model


@pytest.fixture(scope="session")
def corpus():
    """The tiny corpus, four copies (enough documents for a train / held-out split)."""
    return tiny_corpus(n_copies=4)


@pytest.fixture(scope="session")
def llama():
    """A 3-layer tiny Llama."""
    return tiny_model("llama", n_layers=3)


@pytest.fixture(scope="session")
def bert():
    """A 2-layer tiny BERT."""
    return tiny_model("bert", n_layers=2)


@pytest.fixture(scope="session")
def built(tmp_path_factory, corpus, llama, bert):
    """A store with 3 Llama layers and 2 BERT layers, all indexed."""
    path = tmp_path_factory.mktemp("store") / "itda.duckdb"
    dicts = {"llama": train_layers(llama, corpus, [0, 1, 2]), "bert": train_layers(bert, corpus, [0, 1])}
    ids = {}
    for name, model in (("llama", llama), ("bert", bert)):
        for layer, itda in dicts[name].items():
            ids[(name, layer)] = write_dictionary(path, itda, model, corpus)
    cfg = IndexConfig(max_tokens=None, top_n=5, n_quantiles=4, per_quantile=3, hist_bins=8, progress=False)
    reports = [index_model(path, llama, cfg), index_model(path, bert, cfg)]
    return {"path": path, "dicts": dicts, "ids": ids, "reports": reports}
