"""The queries the dashboard (and notebooks) run against a store's atoms. Each takes an open connection,
usually from :func:`itda_core.store.connect_readonly`, so that one page can run several on one connection.

Atoms here (one atom's row and page, vectors, search by source token, top contexts, quantile samples,
histograms, atoms shared across dictionaries); what a store holds (models, dictionaries, evaluations,
summary) is :mod:`itda_core.store.catalog` and context rendering :mod:`itda_core.store.contexts`, both
re-exported, so ``from itda_core.store import queries as Q`` reaches every query.
"""

from __future__ import annotations

from typing import Any

import duckdb
import numpy as np
import pandas as pd

from itda_core.store.catalog import (
    density_by_layer,
    dictionary_details,
    get_dictionary,
    has_table,
    list_dictionaries,
    list_models,
    store_summary,
    stored_similarities,
)
from itda_core.store.contexts import codes_at, dictionary_keys, documents_with_tokens, render_contexts
from itda_core.store.evaluations import evaluation_values
from itda_core.store.schema import INIT_COUNT_SQL, first_record, first_row

__all__ = [
    "atom_list",
    "atom_page_row",
    "atom_vectors",
    "atoms_brief",
    "atoms_by_token",
    "codes_at",
    "coefficient_histogram",
    "coefficient_scale",
    "density_by_layer",
    "dictionary_details",
    "dictionary_keys",
    "documents_with_tokens",
    "evaluation_values",
    "get_atom",
    "get_dictionary",
    "has_table",
    "list_dictionaries",
    "list_models",
    "quantile_hits",
    "quantile_samples",
    "render_contexts",
    "shared_atoms",
    "shared_provenance",
    "store_summary",
    "stored_similarities",
    "top_contexts",
    "top_hits",
]


def get_atom(
    con: duckdb.DuckDBPyConnection, dict_id: int, atom: int, *, window: int = 12, with_vector: bool = False
) -> dict[str, Any] | None:
    """One atom: provenance, source token, add-error, activity stats and its source context (the training
    document with the token marked); the unit vector too with ``with_vector``."""
    cols = "a.*" if with_vector else "a.* EXCLUDE (vector)"
    row = first_record(
        con,
        f"""
        SELECT {cols}, d.model_id, d.model_name, d.layer, d.corpus_id, doc.source AS doc_source,
               doc.split AS doc_split, s.n_active, s.density, s.mean_coef, s.min_coef, s.max_coef, s.mean_abs,
               s.n_negative
        FROM atoms a JOIN dictionaries d USING (dict_id)
        LEFT JOIN documents doc ON doc.corpus_id = d.corpus_id AND doc.doc_id = a.doc_id
        LEFT JOIN atom_stats s ON s.dict_id = a.dict_id AND s.atom = a.atom
        WHERE a.dict_id = ? AND a.atom = ?""",
        [dict_id, atom],
    )
    if row is None:
        return None
    if with_vector:
        row["vector"] = np.asarray(row["vector"], dtype=np.float32)
    ctx = render_contexts(
        con, dict_id, pd.DataFrame({"doc_id": [row["doc_id"]], "position": [row["position"]]}), window
    )
    row["source_context"] = ctx.iloc[0][["before", "token", "after", "tokens", "target_index"]].to_dict()
    return row


def atom_vectors(con: duckdb.DuckDBPyConnection, dict_id: int, atoms: list[int] | None = None) -> np.ndarray:
    """Unit vectors [n, d] of ``atoms`` (all atoms, in insertion order, when None)."""
    sql = f"SELECT vector FROM atoms WHERE dict_id = {int(dict_id)}"
    if atoms is not None:
        if not atoms:
            return np.zeros((0, 0), dtype=np.float32)
        sql += f" AND atom IN ({', '.join(str(int(a)) for a in atoms)})"
    table = con.sql(sql + " ORDER BY atom").to_arrow_table()
    if table.num_rows == 0:
        return np.zeros((0, 0), dtype=np.float32)
    flat = table.column("vector").combine_chunks().flatten().to_numpy(zero_copy_only=False)
    return np.asarray(flat, dtype=np.float32).reshape(table.num_rows, -1)


