"""What keeps the store's reads fast at scale (bench/bench_store_scale.py, docs/store.md "At scale"): the index
tables are stored in (dict_id, atom) order, so DuckDB's zone maps read one or two row groups for an atom of a
large ``codes`` table; and the queries rewritten for speed return what the plain computation gives."""

from __future__ import annotations

import re
import shutil

import duckdb
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch

from itda_core.store import queries as Q
from itda_core.store.connection import connect_readonly
from itda_core.store.held_out import IndexRun, write_index
from itda_core.store.schema import INDEX_TABLES, table_names
from tests.tolerance import mean_tol, unit_roundoff

ROW_GROUP = 122_880  # DuckDB's rows per row group
ORDERED = ("atoms", *(t for t in INDEX_TABLES if t != "index_runs"))


def _out_of_order(con: duckdb.DuckDBPyConnection, table: str) -> tuple[int, int, int]:
    """(rows whose atom is below the previous row's within one dictionary, runs of dict_id, dictionaries), in
    storage (rowid) order: (0, n, n) when every dictionary's rows are contiguous and sorted by atom."""
    back, runs = con.execute(
        f"""SELECT COUNT(*) FILTER (WHERE dict_id = prev_dict AND atom < prev_atom),
                   COUNT(*) FILTER (WHERE prev_dict IS NULL OR dict_id <> prev_dict)
            FROM (SELECT dict_id, atom, lag(dict_id) OVER (ORDER BY rowid) AS prev_dict,
                         lag(atom) OVER (ORDER BY rowid) AS prev_atom FROM {table})"""
    ).fetchall()[0]
    n = con.execute(f"SELECT COUNT(DISTINCT dict_id) FROM {table}").fetchall()[0][0]
    return int(back), int(runs), int(n)


def test_index_tables_are_stored_in_dict_atom_order(built):
    """Every per-atom table of an indexed store is clustered by (dict_id, atom): what the zone maps need."""
    with connect_readonly(built["path"]) as con:
        for table in ORDERED:
            back, runs, n = _out_of_order(con, table)
            assert n > 1, table
            assert (back, runs) == (0, n), table


@pytest.fixture(scope="module")
def big_codes(built, tmp_path_factory):
    """A copy of the built store whose Llama layer-1 dictionary is re-indexed with 300,000 random codes through
    the real write path (three row groups and more), and those codes as a frame."""
    folder = tmp_path_factory.mktemp("scale")
    path = folder / "itda.duckdb"
    shutil.copy(built["path"], path)
    dict_id = built["ids"][("llama", 1)]
    with connect_readonly(path) as con:
        n_atoms, written = con.execute(
            "SELECT n_atoms, written FROM dictionaries WHERE dict_id = ?", [dict_id]
        ).fetchall()[0]
    rng = np.random.default_rng(0)
    n = 3 * ROW_GROUP - 68_640  # 300,000
    coef = rng.lognormal(0.0, 0.7, n).astype(np.float32) * rng.choice(np.array([-1, 1], np.float32), n)
    codes = pa.table({
        "atom": rng.integers(0, n_atoms, n).astype(np.int32), "doc_id": rng.integers(0, 500, n).astype(np.int32),
        "position": rng.integers(0, 64, n).astype(np.int32), "coef": coef,
    })
    shard = folder / "codes.parquet"
    pq.write_table(codes, shard)
    run = IndexRun(dict_id, "c", 500, n, 4, 5, 4, 3, 8, True, 0.0, written)
    assert write_index(path, run, shard) == ""
    return path, dict_id, codes.to_pandas()


def _row_groups(con: duckdb.DuckDBPyConnection, sql: str, params: list) -> tuple[int, int]:
    """(row groups scanned, row groups in the table) of the query's table scan, from EXPLAIN ANALYZE."""
    plan = con.execute("EXPLAIN ANALYZE " + sql, params).fetchall()[0][1]
    found = re.search(r"Row Groups Scanned:\s*([\d,]+)\s*/\s*([\d,]+)", plan)
    assert found, plan
    return int(found[1].replace(",", "")), int(found[2].replace(",", ""))


def test_an_atom_of_a_large_codes_table_reads_one_or_two_row_groups(big_codes):
    """After a re-index appends 300 k codes, one atom's codes come from at most two of the table's row groups,
    and the index tables stay clustered."""
    path, dict_id, codes = big_codes
    atom = int(codes["atom"].value_counts().index[0])
    with connect_readonly(path) as con:
        for table in ORDERED:
            back, runs, n = _out_of_order(con, table)
            assert (back, runs) == (0, n), table
        scanned, total = _row_groups(
            con, "SELECT quantile_cont(abs(coef), 0.98) FROM codes WHERE dict_id = ? AND atom = ?", [dict_id, atom]
        )
    assert total >= 3
    assert scanned <= 2


