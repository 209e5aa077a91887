"""What a store holds: its models, dictionaries (with their options, evaluations and index), stored baseline
similarities, density by layer and the counts ``itda store-info`` prints. Each function takes an open
connection (usually from :func:`itda_core.store.connect_readonly`), so that a page can run several on one.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

import duckdb
import pandas as pd

from itda_core.store.schema import SCHEMA_VERSION, first_record, records, table_names


def list_models(con: duckdb.DuckDBPyConnection) -> pd.DataFrame:
    """Every model in the store with its number of dictionaries (and how many are indexed)."""
    return con.execute("""
        SELECT m.model_id, m.name, m.family, m.architecture, m.n_layers, m.d_model, m.tokenizer_id,
               COUNT(d.dict_id) AS n_dictionaries,
               COUNT(d.dict_id) FILTER (WHERE d.dict_id IN (SELECT dict_id FROM index_runs)) AS n_indexed,
               COALESCE(SUM(d.n_atoms), 0) AS n_atoms
        FROM models m LEFT JOIN dictionaries d USING (model_id)
        GROUP BY ALL ORDER BY MIN(m.added), m.name""").df()


def list_dictionaries(
    con: duckdb.DuckDBPyConnection, model_id: str | None = None, model_name: str | None = None
) -> pd.DataFrame:
    """All dictionaries (of one model when ``model_id`` or ``model_name`` is given), by model and layer."""
    where, params = [], []
    if model_id is not None:
        where.append("d.model_id = ?")
        params.append(model_id)
    if model_name is not None:
        where.append("d.model_name = ?")
        params.append(model_name)
    clause = ("WHERE " + " AND ".join(where)) if where else ""
    return con.execute(
        f"""
        SELECT d.dict_id, d.model_id, d.model_name, d.layer, d.site, d.corpus_id, d.train_corpus_id, d.k,
               d.threshold, d.n_atoms, d.d_model, d.tokens_seen, d.seq_len, d.written,
               r.dict_id IS NOT NULL AS indexed, r.n_tokens AS index_tokens
        FROM dictionaries d LEFT JOIN index_runs r USING (dict_id)
        {clause}
        ORDER BY d.model_name, d.layer, d.dict_id""",
        params,
    ).df()


def get_dictionary(con: duckdb.DuckDBPyConnection, dict_id: int) -> dict[str, Any] | None:
    """One dictionary's row, with ``config`` and ``stats`` parsed and its index run (or None)."""
    row = first_record(con, "SELECT * FROM dictionaries WHERE dict_id = ?", [dict_id])
    if row is None:
        return None
    row["config"] = json.loads(row["config"])
    row["stats"] = json.loads(row["stats"]) if row["stats"] else {}
    row["index"] = first_record(con, "SELECT * FROM index_runs WHERE dict_id = ?", [dict_id])
    return row


def dictionary_details(con: duckdb.DuckDBPyConnection) -> pd.DataFrame:
    """Per dictionary what :func:`list_dictionaries` leaves out: its option and data keys, tokenizer, the precision
    its activations were computed and cached in (NULL: not recorded), and its model's family, depth, architecture
    and when the model entered the store."""
    return con.execute(
        "SELECT d.dict_id, d.options_key, d.data_key, d.tokenizer_id, "
        "NULLIF(json_extract_string(d.config, '$.activation_dtype'), '') AS activation_dtype, "
        "NULLIF(json_extract_string(d.config, '$.cache_dtype'), '') AS cache_dtype, "
        "m.family, m.n_layers, m.architecture, m.added AS model_added "
        "FROM dictionaries d LEFT JOIN models m USING (model_id)"
    ).df()


def dictionary_ids(con: duckdb.DuckDBPyConnection, among: Sequence[int] | None = None) -> list[int]:
    """The stored dict_ids in order (only those of ``among`` when given): what a job over every dictionary
    walks through."""
    ids = [int(r[0]) for r in con.execute("SELECT dict_id FROM dictionaries ORDER BY dict_id").fetchall()]
    if among is None:
        return ids
    wanted = {int(d) for d in among}
    return [d for d in ids if d in wanted]


def dictionary_layers(con: duckdb.DuckDBPyConnection) -> list[dict[str, Any]]:
    """Every dictionary (dict_id, model_id, model_name, layer, corpus_id, seq_len, k, n_atoms, written) with
    its model's depth ``n_layers`` (None without a model row), by model id and layer: what choosing
    dictionaries by model and layer spec needs."""
    return records(
        con,
        "SELECT d.dict_id, d.model_id, d.model_name, d.layer, d.corpus_id, d.seq_len, d.k, d.n_atoms, "
        "d.written, m.n_layers FROM dictionaries d LEFT JOIN models m USING (model_id) "
        "ORDER BY d.model_id, d.layer, d.dict_id",
    )


def has_table(con: duckdb.DuckDBPyConnection, name: str) -> bool:
    """Whether the store has table ``name`` (e.g. ``atom_umap``, created by the first stored atom map)."""
    return name in table_names(con)


def stored_similarities(con: duckdb.DuckDBPyConnection) -> pd.DataFrame:
    """The baseline measures (CKA, SVCCA, relative, R^2...) stored between dictionaries: dict_a, dict_b, method,
    value (Jaccard is computed from the atoms, not read from here)."""
    return con.execute(
        "SELECT dict_a, dict_b, method, value FROM similarities WHERE lower(method) <> 'jaccard'"
    ).df()


def density_by_layer(con: duckdb.DuckDBPyConnection, model_id: str | None = None) -> pd.DataFrame:
    """Per indexed dictionary: atoms, atoms active on held-out text, and density quartiles (both quantiles from
    one sort per dictionary, and atom_stats aggregated before the join: at 100 k atoms a quarter faster)."""
    where = "WHERE dict_id IN (SELECT dict_id FROM dictionaries WHERE model_id = ?)" if model_id is not None else ""
    return con.execute(
        f"""
        WITH s AS (
            SELECT dict_id, COUNT(*) FILTER (WHERE n_active > 0) AS active_atoms, AVG(density) AS mean_density,
                   quantile_cont(density, [0.5, 0.9]) AS q, MAX(density) AS max_density
            FROM atom_stats {where} GROUP BY dict_id)
        SELECT d.dict_id, d.model_name, d.layer, d.n_atoms, s.active_atoms, s.mean_density,
               s.q[1] AS median_density, s.q[2] AS p90_density, s.max_density
        FROM dictionaries d JOIN s USING (dict_id)
        ORDER BY d.model_name, d.layer""",
        [model_id] if model_id is not None else [],
    ).df()


def store_summary(con: duckdb.DuckDBPyConnection) -> dict[str, Any]:
    """Counts for ``itda store-info``: schema version, corpora, models and dictionaries, table sizes."""
    counts = {
        t: int(con.execute(f"SELECT COUNT(*) FROM {t}").fetchall()[0][0])
        for t in ("documents", "tokens", "dictionaries", "atoms", "codes", "index_runs")
    }
    return {
        "schema_version": SCHEMA_VERSION,
        "corpora": records(
            con, "SELECT corpus_id, name, n_documents, held_out_fraction, split_seed FROM corpora"
        ),
        "models": list_models(con).to_dict("records"),
        "counts": counts,
    }
