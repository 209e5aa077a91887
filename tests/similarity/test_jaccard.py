"""Jaccard similarity of dictionaries: exact values, refusals, span matching, model level, matrices, CLI."""

from __future__ import annotations

import dataclasses
import json
import random
import zlib
from functools import partial

import numpy as np
import pytest
import torch
import typer
from typer.testing import CliRunner

from itda_core.cli.similarity import register
from itda_core.dictionary import ITDA, ITDAConfig
from itda_core.errors import ITDAError
from itda_core.provenance import Provenance
from itda_core.similarity import jaccard_matrix as _jaccard_matrix
from itda_core.similarity import model_jaccard_matrix as _model_jaccard_matrix
from itda_core.similarity import same_tokenizer
from itda_core.similarity.jaccard import JaccardOptions, atom_set, is_partial_token
from itda_core.similarity.jaccard import jaccard as _jaccard
from itda_core.similarity.jaccard import jaccard_by_span as _jaccard_by_span
from itda_core.similarity.jaccard import model_jaccard as _model_jaccard
from itda_core.similarity.jaccard import shared_atoms as _shared_atoms
from itda_core.similarity.jaccard import span_matches as _span_matches
from itda_core.trainer import train
from tests.tiny import tiny_corpus, tiny_model

# These tests check the mechanics of the paper's measure (keys, spans, model level, matrices, the CLI): raw
# Jaccard over all atoms, a value for any set size (the hand-built dictionaries hold a few atoms). Which atoms
# count, min_atoms and the chance correction are tested in test_similarity_options.py.
PAPER = JaccardOptions(atoms="all", index="raw", min_atoms=0)
jaccard = partial(_jaccard, options=PAPER)
jaccard_by_span = partial(_jaccard_by_span, options=PAPER)
model_jaccard = partial(_model_jaccard, options=PAPER)
jaccard_matrix = partial(_jaccard_matrix, options=PAPER)
model_jaccard_matrix = partial(_model_jaccard_matrix, options=PAPER)
shared_atoms = partial(_shared_atoms, atoms="all")
span_matches = partial(_span_matches, atoms="all")
PAPER_FLAGS = ["--atoms", "all", "--index", "raw", "--min-atoms", "0"]

Row = tuple  # (doc_id, position, char_start, char_end, token_str)


def make(rows: list[Row], *, layer: int = 0, model: str = "m", tokenizer: str | None = None, **cfg) -> ITDA:
    """A hand-built dictionary whose atoms come from ``rows``."""
    n = len(rows)
    cols = list(zip(*rows, strict=True)) if rows else [[], [], [], [], []]
    token_ids = [zlib.crc32(s.encode()) % 50_000 for s in cols[4]]
    prov = Provenance(torch.tensor(cols[0], dtype=torch.long), torch.tensor(cols[1], dtype=torch.long),
                      torch.tensor(token_ids, dtype=torch.long), torch.tensor(cols[2], dtype=torch.long),
                      torch.tensor(cols[3], dtype=torch.long), token_str=list(cols[4]))
    options = {"corpus_id": "corpus", "corpus_sha256": "abc123", "documents_sha256": "docs", "seq_len": 128, **cfg}
    config = ITDAConfig(model_id=model, model_name=model, layer=layer, d_model=4,
                        tokenizer=tokenizer if tokenizer is not None else f"tok-{model}", **options)
    atoms = torch.nn.functional.normalize(torch.randn(n, 4), dim=-1)
    return ITDA(atoms, prov, config)


def simple(keys: list[tuple[int, int]], **kw) -> ITDA:
    """Atoms at (doc, position); each token is 3 characters long, spans follow positions."""
    return make([(d, p, 3 * p, 3 * p + 3, f"t{d}_{p}") for d, p in keys], **kw)


def key_jaccard(a: ITDA, b: ITDA) -> float:
    """Reference: Jaccard of the (doc_id, position) sets, in plain Python."""
    sa, sb = set(a.provenance.keys()), set(b.provenance.keys())
    return len(sa & sb) / len(sa | sb)


# Every Jaccard index here is shared / union of exact integer counts: one correctly rounded division, so it
# equals the reference quotient of the same counts bit for bit (no tolerance: a wrong count moves it by at
# least 1 / union^2).


