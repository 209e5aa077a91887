"""The DuckDB store: schema round trip, replacement, version checks, indexing and every query function,
on a small store built from tiny random models (a Llama with a byte-level BPE and a BERT with WordPiece)."""

from __future__ import annotations

import dataclasses
import json

import duckdb
import numpy as np
import pytest
import torch

from itda_core.dictionary import ITDA
from itda_core.jobs.index import IndexConfig, index_model, pending, sparse_codes
from itda_core.store import queries as Q
from itda_core.store.connection import StoreError, connect_readonly, connect_write, is_lock_error, transaction
from itda_core.store.identity import dictionary_data_key, options_key
from itda_core.store.reader import find_dictionary, load_dictionary
from itda_core.store.schema import SCHEMA_VERSION, TABLES, SchemaMismatch
from itda_core.store.writer import DictionaryExists, store_dictionary, write_dictionary
from itda_core.trainer import TrainConfig, Trainer
from tests.tiny import tiny_corpus, tiny_model
from tests.tolerance import forward_tol, mp_tol, unit_roundoff

HELD_OUT = 0.25


@pytest.fixture(scope="module")
def corpus():
    return tiny_corpus(n_copies=4)


@pytest.fixture(scope="module")
def llama():
    return tiny_model("llama", n_layers=3)


@pytest.fixture(scope="module")
def bert():
    return tiny_model("bert", n_layers=2)


def _train(model, corpus, layers, **options):
    train, _ = corpus.split(HELD_OUT)
    options = {"k": 4, "max_tokens": None, "progress": False, **options}
    config = TrainConfig(layers=layers, **options)
    return Trainer(model, train, config).run()


@pytest.fixture(scope="module")
def built(tmp_path_factory, corpus, llama, bert):
    """A store with 3 Llama layers and 2 BERT layers, all indexed."""
    path = tmp_path_factory.mktemp("store") / "itda.duckdb"
    dicts = {"llama": _train(llama, corpus, [0, 1, 2]), "bert": _train(bert, corpus, [0, 1])}
    ids = {}
    for name, model in (("llama", llama), ("bert", bert)):
        for layer, itda in dicts[name].items():
            ids[(name, layer)] = write_dictionary(path, itda, model, corpus)
    cfg = IndexConfig(max_tokens=None, top_n=5, n_quantiles=4, per_quantile=3, hist_bins=8, progress=False)
    reports = [index_model(path, llama, cfg), index_model(path, bert, cfg)]
    return {"path": path, "dicts": dicts, "ids": ids, "reports": reports}


# ---- schema and writing ------------------------------------------------------------------------------


def test_schema_has_every_table(built):
    with connect_readonly(built["path"]) as con:
        names = {r[0] for r in con.execute("SELECT table_name FROM information_schema.tables").fetchall()}
        version = con.execute("SELECT value FROM meta WHERE key = 'schema_version'").fetchall()[0][0]
    assert set(TABLES) <= names
    assert int(version) == SCHEMA_VERSION


def test_round_trip_is_exact(built, llama):
    itda = built["dicts"]["llama"][1]
    back = load_dictionary(built["path"], built["ids"][("llama", 1)])
    assert isinstance(back, ITDA) and len(back) == len(itda)
    torch.testing.assert_close(back.atoms, itda.atoms.float(), rtol=0, atol=0)
    torch.testing.assert_close(back.add_error, itda.add_error, rtol=0, atol=0, equal_nan=True)
    for col in ("doc_id", "position", "token_id", "char_start", "char_end"):
        assert torch.equal(getattr(back.provenance, col), getattr(itda.provenance, col)), col
    assert back.provenance.token_str == itda.provenance.token_str
    assert dataclasses.asdict(back.config) == json.loads(itda.config.to_json())
    back.check_model(llama)
    # the restored dictionary encodes exactly like the original
    x = torch.randn(7, llama.d_model)
    i1, c1 = itda.encode(x)
    i2, c2 = back.encode(x)
    # two k-step MP runs over the same atoms: each coefficient within mp_tol(d, k) |x| of the exact one
    scale = x.norm(dim=1, keepdim=True)
    assert torch.equal(i1, i2)
    torch.testing.assert_close(c1 / scale, c2 / scale, rtol=0, atol=2 * mp_tol(llama.d_model, itda.config.k))