def atoms_by_token(
    con: duckdb.DuckDBPyConnection,
    text: str,
    *,
    exact: bool = False,
    model_id: str | None = None,
    dict_id: int | None = None,
    layer: int | None = None,
    limit: int = 200,
) -> pd.DataFrame:
    """Atoms whose source token's text contains ``text`` (case-insensitive), or with ``exact`` equals it
    (as is, or ignoring surrounding whitespace: "Paris" finds " Paris"), newest model first."""
    where, params = [], []
    if exact:
        where.append("(a.token_text = ? OR trim(a.token_text) = ?)")
        params += [text, text]
    else:
        where.append("contains(lower(a.token_text), lower(?))")
        params.append(text)
    if dict_id is not None:
        where.append("a.dict_id = ?")
        params.append(dict_id)
    if model_id is not None:
        where.append("d.model_id = ?")
        params.append(model_id)
    if layer is not None:
        where.append("d.layer = ?")
        params.append(layer)
    return con.execute(
        f"""
        SELECT a.dict_id, d.model_name, d.layer, a.atom, a.token_text, a.token_str, a.doc_id, a.position,
               a.add_error, s.density, s.max_coef
        FROM atoms a JOIN dictionaries d USING (dict_id)
        LEFT JOIN atom_stats s ON s.dict_id = a.dict_id AND s.atom = a.atom
        WHERE {" AND ".join(where)}
        ORDER BY d.model_name, d.layer, a.atom
        LIMIT {int(limit)}""",
        params,
    ).df()


def top_hits(con: duckdb.DuckDBPyConnection, dict_id: int, atom: int, limit: int = 20) -> pd.DataFrame:
    """The atom's highest-coefficient held-out tokens (rank, doc_id, position, coef), best first."""
    return con.execute(
        f"SELECT rank, doc_id, position, coef FROM atom_top_contexts WHERE dict_id = ? AND atom = ? "
        f"ORDER BY rank LIMIT {int(limit)}",
        [dict_id, atom],
    ).df()


def top_contexts(
    con: duckdb.DuckDBPyConnection, dict_id: int, atom: int, *, window: int = 8, limit: int = 20
) -> pd.DataFrame:
    """The atom's highest-coefficient held-out contexts: rank, doc_id, position, coef, rendered window."""
    return render_contexts(con, dict_id, top_hits(con, dict_id, atom, limit), window)


def quantile_hits(con: duckdb.DuckDBPyConnection, dict_id: int, atom: int) -> pd.DataFrame:
    """The atom's quantile samples (bin, q_lo, q_hi, bin_lo, bin_hi, bin_count, sample, doc_id, position, coef),
    highest bin first, largest coefficient first within a bin."""
    return con.execute(
        "SELECT bin, q_lo, q_hi, bin_lo, bin_hi, bin_count, sample, doc_id, position, coef "
        "FROM atom_quantiles "
        "WHERE dict_id = ? AND atom = ? ORDER BY bin DESC, coef DESC, doc_id, position",
        [dict_id, atom],
    ).df()


def quantile_samples(
    con: duckdb.DuckDBPyConnection, dict_id: int, atom: int, *, window: int = 8
) -> pd.DataFrame:
    """Samples from each coefficient quantile bin (bin, q_lo, q_hi, bin_lo, bin_hi, bin_count, coef, context),
    highest bin first."""
    return render_contexts(con, dict_id, quantile_hits(con, dict_id, atom), window)


def coefficient_histogram(con: duckdb.DuckDBPyConnection, dict_id: int, atom: int) -> pd.DataFrame:
    """The atom's signed coefficient histogram: non-empty bins with edges (lo, hi) and count."""
    return con.execute(
        "SELECT bin, lo, hi, count FROM atom_histograms WHERE dict_id = ? AND atom = ? ORDER BY bin",
        [dict_id, atom],
    ).df()


def coefficient_scale(con: duckdb.DuckDBPyConnection, dict_id: int, atom: int, q: float = 0.98) -> float | None:
    """The ``q`` quantile of the atom's |coefficient| over its stored held-out codes (None without codes): where
    a colour scale saturates, so that one extreme token (an attention sink) does not wash out the rest."""
    row = first_row(
        con, f"SELECT quantile_cont(abs(coef), {float(q)}) FROM codes WHERE dict_id = ? AND atom = ?", [dict_id, atom]
    )
    return None if row is None or row[0] is None else float(row[0])


_SHARED = """
    CASE WHEN d2.tokenizer_id = a.tokenizer_id AND o.position = a.position THEN 'same token'
         ELSE 'overlapping characters' END AS match"""
_SHARED_ON = """
    d2.corpus_id = a.corpus_id AND o.doc_id = a.doc_id
    AND ((d2.tokenizer_id = a.tokenizer_id AND o.position = a.position)
         OR (d2.tokenizer_id <> a.tokenizer_id
             AND o.char_start < a.char_end AND a.char_start < o.char_end))"""


