"""Dictionary diffs on the tiny store: counts that are the Jaccard index's, a partition of every dictionary's
atoms, matches by position within a model and by character span across tokenizers, token groups, and the
Jaccard index's refusals."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest

from itda_core.errors import ITDAError
from itda_core.similarity.diff import NOT_COUNTED, ONLY, SHARED, diff_dictionaries, token_group
from itda_core.similarity.jaccard import JaccardOptions, atom_set, jaccard, jaccard_by_span, shared_atoms
from itda_core.store.connection import StoreError, connect_readonly, connect_write, transaction
from itda_core.store.reader import load_dictionary
from tests.stores import build_tiny_store

OPTIONS = [JaccardOptions(), JaccardOptions("all", "raw", 0), JaccardOptions("evidence", "corrected", 0)]
PAIRS = [(("llama", 0), ("llama", 1)), (("llama", 1), ("llama", 2)), (("bert", 0), ("bert", 1)),
         (("llama", 1), ("bert", 1)), (("bert", 0), ("llama", 2))]  # fmt: skip


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    return build_tiny_store(tmp_path_factory.mktemp("diffstore"), atom_map=False)


def _ids(store, a, b):
    return store["ids"][a], store["ids"][b]


def _same_tokenizer(a, b) -> bool:
    return a[0] == b[0]


@pytest.mark.parametrize("options", OPTIONS, ids=lambda o: f"{o.atoms}-{o.index}-{o.min_atoms}")
@pytest.mark.parametrize("pair", PAIRS, ids=lambda p: f"{p[0][0]}{p[0][1]}-{p[1][0]}{p[1][1]}")
def test_counts_are_the_jaccard_index(store, pair, options):
    """|shared| / |A u B| of the diff is the library's Jaccard of the same pair under the same options (the
    same counts in one correctly rounded division, so equal bit for bit), and |A|, |B| are the atom sets'."""
    dict_a, dict_b = _ids(store, *pair)
    diff = diff_dictionaries(store["path"], dict_a, dict_b, options)
    a, b = load_dictionary(store["path"], dict_a), load_dictionary(store["path"], dict_b)
    expected = (jaccard if _same_tokenizer(*pair) else jaccard_by_span)(a, b, options)
    assert diff.method == ("keys" if _same_tokenizer(*pair) else "spans")
    assert diff.n_a == len(atom_set(a, options)) and diff.n_b == len(atom_set(b, options))
    union = len(diff.only_a) + len(diff.only_b) + diff.shared
    assert union == diff.n_a + diff.n_b - diff.shared
    if options.index == "raw":
        assert diff.shared / union == expected
    assert diff.jaccard == expected or (np.isnan(diff.jaccard) and np.isnan(expected))
    assert np.isfinite(diff.jaccard)  # every pair here has enough atoms for a value
    assert len(shared_atoms(a, b, atoms=options)) == diff.shared


@pytest.mark.parametrize("atoms", ["evidence", "all"])
@pytest.mark.parametrize("pair", PAIRS[2:4], ids=["bert-bert", "llama-bert"])
def test_every_atom_has_one_status(store, pair, atoms):
    """Every atom of A (and of B) is in exactly one of only / shared / not counted; only and shared are the
    atoms that count (the atom set's rows); shared atoms match one-to-one and both ways."""
    dict_a, dict_b = _ids(store, *pair)
    diff = diff_dictionaries(store["path"], dict_a, dict_b, JaccardOptions(atoms=atoms))
    for side, dict_id in (("a", dict_a), ("b", dict_b)):
        itda = load_dictionary(store["path"], dict_id)
        rows = diff.atoms[diff.atoms["side"] == side]
        assert rows["atom"].tolist() == list(range(len(itda)))
        only, shared, skipped = (set(diff.ids(side, s).tolist()) for s in (ONLY, SHARED, NOT_COUNTED))
        assert not (only & shared) and not (only & skipped) and not (shared & skipped)
        assert only | shared | skipped == set(range(len(itda)))
        assert only | shared == set(atom_set(itda, atoms).rows.tolist())
        if atoms == "evidence":
            assert skipped == set(np.flatnonzero(~itda.evidence.numpy()).tolist())
    a_rows = diff.atoms[(diff.atoms["side"] == "a") & (diff.atoms["status"] == SHARED)]
    b_rows = diff.atoms[diff.atoms["side"] == "b"].set_index("atom")
    assert len(set(a_rows["match"])) == len(a_rows) == len(diff.shared_b)
    assert (b_rows.loc[a_rows["match"], "match"].to_numpy() == a_rows["atom"].to_numpy()).all()
    assert (diff.atoms.loc[diff.atoms["status"] != SHARED, "match"] == -1).all()
    if atoms == "evidence" and pair[0][0] == "bert":  # BERT's initial atoms were each seen once: not counted
        assert len(diff.ids("a", NOT_COUNTED)) > 0