def test_documents_tokens_and_split_are_stored_once(built, corpus, llama, bert):
    _train_part, held = corpus.split(HELD_OUT)
    with connect_readonly(built["path"]) as con:
        docs = con.execute("SELECT doc_id, split, text FROM documents ORDER BY doc_id").fetchall()
        tokenizations = con.execute("SELECT tokenizer_id, n_tokens FROM tokenizations").fetchall()
        n_tokens = con.execute("SELECT COUNT(*) FROM tokens").fetchall()[0][0]
        max_pos = con.execute("SELECT MAX(position) FROM tokens").fetchall()[0][0]
        models = con.execute("SELECT name, n_layers, d_model FROM models ORDER BY name").fetchall()
    assert len(docs) == len(corpus)  # once, although five dictionaries were written
    assert {d for d, s, _ in docs if s == "held_out"} == {d.doc_id for d in held.documents}
    assert [t for _, _, t in docs] == corpus.texts
    assert len(tokenizations) == 2 and sum(n for _, n in tokenizations) == n_tokens
    assert max_pos < 128
    assert models == [("tiny-bert", 2, 32), ("tiny-llama", 3, 32)]


def test_atoms_carry_source_token_text(built, corpus):
    with connect_readonly(built["path"]) as con:
        rows = con.execute(
            "SELECT doc_id, char_start, char_end, token_str, token_text FROM atoms WHERE dict_id = ?",
            [built["ids"][("llama", 0)]],
        ).fetchall()
    for doc_id, s, e, token_str, text in rows:
        expected = corpus.by_id(doc_id).text[s:e] if e > s else token_str
        assert text == expected


def test_rewriting_is_refused_unless_replace_then_keeps_id(tmp_path, corpus, llama):
    path = tmp_path / "s.duckdb"
    first = _train(llama, corpus, [1])[1]
    dict_id = write_dictionary(path, first, llama, corpus)
    index_model(path, llama, IndexConfig(progress=False))
    smaller = first.crop(10)
    smaller.config.stats = {}
    assert options_key(smaller.config) == options_key(first.config)
    with pytest.raises(DictionaryExists) as err:  # the same options and data: never replaced silently
        write_dictionary(path, smaller, llama, corpus)
    message = str(err.value)
    assert "\n" not in message and f"dictionary {dict_id} (" in message and "indexed" in message
    assert "--replace" in message
    with connect_readonly(path) as con:  # refused: the indexed dictionary is untouched
        assert con.execute("SELECT COUNT(*) FROM atoms WHERE dict_id = ?", [dict_id]).fetchall()[0][0] == len(first)
        assert con.execute("SELECT COUNT(*) FROM index_runs").fetchall()[0][0] == 1
    result = store_dictionary(path, smaller, llama, corpus, replace=True)
    assert result.dict_id == dict_id
    assert result.replaced is not None and result.replaced.n_atoms == len(first) and result.replaced.indexed
    assert f"replaced dictionary {dict_id} (" in result.summary() and "itda index" in result.summary()
    other = _train(llama, corpus, [1], k=3)[1]  # other options: a second dictionary
    other_id = write_dictionary(path, other, llama, corpus)
    assert other_id != dict_id
    with connect_readonly(path) as con:
        assert con.execute("SELECT COUNT(*) FROM atoms WHERE dict_id = ?", [dict_id]).fetchall()[0][0] == 10
        assert (
            con.execute("SELECT n_atoms FROM dictionaries WHERE dict_id = ?", [dict_id]).fetchall()[0][0]
            == 10
        )
        # the old index described other atoms: it is gone, so the dictionary shows up as pending again
        assert con.execute("SELECT COUNT(*) FROM index_runs").fetchall()[0][0] == 0
        assert con.execute("SELECT COUNT(*) FROM atom_stats").fetchall()[0][0] == 0
    assert {r["dict_id"] for r in pending(path)} == {dict_id, other_id}