def test_codes_reads_match_the_codes_written(big_codes):
    """coefficient_scale and codes_at over the large table give numpy's figures of the codes written."""
    path, dict_id, codes = big_codes
    atom = int(codes["atom"].value_counts().index[0])
    mine = codes[codes["atom"] == atom]
    docs = sorted(set(mine["doc_id"].tolist()))[:25]
    expected = mine[mine["doc_id"].isin(docs)].groupby(["doc_id", "position"])["coef"].sum()
    with connect_readonly(path) as con:
        scale = Q.coefficient_scale(con, dict_id, atom, 0.98)
        at = Q.codes_at(con, dict_id, atom, docs)
    values = np.abs(mine["coef"].to_numpy(np.float64))
    assert scale == pytest.approx(np.quantile(values, 0.98), abs=4 * unit_roundoff(torch.float32) * values.max())
    assert set(at) == {(int(d), int(p)) for d, p in expected.index}
    worst = int(mine.groupby(["doc_id", "position"]).size().max())  # the most codes summed into one
    tol = mean_tol(worst, torch.float32, worst * values.max())  # a float32 sum of that many terms
    for (d, p), value in expected.items():
        assert at[(int(d), int(p))] == pytest.approx(value, abs=tol)


def test_density_by_layer_is_the_quartiles_of_atom_stats(built):
    """density_by_layer (one sort per dictionary) gives numpy's count, mean, median, p90 and max per dictionary,
    for the whole store and for one model."""
    with connect_readonly(built["path"]) as con:
        stats = con.execute("SELECT dict_id, n_active, density FROM atom_stats").df()
        dicts = con.execute("SELECT dict_id, model_id, model_name, layer, n_atoms FROM dictionaries").df()
        whole = Q.density_by_layer(con)
        model = str(dicts["model_id"].iloc[0])
        one = Q.density_by_layer(con, model)
    assert sorted(whole["dict_id"]) == sorted(set(stats["dict_id"]))
    assert sorted(one["dict_id"]) == sorted(dicts.loc[dicts["model_id"] == model, "dict_id"])
    assert list(whole.columns) == ["dict_id", "model_name", "layer", "n_atoms", "active_atoms", "mean_density",
                                   "median_density", "p90_density", "max_density"]
    names = dict(zip(dicts["dict_id"], dicts["model_name"], strict=True))
    layers = dict(zip(dicts["dict_id"], dicts["layer"], strict=True))
    assert list(zip(whole["model_name"], whole["layer"], strict=True)) == sorted(
        (names[d], layers[d]) for d in whole["dict_id"])
    for frame in (whole, one):
        for row in frame.itertuples():
            x = stats.loc[stats["dict_id"] == row.dict_id]
            density = x["density"].to_numpy(np.float64)
            tol = mean_tol(len(x), torch.float64, max(density.max(), 1e-300))
            assert row.active_atoms == int((x["n_active"] > 0).sum())
            assert row.mean_density == pytest.approx(density.mean(), abs=tol)
            assert row.median_density == pytest.approx(np.quantile(density, 0.5), abs=tol)
            assert row.p90_density == pytest.approx(np.quantile(density, 0.9), abs=tol)
            assert row.max_density == density.max()


def test_table_names_are_information_schemas_tables(built):
    """table_names (duckdb_tables(), run by every open) lists what information_schema lists, temp tables too."""
    with connect_readonly(built["path"]) as con:
        con.execute("CREATE TEMP TABLE _scratch (a INTEGER)")
        plain = {r[0] for r in con.execute(
            "SELECT table_name FROM information_schema.tables WHERE table_schema = 'main'").fetchall()}
        assert table_names(con) == plain
        assert {"codes", "atoms", "_scratch"} <= plain


def test_atom_map_snippets_are_the_source_texts_around_each_atom(built):
    """describe cuts the before / after snippets in SQL: exactly Python's slices of the stored document text."""
    from itda_core.store.atom_maps import CONTEXT_CHARS, describe

    n = CONTEXT_CHARS
    with connect_readonly(built["path"]) as con:
        atoms = con.execute(
            "SELECT a.dict_id, a.atom, a.doc_id, a.char_start, a.char_end, doc.text FROM atoms a "
            "JOIN dictionaries d USING (dict_id) JOIN documents doc ON doc.corpus_id = d.corpus_id "
            "AND doc.doc_id = a.doc_id ORDER BY a.dict_id, a.atom"
        ).df()
        coords = atoms[["dict_id", "atom"]].assign(x=0.0, y=1.0)
        frame = describe(con, coords)
    assert len(frame) == len(atoms) > 0
    assert list(frame.columns) == ["dict_id", "atom", "x", "y", "model", "layer", "token_text", "density", "before",
                                   "after"]
    for row, src in zip(frame.itertuples(), atoms.itertuples(), strict=True):
        assert row.before == src.text[max(0, src.char_start - n) : src.char_start]
        assert row.after == src.text[src.char_end : src.char_end + n]