# ---- plain Jaccard ----------------------------------------------------------------------------------------
def test_exact_values():
    a = simple([(0, 0), (0, 1), (1, 2)])
    b = simple([(0, 1), (1, 2), (2, 0), (2, 1)])
    assert jaccard(a, b) == 2 / 5
    assert jaccard(b, a) == 2 / 5
    assert jaccard(a, a) == 1.0
    assert jaccard(a, simple([(5, 5), (6, 6)])) == 0.0
    # duplicates of a key count once (sets)
    dup = simple([(0, 0), (0, 0), (0, 1), (1, 2)])
    assert jaccard(dup, a) == 1.0


def test_identical_trained_dictionaries_give_one(trained):
    a = trained["gpt2"][1]
    assert jaccard(a, a) == 1.0
    assert jaccard_by_span(a, a) == 1.0


@pytest.mark.parametrize(("change", "words"), [
    ({"corpus_sha256": "other"}, "corpus"),
    ({"seq_len": 64}, "seq_len"),
    ({"skip_special_tokens": True}, "skip_special_tokens"),
])
def test_refuses_mismatched_builds(change, words):
    a = simple([(0, 0), (0, 1)])
    b = simple([(0, 0)], **change)
    with pytest.raises(ITDAError, match=words):
        jaccard(a, b)


def test_refuses_different_tokenizers_and_points_to_spans():
    a = simple([(0, 0)], model="gpt2", tokenizer="gpt2")
    b = simple([(0, 0)], model="llama", tokenizer="meta-llama/Llama-3.2-1B")
    with pytest.raises(ITDAError, match="jaccard_by_span") as err:
        jaccard(a, b)
    assert "\n" not in str(err.value)
    assert jaccard_by_span(a, b) == 1.0  # spans work across tokenizers


def test_different_corpus_refused_even_by_spans_and_corpus_id_fallback():
    a = simple([(0, 0)])
    with pytest.raises(ITDAError, match="corpus"):
        jaccard_by_span(a, simple([(0, 0)], corpus_sha256="zzz"))
    # without a sha256, the corpus ids decide
    c = simple([(0, 0)], corpus_sha256="", corpus_id="x:train:1")
    assert jaccard(c, simple([(0, 0)], corpus_sha256="", corpus_id="x:train:1")) == 1.0
    with pytest.raises(ITDAError, match="corpus"):
        jaccard(c, simple([(0, 0)], corpus_sha256="", corpus_id="x"))


def test_same_tokenizer_rule():
    cfg = make([], model="a", tokenizer="org/tok").config
    assert same_tokenizer(cfg, dataclasses.replace(cfg, model_id="b"))  # same tokenizer string
    assert same_tokenizer(cfg, dataclasses.replace(cfg, tokenizer="other"))  # same model id
    assert not same_tokenizer(cfg, dataclasses.replace(cfg, model_id="b", tokenizer="other"))
    fp = dataclasses.replace(cfg, stats={"tokenizer_sha256": "f1"})
    assert same_tokenizer(fp, dataclasses.replace(fp, model_id="b", tokenizer="x"))
    assert not same_tokenizer(fp, dataclasses.replace(fp, stats={"tokenizer_sha256": "f2"}))


def test_disagreeing_tokens_at_a_shared_key_are_caught():
    a = make([(0, 0, 0, 3, "The")], model="a", tokenizer="same")
    b = make([(0, 0, 0, 2, "Th")], model="b", tokenizer="same")
    with pytest.raises(ITDAError, match="disagree"):
        jaccard(a, b)


# ---- span matching ----------------------------------------------------------------------------------------
# One document tokenised by a byte-level tokenizer: the emoji (character 10) is split into three pieces.
DOC = [(0, 0, 3, "The"), (1, 3, 4, "Ġ"), (2, 4, 7, "cat"), (3, 7, 10, "Ġis"), (4, 10, 11, "ðŁ"),
       (5, 10, 11, "Ļ"), (6, 10, 11, "Ĥ"), (7, 11, 12, "."), (8, 12, 15, "ĠOK")]


def test_partial_token_detection():
    assert [is_partial_token(t[3]) for t in DOC] == [False] * 4 + [True] * 3 + [False] * 2
    assert is_partial_token("<0xF0>") and not is_partial_token("<0x0A>")
    assert not is_partial_token("▁Paris") and not is_partial_token("🙂") and not is_partial_token("Ã©")