def test_another_token_budget_is_kept_beside(tmp_path, corpus, llama):
    path = tmp_path / "s.duckdb"
    full = _train(llama, corpus, [1])[1]
    dict_id = write_dictionary(path, full, llama, corpus)
    index_model(path, llama, IndexConfig(progress=False))
    budget = _train(llama, corpus, [1], max_tokens=40)[1]  # the same options, fewer tokens
    assert options_key(budget.config) == options_key(full.config)
    assert budget.config.tokens_seen < full.config.tokens_seen
    result = store_dictionary(path, budget, llama, corpus)
    assert result.dict_id != dict_id and result.replaced is None
    with connect_readonly(path) as con:
        rows = con.execute("SELECT dict_id, n_atoms, tokens_seen FROM dictionaries ORDER BY dict_id").fetchall()
        assert con.execute("SELECT dict_id FROM index_runs").fetchall() == [(dict_id,)]  # the index stays
        assert find_dictionary(con, full.config) == dict_id and find_dictionary(con, budget.config) == result.dict_id
    assert rows == [(dict_id, len(full), full.config.tokens_seen),
                    (result.dict_id, len(budget), budget.config.tokens_seen)]  # fmt: skip


def test_v2_store_migrates_to_data_keys(tmp_path, corpus, llama):
    path = tmp_path / "s.duckdb"
    itda = _train(llama, corpus, [1])[1]
    dict_id = write_dictionary(path, itda, llama, corpus)
    con = duckdb.connect(str(path))  # as an itda of schema version 2 wrote it: no data_key
    con.execute("ALTER TABLE dictionaries DROP COLUMN data_key")
    con.execute("UPDATE meta SET value = '2' WHERE key = 'schema_version'")
    con.close()
    with pytest.raises(SchemaMismatch, match="--upgrade"), connect_readonly(path):
        pass
    with pytest.raises(DictionaryExists):  # a writer migrates, then finds the same dictionary
        write_dictionary(path, itda, llama, corpus)
    with connect_readonly(path) as con:
        version = con.execute("SELECT value FROM meta WHERE key = 'schema_version'").fetchall()[0][0]
        assert find_dictionary(con, itda.config) == dict_id
        assert con.execute("SELECT data_key FROM dictionaries").fetchall() == [(dictionary_data_key(itda.config),)]
    assert int(version) == SCHEMA_VERSION


def test_wrong_corpus_is_refused(tmp_path, corpus, llama):
    itda = _train(llama, corpus, [0])[0]
    train, _ = corpus.split(HELD_OUT)
    with pytest.raises(StoreError, match="full corpus"):
        write_dictionary(tmp_path / "s.duckdb", itda, llama, train)
    other = tiny_corpus(n_copies=2)
    with pytest.raises(StoreError, match="full corpus"):
        write_dictionary(
            tmp_path / "s.duckdb", itda, llama, other.__class__("x", other.documents, "other-v1")
        )


def test_other_split_of_same_corpus_is_refused(tmp_path, corpus, llama):
    path = tmp_path / "s.duckdb"
    write_dictionary(path, _train(llama, corpus, [0])[0], llama, corpus)
    train, _ = corpus.split(0.5)
    itda = Trainer(llama, train, TrainConfig(layers=[0], k=4, max_tokens=None, progress=False)).run()[0]
    with pytest.raises(StoreError, match=r"split with held-out fraction 0\.25"):
        write_dictionary(path, itda, llama, corpus)


