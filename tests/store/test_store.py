"""The DuckDB store: schema round trip, replacement, version checks and indexing, on a small store built from
tiny random models (a Llama with a byte-level BPE and a BERT with WordPiece; see conftest.py). The query
functions: test_queries.py."""

from __future__ import annotations

import dataclasses
import json

import duckdb
import pytest
import torch

from itda_core.dictionary import ITDA
from itda_core.jobs.index import IndexConfig, index_model, pending, sparse_codes
from itda_core.store.connection import StoreError, connect_readonly, connect_write, is_lock_error, transaction
from itda_core.store.identity import dictionary_data_key, options_key
from itda_core.store.reader import find_dictionary, load_dictionary
from itda_core.store.schema import SCHEMA_VERSION, TABLES, SchemaMismatch
from itda_core.store.writer import DictionaryExists, store_dictionary, write_dictionary
from itda_core.trainer import TrainConfig, Trainer
from tests.store.helpers import HELD_OUT, train_layers
from tests.tiny import tiny_corpus
from tests.tolerance import forward_tol, mp_tol

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
    first = train_layers(llama, corpus, [1])[1]
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
    other = train_layers(llama, corpus, [1], k=3)[1]  # other options: a second dictionary
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
    full = train_layers(llama, corpus, [1])[1]
    dict_id = write_dictionary(path, full, llama, corpus)
    index_model(path, llama, IndexConfig(progress=False))
    budget = train_layers(llama, corpus, [1], max_tokens=40)[1]  # the same options, fewer tokens
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
    itda = train_layers(llama, corpus, [1])[1]
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
    itda = train_layers(llama, corpus, [0])[0]
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
    write_dictionary(path, train_layers(llama, corpus, [0])[0], llama, corpus)
    train, _ = corpus.split(0.5)
    itda = Trainer(llama, train, TrainConfig(layers=[0], k=4, max_tokens=None, progress=False)).run()[0]
    with pytest.raises(StoreError, match=r"split with held-out fraction 0\.25"):
        write_dictionary(path, itda, llama, corpus)


def test_failed_write_leaves_store_unchanged(tmp_path, corpus, llama, monkeypatch):
    import itda_core.store.writer as writer

    path = tmp_path / "s.duckdb"
    dicts = train_layers(llama, corpus, [0, 1])
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