def test_span_equals_plain_for_one_tokenizer_on_random_subsets():
    rng = random.Random(0)
    tokens = [(d, *t) for d in range(3) for t in DOC]
    tokens += [(0, 9, 0, 0, "<eos>"), (1, 9, 0, 0, "<eos>")]  # empty-span specials not at position 0
    for _ in range(200):
        rows_a = rng.sample(tokens, rng.randint(1, len(tokens)))
        rows_b = rng.sample(tokens, rng.randint(1, len(tokens)))
        a, b = make(rows_a, model="x"), make(rows_b, model="x")
        assert jaccard_by_span(a, b) == jaccard(a, b)
        assert len(span_matches(a, b)) == len(set(a.provenance.keys()) & set(b.provenance.keys()))


def test_span_matching_is_one_to_one():
    # A: one long token "Paris" (0-5); B: "Par" (0-3) + "is" (3-5). The long token counts once: it matches
    # the B token that ends where it ends.
    a = make([(0, 0, 0, 5, "Paris")], model="a")
    b = make([(0, 0, 0, 3, "Par"), (0, 1, 3, 5, "is")], model="b")
    pairs = span_matches(a, b)
    assert pairs.to_dict("list") == {"index_a": [0], "index_b": [1]}
    assert jaccard_by_span(a, b) == 1 / (1 + 2 - 1)
    assert jaccard_by_span(b, a) == 1 / 2
    # a token that only overlaps (does not end at the same character) does not match
    par, paris = make([(0, 0, 0, 3, "Par")], model="a"), make([(0, 0, 0, 5, "Paris")], model="b")
    assert jaccard_by_span(par, paris) == 0


def test_span_rule_leading_space_bos_and_specials():
    # GPT-2 style " Paris" (space included) vs SentencePiece/WordPiece "paris" (space not included): same end.
    a = make([(0, 0, 0, 0, "<bos>"), (0, 1, 0, 3, "The"), (0, 2, 3, 9, "ĠParis"), (0, 3, 0, 0, "<eos>")],
             model="a")
    b = make([(0, 0, 0, 0, "[CLS]"), (0, 1, 0, 3, "the"), (0, 2, 4, 9, "paris"), (0, 3, 0, 0, "[SEP]")],
             model="b")
    pairs = span_matches(a, b)
    assert sorted(zip(pairs.index_a, pairs.index_b, strict=True)) == [(0, 0), (1, 1), (2, 2)]  # not eos/sep
    # split-character pieces match only the identical piece at the same position
    c = make([(0, 5, 10, 11, "Ļ")], model="c")
    assert jaccard_by_span(c, make([(0, 5, 10, 11, "Ļ")], model="d")) == 1.0
    assert jaccard_by_span(c, make([(0, 6, 10, 11, "Ļ")], model="d")) == 0.0
    assert jaccard_by_span(c, make([(0, 1, 10, 11, "🙂")], model="d")) == 0.0


# ---- trained dictionaries ---------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def trained():
    corpus = tiny_corpus(n_copies=2)
    out = {}
    for name, kind, seed in [("gpt2", "gpt2", 0), ("gpt2_seed1", "gpt2", 1), ("llama", "llama", 0)]:
        out[name] = train(tiny_model(kind, seed=seed), corpus, layers=[0, 1, 2], k=4, batch_size=8,
                          max_tokens=None, progress=False)
    return out


def test_span_equals_plain_on_trained_same_tokenizer(trained):
    a, b = trained["gpt2"], trained["gpt2_seed1"]
    # the tiny models of both seeds share one tokenizer but record different model ids
    assert not same_tokenizer(a[1].config, b[1].config)
    same = dataclasses.replace(b[1].config, tokenizer=a[1].config.tokenizer)
    b1_same = ITDA(b[1].atoms, b[1].provenance, same)
    for la in a:
        for lb in b:
            expected = key_jaccard(a[la], b[lb])
            assert jaccard_by_span(a[la], b[lb]) == expected
    assert jaccard(a[1], b1_same) == key_jaccard(a[1], b[1])
    assert 0 < key_jaccard(a[1], b[1]) < 1
    # automatic method picks spans here and gives the same matrix as plain keys would
    m = jaccard_matrix(a, b)
    assert m.attrs["method"] == "spans"
    assert m.loc[1, 2] == key_jaccard(a[1], b[2])