def test_failed_write_leaves_store_unchanged(tmp_path, corpus, llama, monkeypatch):
    import itda_core.store.writer as writer

    path = tmp_path / "s.duckdb"
    dicts = _train(llama, corpus, [0, 1])
    write_dictionary(path, dicts[0], llama, corpus)

    def boom(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(writer, "delete_dictionary", boom)
    monkeypatch.setattr(
        writer, "find_dictionary", lambda con, config: (_ for _ in ()).throw(KeyboardInterrupt)
    )
    with pytest.raises(KeyboardInterrupt):
        write_dictionary(path, dicts[1], llama, corpus)
    with connect_readonly(path) as con:
        assert con.execute("SELECT COUNT(*) FROM dictionaries").fetchall()[0][0] == 1
        assert con.execute("SELECT COUNT(DISTINCT dict_id) FROM atoms").fetchall()[0][0] == 1


# ---- opening ---------------------------------------------------------------------------------------------


def _set_version(path, value: str) -> None:
    con = duckdb.connect(str(path))
    con.execute("UPDATE meta SET value = ? WHERE key = 'schema_version'", [value])
    con.close()


def test_schema_version_mismatch_says_what_to_do(tmp_path):
    path = tmp_path / "s.duckdb"
    with connect_write(path):
        pass
    _set_version(path, "0")
    for opener in (connect_readonly, connect_write):
        with pytest.raises(SchemaMismatch) as err, opener(path):
            pass
        message = str(err.value)
        assert (
            "\n" not in message and "schema version 0" in message and "itda demo-build --rebuild" in message
        )
    _set_version(path, str(SCHEMA_VERSION + 1))
    with pytest.raises(SchemaMismatch, match="newer itda"), connect_readonly(path):
        pass


def test_missing_store_and_foreign_file(tmp_path):
    with pytest.raises(StoreError, match="itda demo-build"), connect_readonly(tmp_path / "none.duckdb"):
        pass
    other = tmp_path / "other.duckdb"
    con = duckdb.connect(str(other))
    con.execute("CREATE TABLE t (x INTEGER)")
    con.close()
    with pytest.raises(SchemaMismatch, match="not an ITDA store"), connect_write(other):
        pass


def test_transaction_rolls_back_on_error(tmp_path):
    path = tmp_path / "s.duckdb"
    with pytest.raises(RuntimeError), connect_write(path) as con, transaction(con):
        con.execute("INSERT INTO meta VALUES ('x', 'y')")
        raise RuntimeError("crash")
    with connect_readonly(path) as con:
        assert con.execute("SELECT COUNT(*) FROM meta WHERE key = 'x'").fetchall() == [(0,)]


def test_lock_error_detection():
    assert is_lock_error(duckdb.IOException('IO Error: Could not set lock on file "x": Conflicting lock'))
    assert not is_lock_error(duckdb.IOException("IO Error: No such file"))
    assert not is_lock_error(ValueError("Could not set lock"))


# ---- indexing --------------------------------------------------------------------------------------------


def test_sparse_codes_sum_repeated_atoms():
    idx = torch.tensor([[3, 1, 3], [2, 2, 2]])
    coef = torch.tensor([[1.0, 0.5, 0.25], [1.0, -1.0, 0.0]])
    rows, atoms, sums = sparse_codes(idx, coef, n_atoms=5)
    got = sorted(zip(rows.tolist(), atoms.tolist(), sums.tolist(), strict=True))
    assert got == [(0, 1, 0.5), (0, 3, 1.25)]  # row 1 sums to zero: not active


def test_index_summaries_are_consistent(built):
    path = built["path"]
    assert all(not r.skipped for r in built["reports"])
    with connect_readonly(path) as con:
        runs = con.execute("SELECT dict_id, n_tokens, n_documents FROM index_runs").fetchall()
        assert len(runs) == 5
        n_held_llama = con.execute(
            "SELECT n_tokens FROM index_runs WHERE dict_id = ?", [built["ids"][("llama", 0)]]
        ).fetchall()[0][0]
        # every atom has a stats row; density = active tokens / held-out tokens, from the codes table
        check = con.execute(
            """
            SELECT s.dict_id, s.atom, s.n_active, s.density, r.n_tokens,
                   (SELECT COUNT(*) FROM codes c WHERE c.dict_id = s.dict_id AND c.atom = s.atom)
                       AS from_codes
            FROM atom_stats s JOIN index_runs r USING (dict_id)"""
        ).df()
        n_atoms = con.execute("SELECT SUM(n_atoms) FROM dictionaries").fetchall()[0][0]
        dup = con.execute(
            "SELECT COUNT(*) FROM (SELECT dict_id, doc_id, position, atom FROM codes GROUP BY ALL "
            "HAVING COUNT(*) > 1)"
        ).fetchall()[0][0]
        top = con.execute(
            "SELECT dict_id, atom, rank, coef FROM atom_top_contexts ORDER BY dict_id, atom, rank"
        ).df()
        held_tokens = con.execute(
            "SELECT COUNT(*) FROM tokens t JOIN documents d USING (corpus_id, doc_id) "
            "WHERE d.split = 'held_out' "
            "AND t.tokenizer_id = (SELECT tokenizer_id FROM models WHERE name = 'tiny-llama')"
        ).fetchall()[0][0]
    assert len(check) == n_atoms
    assert (check["n_active"] == check["from_codes"]).all()
    # n_active / n_tokens of exact counts, one correctly rounded division on either side: the same double
    assert (check["density"] == check["n_active"] / check["n_tokens"]).all()
    assert dup == 0
    assert n_held_llama == held_tokens  # max_tokens=None: every held-out token
    assert (top.groupby(["dict_id", "atom"])["rank"].max() <= 5).all()
    assert (top.groupby(["dict_id", "atom"])["coef"].apply(lambda c: c.is_monotonic_decreasing)).all()


def test_codes_match_a_fresh_encoding(built, llama, corpus):
    """The stored codes are MP(k) of the held-out activations, with repeated atoms summed."""
    from itda_core.extraction import extract

    dict_id = built["ids"][("llama", 2)]
    itda = built["dicts"]["llama"][2]
    _, held = corpus.split(HELD_OUT)
    batch = next(extract(llama, held.documents[:2], [2], batch_size=2, progress=False))
    idx, coef = itda.encode(batch.acts[2].float(), itda.config.k)
    rows, atoms, sums = sparse_codes(idx, coef, len(itda))
    doc = batch.provenance.doc_id.numpy()[rows]
    pos = batch.provenance.position.numpy()[rows]
    with connect_readonly(built["path"]) as con:
        stored = con.execute(
            "SELECT doc_id, position, atom, coef FROM codes WHERE dict_id = ? AND doc_id IN (?, ?)",
            [dict_id, int(held.documents[0].doc_id), int(held.documents[1].doc_id)],
        ).df()
    want = {(int(d), int(p), int(a)): float(c) for d, p, a, c in zip(doc, pos, atoms, sums, strict=True)}
    got = {(int(r.doc_id), int(r.position), int(r.atom)): float(r.coef) for r in stored.itertuples()}
    assert want.keys() == got.keys()
    # `itda index` ran its own batches: its activations are two float32 forwards through 3 blocks apart
    # (tolerance.forward_tol), which moves every MP coefficient by at most as much (residuals are projections),
    # plus each run's own MP rounding; a stored code sums at most k coefficients of one atom
    cfg, k = llama.model.config, itda.config.k
    per_step = 2 * forward_tol(3, llama.d_model, cfg.intermediate_size, itda.config.seq_len) + 2 * mp_tol(
        llama.d_model, k)
    norms = batch.acts[2].float().norm(dim=1).numpy()[rows]
    bound = {(int(d), int(p), int(a)): k * per_step * float(n) for d, p, a, n in zip(doc, pos, atoms, norms,
                                                                                      strict=True)}
    worst = max(abs(want[key] - got[key]) / bound[key] for key in want)
    assert worst <= 1.0, f"stored codes {worst:.2f} x the rounding bound from a fresh encoding"


def test_reindex_is_idempotent(built, llama):
    path = built["path"]
    with connect_readonly(path) as con:
        before = con.execute("SELECT COUNT(*) FROM atom_quantiles").fetchall()[0][0]
    assert index_model(path, llama, IndexConfig(progress=False)).indexed == []  # nothing pending
    cfg = IndexConfig(max_tokens=None, top_n=5, n_quantiles=4, per_quantile=3, hist_bins=8, progress=False)
    again = index_model(path, llama, cfg, dict_ids=[built["ids"][("llama", 0)]])
    assert again.indexed == [built["ids"][("llama", 0)]]
    with connect_readonly(path) as con:
        assert con.execute("SELECT COUNT(*) FROM atom_quantiles").fetchall()[0][0] == before
        assert con.execute("SELECT COUNT(*) FROM index_runs").fetchall()[0][0] == 5


# ---- queries -------------------------------------------------------------------------------------------


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
