"""Which atoms count, the chance-corrected index, and the same-documents rule of Jaccard comparisons."""

from __future__ import annotations

from fractions import Fraction

import numpy as np
import pytest
import torch

from itda_core.dictionary import ITDA, ITDAConfig
from itda_core.errors import ITDAError
from itda_core.extraction import extract
from itda_core.provenance import Provenance
from itda_core.similarity.jaccard import (
    JaccardOptions,
    atom_set,
    jaccard,
    jaccard_by_span,
    jaccard_index,
    model_jaccard,
    shared_atoms,
)
from itda_core.similarity.matrices import jaccard_matrix
from itda_core.trainer import train
from tests.tiny import tiny_corpus, tiny_model
from tests.tolerance import unit_roundoff

# the hand-built and tiny dictionaries hold a few atoms: a value for any size (min_atoms is tested below)
RAW_ALL = JaccardOptions(atoms="all", index="raw", min_atoms=0)
RAW = JaccardOptions(index="raw", min_atoms=0)


def _dictionary(keys: list[tuple[int, int]], init_count: list[int], *, layer: int = 0, tokens: int = 1000) -> ITDA:
    n = len(keys)
    prov = Provenance(torch.tensor([d for d, _ in keys]), torch.tensor([p for _, p in keys]),
                      torch.tensor([7 * d + p for d, p in keys]), torch.tensor([3 * p for _, p in keys]),
                      torch.tensor([3 * p + 3 for _, p in keys]), token_str=[f"t{d}_{p}" for d, p in keys])
    config = ITDAConfig(model_id="m", model_name="m", layer=layer, d_model=4, corpus_id="c", corpus_sha256="s",
                        tokenizer="tok", tokens_seen=tokens, documents_seen=10, documents_sha256="docs")
    add_error = torch.tensor([float("nan") if c else 0.5 for c in init_count])
    return ITDA(torch.nn.functional.normalize(torch.randn(n, 4), dim=-1), prov, config, add_error,
                torch.tensor(init_count, dtype=torch.int32))


def _exact_corrected(shared: int, a: int, b: int, universe: int) -> float:
    """The corrected index in exact rational arithmetic, from its definition."""
    j = Fraction(shared, a + b - shared)
    chance = Fraction(a * b, universe)
    j0 = chance / (a + b - chance)
    jmax = Fraction(min(a, b), max(a, b))
    return float((j - j0) / (jmax - j0))


@pytest.mark.parametrize(("shared", "a", "b", "universe"), [(10, 20, 40, 100), (3, 7, 7, 500), (0, 50, 80, 1000),
                                                            (40, 40, 300, 2000)])
def test_corrected_index_is_its_formula(shared: int, a: int, b: int, universe: int) -> None:
    got = jaccard_index(shared, a, b, universe, "corrected")
    # a handful of float64 operations on exact integers, each rounded once
    assert got == pytest.approx(_exact_corrected(shared, a, b, universe), abs=16 * unit_roundoff(torch.float64))
    assert jaccard_index(shared, a, b, universe, "raw") == shared / (a + b - shared)


def test_corrected_index_anchors() -> None:
    assert jaccard_index(30, 30, 30, 1000, "corrected") == 1.0  # identical sets
    assert jaccard_index(30, 30, 90, 1000, "corrected") == 1.0  # the smaller set inside the larger
    assert np.isnan(jaccard_index(5, 30, 30, 0, "corrected"))  # unknown universe
    assert np.isnan(jaccard_index(0, 0, 30, 1000, "corrected"))
    assert jaccard_index(0, 30, 30, 1000, "corrected") < 0  # less than chance
    with pytest.raises(ITDAError, match="index"):
        jaccard_index(1, 2, 3, 10, "adjusted")
    with pytest.raises(ITDAError, match="atom choice"):
        JaccardOptions(atoms="some")