def test_spans_across_a_bos_shift(trained):
    # The tiny Llama tokenizer is the GPT-2 one plus a <bos>: positions shift by one, spans do not.
    a, b = trained["gpt2"][1], trained["llama"][1]
    with pytest.raises(ITDAError):
        jaccard(a, b)
    shifted = {(d, p + 1) for (d, p), s in zip(a.provenance.keys(), a.provenance.token_str, strict=True)
               if not is_partial_token(s)}
    expected = len(shifted & set(b.provenance.keys()))
    pairs = shared_atoms(a, b)
    assert len(pairs) == expected > 0
    assert (pairs.position_b == pairs.position_a + 1).all()
    assert (pairs.token_a == pairs.token_b).all()
    assert jaccard_by_span(a, b) == expected / (len(a) + len(b) - expected)


def test_model_level_union_over_layers_1_to_n(trained):
    a, b = trained["gpt2"], trained["llama"]
    ua = set().union(*(set(a[la].provenance.keys()) for la in (1, 2)))
    c = trained["gpt2_seed1"]
    uc = set().union(*(set(c[la].provenance.keys()) for la in (1, 2)))
    assert model_jaccard(a, c) == len(ua & uc) / len(ua | uc)
    assert model_jaccard(a, a, layers=[0, 1, 2]) == 1.0
    ua0 = ua | set(a[0].provenance.keys())
    uc0 = uc | set(c[0].provenance.keys())
    assert model_jaccard(a, c, layers=[0, 1, 2]) == len(ua0 & uc0) / len(ua0 | uc0)
    assert 0 < model_jaccard(a, b) < 1  # span-based automatically across tokenizers
    mm = model_jaccard_matrix({"gpt2": a, "seed1": c, "llama": b})
    # the lower triangle is a copy of the upper one
    assert list(mm.index) == ["gpt2", "seed1", "llama"] and np.array_equal(mm.to_numpy(), mm.to_numpy().T)
    assert mm.loc["gpt2", "seed1"] == model_jaccard(a, c)


def test_model_level_hand_built():
    a = {0: simple([(0, 0)], layer=0), 1: simple([(0, 1), (0, 2)], layer=1),
         2: simple([(0, 2), (0, 3)], layer=2)}
    b = {0: simple([(0, 1)], layer=0), 1: simple([(0, 3)], layer=1), 2: simple([(0, 4)], layer=2)}
    # unions over layers 1..2: A = {1,2,3}, B = {3,4}
    assert model_jaccard(a, b) == 1 / 4
    # with layer 0: A = {0,1,2,3}, B = {1,3,4}
    assert model_jaccard(a, b, layers=[0, 1, 2]) == 2 / 5
    with pytest.raises(ITDAError, match="layer"):
        model_jaccard({0: a[0]}, b)


# ---- matrices and shared atoms ----------------------------------------------------------------------------
def test_matrix_shape_labels_symmetry_and_counts():
    dicts = {layer: simple([(0, p) for p in range(layer, layer + 4)], layer=layer) for layer in range(4)}
    m, shared = jaccard_matrix(dicts, return_shared=True)
    assert m.shape == (4, 4) and list(m.index) == [0, 1, 2, 3] and list(m.columns) == [0, 1, 2, 3]
    assert np.array_equal(m.to_numpy(), m.to_numpy().T) and (np.diag(m.to_numpy()) == 1.0).all()
    assert m.loc[0, 1] == 3 / 5 and m.loc[0, 3] == 1 / 7
    assert shared.loc[0, 1] == 3 and shared.loc[2, 2] == 4
    assert m.attrs["method"] == "keys"
    # a list works too, and a cross-model matrix has rows of A and columns of B
    other = [simple([(0, 0), (0, 1)], layer=5, model="n", tokenizer="tok-m")]
    cross = jaccard_matrix(list(dicts.values()), other)
    assert cross.shape == (4, 1) and list(cross.columns) == [5]
    assert cross.loc[0, 5] == 2 / 4


def test_shared_atoms_lists_exactly_the_intersection(trained):
    a, b = trained["gpt2"][0], trained["gpt2"][2]
    df = shared_atoms(a, b)
    expected = set(a.provenance.keys()) & set(b.provenance.keys())
    assert set(zip(df.doc_id, df.position_a, strict=True)) == expected and len(df) == len(expected)
    for row in df.itertuples():
        assert a.provenance.keys()[row.index_a] == (row.doc_id, row.position_a)
        assert b.provenance.keys()[row.index_b] == (row.doc_id, row.position_b)
        assert row.token_a == a.provenance.token_str[row.index_a] == row.token_b
        assert (row.char_start_a, row.char_end_a) == (row.char_start_b, row.char_end_b)
    assert {"index_a", "index_b", "doc_id", "position_a", "position_b", "token_a", "token_b", "char_start_a",
            "char_end_a", "char_start_b", "char_end_b"} <= set(df.columns)


