"""The store's query functions (models, dictionaries, atoms with their source context, vectors, search by
token, top contexts, quantile samples and histograms, shared provenance across layers and tokenizers, density
and summary) on the indexed store of tiny models of conftest.py (``built``)."""

from __future__ import annotations

import numpy as np
import torch

from itda_core.store import queries as Q
from itda_core.store.connection import connect_readonly
from itda_core.store.schema import SCHEMA_VERSION
from tests.store.helpers import HELD_OUT
from tests.tolerance import unit_roundoff


def _active_atom(con, dict_id: int) -> int:
    """An atom with the most held-out activity."""
    return int(
        con.execute(
            "SELECT atom FROM atom_stats WHERE dict_id = ? ORDER BY n_active DESC, atom LIMIT 1", [dict_id]
        ).fetchall()[0][0]
    )


def test_list_models_and_dictionaries(built):
    with connect_readonly(built["path"]) as con:
        models = Q.list_models(con)
        dicts = Q.list_dictionaries(con)
        llama_dicts = Q.list_dictionaries(con, model_id="tiny-llama@seed0")
        by_name = Q.list_dictionaries(con, model_name="tiny-bert")
        one = Q.get_dictionary(con, built["ids"][("bert", 1)])
        none = Q.get_dictionary(con, 999)
    assert set(models["name"]) == {"tiny-llama", "tiny-bert"}
    assert models.set_index("name").loc["tiny-llama", "n_dictionaries"] == 3
    assert models.set_index("name").loc["tiny-llama", "n_indexed"] == 3
    assert len(dicts) == 5 and dicts["indexed"].all()
    assert llama_dicts["layer"].tolist() == [0, 1, 2]
    assert by_name["layer"].tolist() == [0, 1]
    assert one["layer"] == 1 and one["config"]["model_name"] == "tiny-bert" and one["index"]["n_tokens"] > 0
    assert none is None


def test_get_atom_with_source_context(built, corpus):
    dict_id = built["ids"][("llama", 1)]
    itda = built["dicts"]["llama"][1]
    with connect_readonly(built["path"]) as con:
        atom = Q.get_atom(con, dict_id, 7, with_vector=True)
        missing = Q.get_atom(con, dict_id, 10_000)
    assert missing is None
    assert atom["doc_id"] == int(itda.provenance.doc_id[7]) and atom["position"] == int(
        itda.provenance.position[7]
    )
    assert atom["doc_split"] == "train" and atom["model_name"] == "tiny-llama" and atom["layer"] == 1
    assert np.array_equal(atom["vector"], itda.atoms[7].numpy())  # stored as FLOAT[]: the float32 bits back
    ctx = atom["source_context"]
    text = corpus.by_id(atom["doc_id"]).text
    assert ctx["token"] == atom["token_text"]
    assert ctx["before"] + ctx["token"] + ctx["after"] in text or ctx["token"].startswith("<")
    assert ctx["tokens"][ctx["target_index"]] == atom["token_text"]


def test_atom_vectors(built):
    dict_id = built["ids"][("bert", 0)]
    itda = built["dicts"]["bert"][0]
    with connect_readonly(built["path"]) as con:
        all_vectors = Q.atom_vectors(con, dict_id)
        some = Q.atom_vectors(con, dict_id, [2, 0])
    assert np.array_equal(all_vectors, itda.atoms.numpy())  # FLOAT[] round trip: exact
    assert np.array_equal(some, itda.atoms[[0, 2]].numpy())


def test_atoms_by_token(built):
    with connect_readonly(built["path"]) as con:
        sub = Q.atoms_by_token(con, "PARIS")
        exact = Q.atoms_by_token(con, "Paris", exact=True)
        exact_space = Q.atoms_by_token(con, " Paris", exact=True)
        in_layer = Q.atoms_by_token(con, "paris", layer=2, model_id="tiny-llama@seed0")
        in_dict = Q.atoms_by_token(con, "paris", dict_id=built["ids"][("bert", 1)])
        nothing = Q.atoms_by_token(con, "zzzz-not-there")
        percent = Q.atoms_by_token(con, "%")
    assert len(sub) > 0 and sub["token_text"].str.lower().str.contains("paris").all()
    assert (
        len(exact) > 0
        and (exact["token_text"].str.strip() == "Paris").all() | (exact["token_text"] == "Paris").all()
    )
    assert set(exact_space["token_text"]) <= {" Paris"}
    assert set(in_layer["layer"]) == {2} and set(in_layer["model_name"]) == {"tiny-llama"}
    assert (
        set(in_dict["dict_id"]) == {built["ids"][("bert", 1)]} and len(in_dict) > 0
    )  # BERT lowercases: "paris"
    assert nothing.empty and percent.empty  # no LIKE wildcards


