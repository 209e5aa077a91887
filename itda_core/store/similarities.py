"""The ``similarities`` table and what comparing stored dictionaries reads: each dictionary with its model's
name and source, a stored corpus's documents, and rows replaced in one transaction (computing Jaccard and the
baselines is the job's part, :mod:`itda_core.jobs.similarity`).

A row is ``(dict_a, dict_b, method, value, details JSON, created)``; a pair and method stored in either order
is one result, so writing it again replaces both orders.
"""

from __future__ import annotations

from pathlib import Path

import duckdb
import pandas as pd

from itda_core.store.connection import connect_write, transaction


def similarity_targets(con: duckdb.DuckDBPyConnection) -> pd.DataFrame:
    """Every dictionary (dict_id, model_id, layer, corpus_id, tokenizer_id, seq_len, skip_special_tokens) with
    its model's ``model_name`` and ``source`` (to load it for the baselines), by dict_id."""
    return con.execute(
        "SELECT d.dict_id, d.model_id, d.layer, d.corpus_id, d.tokenizer_id, d.seq_len, d.skip_special_tokens, "
        "m.name AS model_name, m.source FROM dictionaries d LEFT JOIN models m USING (model_id) ORDER BY d.dict_id"
    ).df()


def corpus_documents(con: duckdb.DuckDBPyConnection, corpus_id: str) -> pd.DataFrame:
    """Every stored document of ``corpus_id`` (doc_id, text, source, split), by doc_id."""
    sql = "SELECT doc_id, text, source, split FROM documents WHERE corpus_id = ? ORDER BY doc_id"
    return con.execute(sql, [corpus_id]).df()


def replace_similarities(store: str | Path, frame: pd.DataFrame) -> None:
    """Write ``frame`` (dict_a, dict_b, method, value, details as JSON text) in one transaction, first deleting
    the stored rows of the same pair (in either order) and method; created is now()."""
    with connect_write(store) as con, transaction(con):
        con.register("_sim_in", frame)
        con.execute(  # the same pair in either order: symmetric ones are stored once, R^2 both ways
            "DELETE FROM similarities WHERE EXISTS (SELECT 1 FROM _sim_in n WHERE n.method = similarities.method "
            "AND ((n.dict_a = similarities.dict_a AND n.dict_b = similarities.dict_b) OR "
            "(n.dict_a = similarities.dict_b AND n.dict_b = similarities.dict_a)))"
        )
        con.execute("INSERT INTO similarities SELECT dict_a, dict_b, method, value, CAST(details AS JSON), now() "
                    "FROM _sim_in")
        con.unregister("_sim_in")


__all__ = ["corpus_documents", "replace_similarities", "similarity_targets"]