def test_atom_sets_are_cached():
    a = simple([(0, 0), (0, 1)])
    assert atom_set(a) is atom_set(a)


def test_matrix_of_large_dictionaries():
    rng = np.random.default_rng(0)
    dicts = {}
    for layer in range(8):
        keys = np.unique(rng.integers(0, 2000, 20_000) * 1000 + rng.integers(0, 128, 20_000))
        n = len(keys)
        zeros = torch.zeros(n, dtype=torch.long)
        prov = Provenance(torch.tensor(keys // 1000), torch.tensor(keys % 1000), zeros, zeros, zeros + 1,
                          token_str=["x"] * n)
        cfg = ITDAConfig(model_id="big", model_name="big", layer=layer, d_model=1, corpus_sha256="s")
        dicts[layer] = ITDA(torch.zeros(n, 1), prov, cfg)
    m = jaccard_matrix(dicts)  # (its speed is measured in bench/, not asserted here)
    assert m.shape == (8, 8)


# ---- CLI --------------------------------------------------------------------------------------------------
@pytest.fixture
def saved(tmp_path):
    for model in ("alpha", "beta"):
        for layer in range(3):
            keys = [(0, p) for p in range(layer, layer + 3)] + ([(1, 0)] if model == "beta" else [])
            simple(keys, layer=layer, model=model, tokenizer="shared").save(
                tmp_path / "dicts" / model / f"blocks.{layer}.hook_resid_post")
    return tmp_path / "dicts"


def _app() -> typer.Typer:
    app = typer.Typer()

    @app.callback()
    def main() -> None:
        """Test app."""

    register(app)
    return app


def test_cli_layer_matrix_one_model(saved):
    result = CliRunner().invoke(_app(), ["similarity", *PAPER_FLAGS, str(saved / "alpha"), "--shared"])
    assert result.exit_code == 0, result.output
    assert "alpha layer" in result.output and "0.500" in result.output and "shared atoms" in result.output


def test_cli_two_models_json_and_csv(saved, tmp_path):
    out = tmp_path / "m.json"
    result = CliRunner().invoke(_app(), ["similarity", *PAPER_FLAGS, str(saved), "--out", str(out), "--shared"])
    assert result.exit_code == 0, result.output
    data = json.loads(out.read_text())
    assert data["kind"] == "layer" and data["rows"] == ["0", "1", "2"] and data["columns"] == ["0", "1", "2"]
    assert data["jaccard"][0][0] == 3 / 4 and data["shared"][0][0] == 3  # JSON keeps a float's repr: exact
    csv = tmp_path / "m.csv"
    result = CliRunner().invoke(_app(), ["similarity", *PAPER_FLAGS, str(saved), "--model-level", "--out", str(csv)])
    assert result.exit_code == 0, result.output
    lines = csv.read_text().splitlines()
    assert lines[0].split(",")[1:] == ["alpha", "beta"] and len(lines) == 3
    # alpha layers 1..2 -> {(0,1)..(0,4)}; beta adds (1, 0)
    assert float(lines[1].split(",")[2]) == 4 / 5  # the CSV, too, writes the float's repr


def test_cli_help_and_errors(tmp_path):
    result = CliRunner().invoke(_app(), ["similarity", "--help"])
    assert result.exit_code == 0 and "--model-level" in result.output and "--out" in result.output
    result = CliRunner().invoke(_app(), ["similarity", *PAPER_FLAGS, str(tmp_path)])
    assert isinstance(result.exception, ITDAError) and "no ITDA dictionaries" in str(result.exception)


def test_cli_defaults_and_bad_options(saved):
    # without flags: the default variant, named in the output; a bad choice is a one-line error
    result = CliRunner().invoke(_app(), ["similarity", str(saved / "alpha")])
    assert result.exit_code == 0, result.output
    assert JaccardOptions().label in result.output
    assert JaccardOptions().atoms == "evidence" and JaccardOptions().index == "raw"  # the CLI's literals
    bad = CliRunner().invoke(_app(), ["similarity", "--atoms", "some", str(saved / "alpha")])
    assert bad.exit_code != 0 and "atom choice" in str(bad.exception) and "\n" not in str(bad.exception)