def test_top_contexts(built, corpus):
    dict_id = built["ids"][("llama", 0)]
    with connect_readonly(built["path"]) as con:
        atom = _active_atom(con, dict_id)
        top = Q.top_contexts(con, dict_id, atom, window=3)
        top2 = Q.top_contexts(con, dict_id, atom, window=3, limit=2)
        held = {r[0] for r in con.execute("SELECT doc_id FROM documents WHERE split = 'held_out'").fetchall()}
    assert 0 < len(top) <= 5 and len(top2) == min(2, len(top))
    assert top["rank"].tolist() == list(range(1, len(top) + 1))
    assert top["coef"].is_monotonic_decreasing
    assert set(top["doc_id"]) <= held  # contexts come from held-out text
    for row in top.itertuples():
        assert len(row.tokens) <= 7 and row.tokens[row.target_index] == row.token
        text = corpus.by_id(row.doc_id).text
        assert (row.before + row.token + row.after) in text or row.token.startswith("<")


def test_quantile_samples_and_histogram(built):
    dict_id = built["ids"][("llama", 1)]
    with connect_readonly(built["path"]) as con:
        atom = _active_atom(con, dict_id)
        q = Q.quantile_samples(con, dict_id, atom)
        hist = Q.coefficient_histogram(con, dict_id, atom)
        stats = con.execute(
            "SELECT n_active, min_coef, max_coef FROM atom_stats WHERE dict_id = ? AND atom = ?",
            [dict_id, atom],
        ).fetchall()[0]
        codes = con.execute("SELECT coef FROM codes WHERE dict_id = ? AND atom = ?", [dict_id, atom]).df()
    assert len(q) > 0 and q["bin"].is_monotonic_decreasing
    assert ((q["coef"] >= q["bin_lo"]) & (q["coef"] <= q["bin_hi"])).all()
    assert (q.groupby("bin").size() <= 3).all()
    assert q.drop_duplicates("bin")["bin_count"].sum() == stats[0] == len(codes)
    assert hist["count"].sum() == stats[0]
    # the top edge is (bins) * max / (bins) in DOUBLE of the FLOAT maximum: two roundings at most
    assert hist["lo"].min() <= stats[1]
    assert hist["hi"].max() >= stats[2] - 2 * unit_roundoff(torch.float64) * abs(stats[2])
    assert "token" in q.columns and "before" in q.columns


def test_shared_provenance_across_layers_and_tokenizers(built):
    llama0 = built["ids"][("llama", 0)]
    with connect_readonly(built["path"]) as con:
        # an atom of layer 0 whose source token is also an atom of layer 1 and of BERT
        row = con.execute(
            """
            SELECT a.atom FROM atoms a
            JOIN atoms b ON b.dict_id = ? AND b.doc_id = a.doc_id AND b.position = a.position
            WHERE a.dict_id = ? AND a.char_end > a.char_start ORDER BY a.atom LIMIT 1""",
            [built["ids"][("llama", 1)], llama0],
        ).fetchall()
        atom = int(row[0][0])
        shared = Q.shared_provenance(con, llama0, atom)
        src = Q.get_atom(con, llama0, atom)
    assert llama0 not in set(shared["dict_id"])
    same = shared[shared["match"] == "same token"]
    assert built["ids"][("llama", 1)] in set(same["dict_id"])
    assert (same["position"] == src["position"]).all() and (same["doc_id"] == src["doc_id"]).all()
    overlap = shared[shared["match"] == "overlapping characters"]
    assert set(overlap["model_name"]) <= {"tiny-bert"}
    for r in overlap.itertuples():
        assert r.doc_id == src["doc_id"] and r.char_start < src["char_end"] and src["char_start"] < r.char_end


def test_shared_atoms_between_layers(built):
    a, b = built["ids"][("llama", 0)], built["ids"][("llama", 1)]
    with connect_readonly(built["path"]) as con:
        pairs = Q.shared_atoms(con, a, b)
        cross = Q.shared_atoms(con, a, built["ids"][("bert", 0)])
        expected = con.execute(
            "SELECT COUNT(*) FROM atoms x JOIN atoms y ON x.doc_id = y.doc_id AND x.position = y.position "
            "WHERE x.dict_id = ? AND y.dict_id = ?",
            [a, b],
        ).fetchall()[0][0]
    assert len(pairs) == expected > 0
    assert (pairs["position_a"] == pairs["position_b"]).all() and (pairs["match"] == "same token").all()
    assert len(cross) > 0 and (cross["match"] == "overlapping characters").all()


def test_density_by_layer_and_summary(built):
    with connect_readonly(built["path"]) as con:
        dens = Q.density_by_layer(con)
        dens_llama = Q.density_by_layer(con, "tiny-llama@seed0")
        summary = Q.store_summary(con)
    assert len(dens) == 5 and len(dens_llama) == 3
    assert ((dens["mean_density"] > 0) & (dens["max_density"] <= 1)).all()
    assert summary["schema_version"] == SCHEMA_VERSION
    assert summary["counts"]["dictionaries"] == 5 and summary["counts"]["codes"] > 0
    assert summary["corpora"][0]["held_out_fraction"] == HELD_OUT