def test_corrected_index_is_zero_for_random_sets_of_any_sizes() -> None:
    # random subsets of one universe: the corrected index averages 0 whatever the sizes, while raw Jaccard
    # falls with the size ratio. Tolerance: 5 standard errors of the mean (hypergeometric variance), plus the
    # small bias of J's curvature
    rng = np.random.default_rng(0)
    universe, draws = 2000, 400
    for a, b in [(200, 300), (60, 900), (500, 500)]:
        values, raws = [], []
        for _ in range(draws):
            sa = rng.choice(universe, a, replace=False)
            sb = rng.choice(universe, b, replace=False)
            shared = len(np.intersect1d(sa, sb))
            values.append(jaccard_index(shared, a, b, universe, "corrected"))
            raws.append(shared / (a + b - shared))
        p, q = a / universe, b / universe
        sd_shared = np.sqrt(a * q * (1 - q) * (1 - p) * universe / (universe - 1))
        scale = 1 / ((a + b - a * q) * (min(a, b) / max(a, b) - a * q / (a + b - a * q)))
        assert abs(np.mean(values)) <= 5 * sd_shared * scale / np.sqrt(draws) + 1e-3, (a, b, np.mean(values))
        assert np.mean(raws) > 0.01  # raw Jaccard is well above 0 for the same random sets
    small, large = jaccard_index(6, 60, 900, universe, "raw"), jaccard_index(50, 500, 500, universe, "raw")
    assert small < large  # (raw Jaccard of chance overlaps depends on the sizes)


def test_arbitrary_initial_picks_are_not_evidence() -> None:
    # both dictionaries hold the same 4 initial atoms seen once (arbitrary picks among tied rows) and the same
    # BOS atom (count 3, a real repeat); their atoms added by the error rule are disjoint
    init = [(0, 0), (0, 1), (0, 2), (0, 3)]
    a = _dictionary([(5, 0), *init, (1, 1), (1, 2)], [3, 1, 1, 1, 1, 0, 0])
    b = _dictionary([(5, 0), *init, (2, 1), (2, 2), (2, 3)], [3, 1, 1, 1, 1, 0, 0, 0], layer=1)
    assert jaccard(a, b, RAW_ALL) == 5 / 10
    assert jaccard(a, b, RAW) == 1 / 6  # only BOS is shared among the evidence atoms (3 + 4 - 1)
    assert len(atom_set(a)) == 3 and len(atom_set(a, "all")) == 7
    shared = shared_atoms(a, b)
    assert shared[["index_a", "index_b"]].values.tolist() == [[0, 0]]  # rows index the full dictionaries
    assert len(shared_atoms(a, b, atoms="all")) == 5
    assert jaccard_matrix([a, b], options=RAW).attrs["label"] == "Jaccard (raw, evidence atoms)"


@pytest.fixture(scope="module")
def corpus():
    return tiny_corpus(n_copies=2)


def test_evidence_jaccard_of_trained_layers_matches_a_reference(corpus) -> None:
    gpt2 = tiny_model("gpt2")
    dicts = train(gpt2, corpus, layers=[0, 2], k=8, batch_size=4, max_tokens=None, init_rule="first", progress=False)

    def keys(itda: ITDA, evidence: bool) -> set:
        mask = itda.evidence.tolist() if evidence else [True] * len(itda)
        return {k for k, keep in zip(itda.provenance.keys(), mask, strict=True) if keep}

    for evidence, options in ((True, RAW), (False, RAW_ALL)):
        sa, sb = keys(dicts[0], evidence), keys(dicts[2], evidence)
        assert jaccard(dicts[0], dicts[2], options) == len(sa & sb) / len(sa | sb)
    # with the first-occurrence rule the two layers share their whole initial block; it does not count
    assert jaccard(dicts[0], dicts[2], RAW) < jaccard(dicts[0], dicts[2], RAW_ALL)
    both = {0: dicts[0], 2: dicts[2]}
    assert model_jaccard(both, both, [0, 2]) == 1.0