def shared_provenance(con: duckdb.DuckDBPyConnection, dict_id: int, atom: int) -> pd.DataFrame:
    """Atoms of OTHER dictionaries (layers, models) taken from the same place: the same (corpus, doc_id,
    position) under the same tokenizer, or an overlapping character span of the same document otherwise."""
    return con.execute(
        f"""
        WITH a AS (
            SELECT d.corpus_id, d.tokenizer_id, x.doc_id, x.position, x.char_start, x.char_end
            FROM atoms x JOIN dictionaries d USING (dict_id) WHERE x.dict_id = ? AND x.atom = ?)
        SELECT o.dict_id, d2.model_id, d2.model_name, d2.layer, o.atom, o.token_text, o.doc_id, o.position,
               o.char_start, o.char_end, {_SHARED}
        FROM a, atoms o JOIN dictionaries d2 USING (dict_id)
        WHERE o.dict_id <> ? AND {_SHARED_ON}
        ORDER BY d2.model_name, d2.layer, o.atom""",
        [dict_id, atom, dict_id],
    ).df()


def shared_atoms(con: duckdb.DuckDBPyConnection, dict_a: int, dict_b: int) -> pd.DataFrame:
    """Pairs (atom_a, atom_b) of two dictionaries whose atoms come from the same source token (as in
    :func:`shared_provenance`), e.g. the activations two layers both kept."""
    return con.execute(
        f"""
        WITH a AS (
            SELECT x.atom, d.corpus_id, d.tokenizer_id, x.doc_id, x.position, x.char_start, x.char_end,
                   x.token_text
            FROM atoms x JOIN dictionaries d USING (dict_id) WHERE x.dict_id = ?)
        SELECT a.atom AS atom_a, o.atom AS atom_b, a.doc_id,
               a.position AS position_a, o.position AS position_b,
               a.token_text AS token_a, o.token_text AS token_b, {_SHARED}
        FROM a JOIN atoms o ON o.dict_id = ? AND o.doc_id = a.doc_id
        JOIN dictionaries d2 ON d2.dict_id = o.dict_id
        WHERE {_SHARED_ON}
        ORDER BY a.atom, o.atom""",
        [dict_a, dict_b],
    ).df()


def atom_page_row(con: duckdb.DuckDBPyConnection, dict_id: int, atom: int) -> dict[str, Any] | None:
    """What an atom page shows of one atom: provenance, source token, add-error, init count, its dictionary's
    model and layer, its source document (source, split, whole text) and activity stats; None when absent."""
    return first_record(
        con,
        f"""
        SELECT a.dict_id, a.atom, a.doc_id, a.position, a.token_id, a.token_str, a.token_text, a.char_start,
               a.char_end, a.add_error, {INIT_COUNT_SQL} AS init_count, d.model_id, d.model_name, d.layer,
               d.corpus_id, doc.source AS doc_source, doc.split AS doc_split, doc.text AS doc_text, s.n_active,
               s.density, s.mean_coef, s.min_coef, s.max_coef, s.mean_abs, s.n_negative
        FROM atoms a JOIN dictionaries d USING (dict_id)
        LEFT JOIN documents doc ON doc.corpus_id = d.corpus_id AND doc.doc_id = a.doc_id
        LEFT JOIN atom_stats s ON s.dict_id = a.dict_id AND s.atom = a.atom
        WHERE a.dict_id = ? AND a.atom = ?""",
        [dict_id, atom],
    )


def atom_list(con: duckdb.DuckDBPyConnection, dict_id: int) -> pd.DataFrame:
    """Every atom of a dictionary in insertion order: source token, document, position, add-error, init count
    and activity (density, tokens active on, largest and mean |coefficient|)."""
    return con.execute(
        "SELECT a.atom, a.token_text, a.token_str, a.doc_id, a.position, a.add_error, "
        f"{INIT_COUNT_SQL} AS init_count, s.density, s.n_active, s.max_coef, s.mean_abs "
        "FROM atoms a LEFT JOIN atom_stats s ON s.dict_id = a.dict_id AND s.atom = a.atom "
        "WHERE a.dict_id = ? ORDER BY a.atom",
        [dict_id],
    ).df()


def atoms_brief(con: duckdb.DuckDBPyConnection, dict_id: int, atoms: list[int]) -> pd.DataFrame:
    """Source token, document, position and density of a few atoms of one dictionary."""
    ids = ", ".join(str(int(a)) for a in atoms) or "NULL"
    return con.execute(
        "SELECT a.atom, a.token_text, a.token_str, a.doc_id, a.position, s.density "
        "FROM atoms a LEFT JOIN atom_stats s ON s.dict_id = a.dict_id AND s.atom = a.atom "
        f"WHERE a.dict_id = ? AND a.atom IN ({ids})",
        [dict_id],
    ).df()