def test_across_tokenizers_atoms_match_by_span(store):
    """A Llama x BERT diff matches by character span: every shared pair ends at the same character of the same
    document (the span rule), positions need not agree; keys are refused with the tokenizer error."""
    dict_a, dict_b = _ids(store, ("llama", 1), ("bert", 1))
    diff = diff_dictionaries(store["path"], dict_a, dict_b)
    assert diff.method == "spans" and diff.shared > 0 and len(diff.only_a) and len(diff.only_b)
    a = diff.atoms[diff.atoms["side"] == "a"].set_index("atom")
    b = diff.atoms[diff.atoms["side"] == "b"].set_index("atom")
    pairs = a.loc[diff.shared_a]
    matched = b.loc[pairs["match"]]
    whole = (pairs["char_end"] > pairs["char_start"]).to_numpy() & (pairs["position"] > 0).to_numpy()
    assert (pairs["doc_id"].to_numpy() == matched["doc_id"].to_numpy()).all()
    assert (pairs["char_end"].to_numpy()[whole] == matched["char_end"].to_numpy()[whole]).all()
    assert (pairs["position"].to_numpy() != matched["position"].to_numpy()).any()  # BERT adds [CLS]
    with pytest.raises(ITDAError, match="different tokenizers"):
        diff_dictionaries(store["path"], dict_a, dict_b, method="keys")


def test_groups_by_source_token(store):
    """Groups are the atoms' token texts without surrounding whitespace; their counts add up to the lists and
    the token table's columns to |only A|, |shared|, |only B|."""
    dict_a, dict_b = _ids(store, ("llama", 1), ("bert", 1))
    diff = diff_dictionaries(store["path"], dict_a, dict_b)
    for side, status, ids in (("a", ONLY, diff.only_a), ("b", ONLY, diff.only_b), ("a", SHARED, diff.shared_a)):
        groups = diff.groups(side, status)
        assert groups["count"].sum() == len(ids)
        assert sorted(a for atoms in groups["atoms"] for a in atoms) == ids.tolist()
        assert groups["group"].is_unique and (groups["count"].diff().dropna() <= 0).all()
        rows = diff.atoms[diff.atoms["side"] == side].set_index("atom")
        for group, atoms in zip(groups["group"], groups["atoms"], strict=True):
            assert {token_group(t) for t in rows.loc[atoms, "token"]} == {group}
    table = diff.token_table()
    assert table["only_a"].sum() == len(diff.only_a) and table["only_b"].sum() == len(diff.only_b)
    assert table["shared"].sum() == diff.shared  # shared pairs by A's token text
    assert table["group"].is_unique


def test_token_group():
    assert token_group(" Paris") == "Paris" == token_group("Paris\n")
    assert token_group("\n") == "\n" and token_group(" ") == " " and token_group("") == ""


def test_a_dictionary_against_itself_and_from_a_connection(store):
    dict_id = store["ids"][("llama", 2)]
    diff = diff_dictionaries(store["path"], dict_id, dict_id)
    assert diff.jaccard == 1.0 and not len(diff.only_a) and not len(diff.only_b)
    assert (diff.shared_a == diff.shared_b).all()
    other = store["ids"][("llama", 1)]
    with connect_readonly(store["path"]) as con:
        from_con = diff_dictionaries(con, dict_id, other)
    from_path = diff_dictionaries(store["path"], dict_id, other)
    assert from_con.atoms.equals(from_path.atoms)


def test_a_missing_dictionary_is_refused(store):
    with pytest.raises(StoreError, match="no dictionary 999"):
        diff_dictionaries(store["path"], store["ids"][("llama", 0)], 999)


def test_incomparable_pairs_are_refused_with_the_jaccard_error(store, tmp_path):
    """Dictionaries trained on other documents of the corpus: the diff refuses with the one-line error the
    Jaccard index (and hence the similarity page) gives for that pair."""
    path = tmp_path / "other_docs.duckdb"
    shutil.copy(store["path"], path)
    bert = store["ids"][("bert", 1)]
    with connect_write(path) as con, transaction(con):
        config = json.loads(con.execute("SELECT config FROM dictionaries WHERE dict_id = ?", [bert]).fetchone()[0])
        config["documents_sha256"] = "0" * 64
        con.execute("UPDATE dictionaries SET config = ? WHERE dict_id = ?", [json.dumps(config), bert])
    llama = store["ids"][("llama", 1)]
    with pytest.raises(ITDAError) as refused:
        diff_dictionaries(path, llama, bert)
    with pytest.raises(ITDAError) as expected:
        jaccard_by_span(load_dictionary(path, llama), load_dictionary(path, bert))
    assert str(refused.value) == str(expected.value)
    assert "different documents" in str(refused.value) and "\n" not in str(refused.value)