def test_extract_by_documents_records_whole_and_cut_documents(corpus) -> None:
    llama = tiny_model("llama")
    batches = list(extract(llama, corpus, [0], batch_size=3, max_documents=5, progress=False))
    seen = [d for b in batches for d in b.complete]
    assert seen == [doc.doc_id for doc in corpus.documents[:5]] and all(b.partial is None for b in batches)
    assert set(torch.cat([b.provenance.doc_id for b in batches]).tolist()) == set(seen)
    cut = list(extract(llama, corpus, [0], batch_size=3, max_tokens=40, progress=False))
    whole = [d for b in cut for d in b.complete]
    ids = torch.cat([b.provenance.doc_id for b in cut])
    partial = cut[-1].partial
    assert partial is not None and partial[1] == int((ids == partial[0]).sum()) and partial[0] not in whole
    assert sum(int((ids == d).sum()) for d in whole) + partial[1] == 40
    with pytest.raises(ITDAError, match="max_documents"):
        next(extract(llama, corpus, [0], max_documents=0))


def test_same_documents_across_tokenizers(corpus) -> None:
    gpt2, bert = tiny_model("gpt2"), tiny_model("bert")
    opts = {"layers": [1], "k": 8, "batch_size": 4, "progress": False}
    by_docs = [train(m, corpus, max_tokens=None, max_documents=8, **opts)[1] for m in (gpt2, bert)]
    assert by_docs[0].config.documents_sha256 == by_docs[1].config.documents_sha256
    assert by_docs[0].config.documents_seen == 8 and by_docs[0].config.tokens_seen != by_docs[1].config.tokens_seen
    value = jaccard_by_span(*by_docs, RAW)
    assert np.isfinite(value)
    by_tokens = [train(m, corpus, max_tokens=150, **opts)[1] for m in (gpt2, bert)]
    with pytest.raises(ITDAError, match="different documents") as err:
        jaccard_by_span(*by_tokens)
    assert "\n" not in str(err.value) and "--max-documents" in str(err.value)
    # dictionaries from before the documents were recorded: only the same tokenizer and budget are trusted
    legacy = [ITDA(d.atoms, d.provenance, ITDAConfig.from_dict({**d.config.__dict__, "documents_sha256": ""}),
                   d.add_error, d.init_count) for d in by_docs]
    with pytest.raises(ITDAError, match="cannot tell"):
        jaccard_by_span(*legacy)
    assert jaccard(legacy[0], legacy[0]) == 1.0


def test_too_few_atoms_have_no_value() -> None:
    # two sets of 3 evidence atoms (the same first tokens): raw Jaccard 1, which says nothing about two layers
    a = _dictionary([(0, 0), (1, 0), (2, 0), (3, 1)], [2, 2, 2, 1])
    b = _dictionary([(0, 0), (1, 0), (2, 0), (4, 1)], [2, 2, 2, 1], layer=1)
    assert jaccard(a, b, RAW) == 1.0
    assert np.isnan(jaccard(a, b, JaccardOptions(index="raw", min_atoms=4)))  # 3 evidence atoms < 4
    assert jaccard(a, b, JaccardOptions(index="raw", min_atoms=3)) == 1.0  # the bound is inclusive
    # the bound is on the atoms that count: all 4 atoms count under "all"
    assert jaccard(a, b, JaccardOptions(atoms="all", index="raw", min_atoms=4)) == 3 / 5
    assert JaccardOptions().min_atoms == 32  # the default, as the CLI's literal
    opts = JaccardOptions(min_atoms=4)
    assert opts.too_few(3, 100) and opts.too_few(100, 3) and not opts.too_few(4, 4)
    assert np.isnan(opts.value(3, 3, 100, 1000)) and opts.value(4, 4, 4, 1000) == 1.0
    matrix = jaccard_matrix([a, b], options=JaccardOptions(index="raw", min_atoms=4))
    assert np.isnan(matrix.to_numpy()).all()  # the diagonal too: a 3-atom set against itself has no value
    for bad in (-1, 10**7, 2.5, "8"):
        with pytest.raises(ITDAError, match="min_atoms"):
            JaccardOptions(min_atoms=bad)
