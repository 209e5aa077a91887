"""What the exports to the field's tools read from a store (:mod:`itda_core.export`): one dictionary with its
model and index run, every atom's source and activity, the top-context and quantile hits of all atoms at
once, the raw codes and the held-out documents' token ids, each in one query per table.

The per-atom queries of :mod:`itda_core.store.queries` serve one page; an export walks every atom of a
dictionary, so these read whole tables of one dictionary (rows arrive sorted by atom, as stored).
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import duckdb
import numpy as np
import pandas as pd

from itda_core.store.schema import first_record


def export_source(con: duckdb.DuckDBPyConnection, dict_id: int) -> dict[str, Any] | None:
    """One dictionary (what its positions refer to, its size and site) with its model's architecture and
    family and its index run (``indexed`` False and the run's columns None without one); None when absent."""
    return first_record(
        con,
        """
        SELECT d.dict_id, d.model_id, d.model_name, d.layer, d.site, d.corpus_id, d.tokenizer_id, d.seq_len,
               d.skip_special_tokens, d.k, d.n_atoms, d.d_model, m.architecture, m.family,
               r.dict_id IS NOT NULL AS indexed, r.n_tokens AS index_tokens, r.n_documents AS index_documents,
               r.top_n AS index_top_n, r.codes_kept
        FROM dictionaries d LEFT JOIN models m USING (model_id) LEFT JOIN index_runs r USING (dict_id)
        WHERE d.dict_id = ?""",
        [dict_id],
    )


def atom_rows(con: duckdb.DuckDBPyConnection, dict_id: int) -> pd.DataFrame:
    """Every atom in insertion order: its source (doc_id, position, token text, document source) and its
    held-out activity (n_active, density, max_coef; 0 / NaN without an index)."""
    return con.execute(
        """
        SELECT a.atom, a.doc_id, a.position, a.token_text, doc.source AS doc_source,
               COALESCE(s.n_active, 0) AS n_active, COALESCE(s.density, 0.0) AS density, s.max_coef
        FROM atoms a JOIN dictionaries d USING (dict_id)
        LEFT JOIN documents doc ON doc.corpus_id = d.corpus_id AND doc.doc_id = a.doc_id
        LEFT JOIN atom_stats s ON s.dict_id = a.dict_id AND s.atom = a.atom
        WHERE a.dict_id = ? ORDER BY a.atom""",
        [dict_id],
    ).df()


def top_hit_rows(con: duckdb.DuckDBPyConnection, dict_id: int, limit: int) -> pd.DataFrame:
    """The ``limit`` best top contexts of every atom (atom, rank, doc_id, position, coef), by atom and rank."""
    return con.execute(
        "SELECT atom, rank, doc_id, position, coef FROM atom_top_contexts WHERE dict_id = ? AND rank <= ? "
        "ORDER BY atom, rank",
        [dict_id, int(limit)],
    ).df()


def quantile_rows(con: duckdb.DuckDBPyConnection, dict_id: int) -> pd.DataFrame:
    """Every atom's quantile samples (atom, bin, bin_lo, bin_hi, bin_count, doc_id, position, coef): by atom,
    highest bin first, largest coefficient first within a bin."""
    return con.execute(
        "SELECT atom, bin, bin_lo, bin_hi, bin_count, doc_id, position, coef FROM atom_quantiles "
        "WHERE dict_id = ? ORDER BY atom, bin DESC, coef DESC, doc_id, position",
        [dict_id],
    ).df()


def histogram_rows(con: duckdb.DuckDBPyConnection, dict_id: int) -> pd.DataFrame:
    """Every atom's non-empty signed-histogram bins (atom, bin, lo, hi, count), by atom and bin."""
    return con.execute(
        "SELECT atom, bin, lo, hi, count FROM atom_histograms WHERE dict_id = ? ORDER BY atom, bin", [dict_id]
    ).df()


def _ids(values: Iterable[int]) -> str:
    """A SQL list of integers (cast, so nothing but digits reaches the query)."""
    return ", ".join(str(int(v)) for v in sorted(set(values))) or "NULL"


def code_arrays(
    con: duckdb.DuckDBPyConnection, dict_id: int, doc_ids: Iterable[int] | None = None
) -> dict[str, np.ndarray]:
    """The dictionary's stored sparse codes (of ``doc_ids`` only, when given) as numpy columns doc_id,
    position, atom (int64) and coef (float32), sorted by (atom, doc_id, position); empty without codes."""
    where = "" if doc_ids is None else f" AND doc_id IN ({_ids(doc_ids)})"
    table = con.sql(
        f"SELECT doc_id, position, atom, coef FROM codes WHERE dict_id = ?{where} ORDER BY atom, doc_id, position",
        params=[int(dict_id)],
    ).to_arrow_table()
    out = {c: table.column(c).to_numpy().astype(np.int64) for c in ("doc_id", "position", "atom")}
    out["coef"] = table.column("coef").to_numpy().astype(np.float32)
    return out


def token_arrays(
    con: duckdb.DuckDBPyConnection, corpus_id: str, tokenizer_id: str, seq_len: int, doc_ids: Iterable[int]
) -> dict[str, np.ndarray]:
    """The stored tokens of ``doc_ids`` under one tokenisation as numpy columns doc_id, position, token_id
    (int64) and special (bool), sorted by (doc_id, position)."""
    table = con.sql(
        f"SELECT doc_id, position, token_id, special FROM tokens WHERE tokenizer_id = ? AND seq_len = ? "
        f"AND corpus_id = ? AND doc_id IN ({_ids(doc_ids)}) ORDER BY doc_id, position",
        params=[tokenizer_id, int(seq_len), corpus_id],
    ).to_arrow_table()
    out = {c: table.column(c).to_numpy().astype(np.int64) for c in ("doc_id", "position", "token_id")}
    out["special"] = table.column("special").to_numpy(zero_copy_only=False).astype(bool)
    return out
