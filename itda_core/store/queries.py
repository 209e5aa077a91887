"""The queries the dashboard (and notebooks) run against a store. Each takes an open connection, usually
from :func:`itda_core.store.connect_readonly`, so that one page can run several on one connection.

Contexts are rendered from the stored tokens and document text: a context is the target token with
``window`` tokens each side, returned as ``before`` / ``token`` / ``after`` strings (slices of the
document text by character span) plus the list of the window's token texts and the target's index in it.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from typing import Any

import duckdb
import numpy as np
import pandas as pd

from itda_core.store.schema import SCHEMA_VERSION, first_row


def _records(
    con: duckdb.DuckDBPyConnection, sql: str, params: list[Any] | None = None
) -> list[dict[str, Any]]:
    """Rows of a query as dicts keyed by column name."""
    cur = con.execute(sql, params or [])
    names = [c[0] for c in cur.description]
    return [dict(zip(names, row, strict=True)) for row in cur.fetchall()]


def _one(con: duckdb.DuckDBPyConnection, sql: str, params: list[Any] | None = None) -> dict[str, Any] | None:
    """The first row of a query as a dict, or None."""
    rows = _records(con, sql, params)
    return rows[0] if rows else None


# ---- models and dictionaries -----------------------------------------------------------------------------


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
    row = _one(con, "SELECT * FROM dictionaries WHERE dict_id = ?", [dict_id])
    if row is None:
        return None
    row["config"] = json.loads(row["config"])
    row["stats"] = json.loads(row["stats"]) if row["stats"] else {}
    row["index"] = _one(con, "SELECT * FROM index_runs WHERE dict_id = ?", [dict_id])
    return row


# ---- rendering contexts ----------------------------------------------------------------------------------


def _dict_keys(con: duckdb.DuckDBPyConnection, dict_id: int) -> tuple[str, str, int] | None:
    """(corpus_id, tokenizer_id, seq_len) of a dictionary: what its positions refer to."""
    row = first_row(
        con, "SELECT corpus_id, tokenizer_id, seq_len FROM dictionaries WHERE dict_id = ?", [dict_id]
    )
    return None if row is None else (row[0], row[1], int(row[2]))


def documents_with_tokens(
    con: duckdb.DuckDBPyConnection, corpus_id: str, tokenizer_id: str, seq_len: int, doc_ids: Iterable[int]
) -> tuple[dict[int, str], dict[int, dict[int, tuple[str, int, int]]]]:
    """The texts of ``doc_ids`` and, per document, ``{position: (token_str, char_start, char_end)}`` under one
    tokenisation: what every context window is cut from."""
    ids = sorted({int(d) for d in doc_ids})
    if not ids:
        return {}, {}
    in_list = ", ".join(str(d) for d in ids)
    texts = dict(
        con.execute(
            f"SELECT doc_id, text FROM documents WHERE corpus_id = ? AND doc_id BETWEEN {ids[0]} AND "
            f"{ids[-1]} AND doc_id IN ({in_list})",
            [corpus_id],
        ).fetchall()
    )
    rows = con.execute(
        f"SELECT doc_id, position, token_str, char_start, char_end FROM tokens WHERE tokenizer_id = ? AND "
        f"seq_len = ? AND corpus_id = ? AND doc_id BETWEEN {ids[0]} AND {ids[-1]} "
        f"AND doc_id IN ({in_list}) ORDER BY doc_id, position",
        [tokenizer_id, seq_len, corpus_id],
    ).fetchall()
    by_doc: dict[int, dict[int, tuple[str, int, int]]] = {}
    for d, p, s, cs, ce in rows:
        by_doc.setdefault(int(d), {})[int(p)] = (s, int(cs), int(ce))
    return {int(d): t for d, t in texts.items()}, by_doc


def render_contexts(
    con: duckdb.DuckDBPyConnection, dict_id: int, hits: pd.DataFrame, window: int = 8
) -> pd.DataFrame:
    """``hits`` (with doc_id, position) plus before / token / after / tokens / target_index columns."""
    out = hits.copy()
    for col in ("before", "token", "after"):
        out[col] = pd.Series([""] * len(out), dtype=object, index=out.index)
    out["tokens"] = pd.Series([[] for _ in range(len(out))], dtype=object, index=out.index)
    out["target_index"] = -1
    keys = _dict_keys(con, dict_id)
    if keys is None or out.empty:
        return out
    texts, by_doc = documents_with_tokens(con, *keys, out["doc_id"])
    for i, (doc_id, pos) in enumerate(zip(out["doc_id"], out["position"], strict=True)):
        doc_id, pos = int(doc_id), int(pos)
        text, tokens = texts.get(doc_id, ""), by_doc.get(doc_id, {})
        if pos not in tokens:
            continue
        lo, hi = max(0, pos - window), pos + window
        window_pos = [p for p in range(lo, hi + 1) if p in tokens]
        pieces = [_piece(text, *tokens[p]) for p in window_pos]
        _, cs, ce = tokens[pos]
        first = min((tokens[p][1] for p in window_pos if p < pos and tokens[p][2] > tokens[p][1]), default=cs)
        last = max((tokens[p][2] for p in window_pos if p > pos and tokens[p][2] > tokens[p][1]), default=ce)
        if ce <= cs:  # a special token covers no text: cut the text around it at its neighbours
            cs = max(
                (tokens[p][2] for p in window_pos if p < pos and tokens[p][2] > tokens[p][1]), default=first
            )
            ce = min(
                (tokens[p][1] for p in window_pos if p > pos and tokens[p][2] > tokens[p][1]), default=last
            )
            ce = max(ce, cs)
        idx = out.index[i]
        out.at[idx, "before"] = text[first:cs] if cs >= first else ""
        out.at[idx, "token"] = pieces[window_pos.index(pos)]
        out.at[idx, "after"] = text[ce:last] if last >= ce else ""
        out.at[idx, "tokens"] = pieces
        out.at[idx, "target_index"] = window_pos.index(pos)
    return out


def _piece(text: str, token_str: str, start: int, end: int) -> str:
    """A token's text in its document (special tokens: their own string)."""
    return text[start:end] if end > start else token_str


# ---- atoms -----------------------------------------------------------------------------------------------


def get_atom(
    con: duckdb.DuckDBPyConnection, dict_id: int, atom: int, *, window: int = 12, with_vector: bool = False
) -> dict[str, Any] | None:
    """One atom: provenance, source token, add-error, activity stats and its source context (the training
    document with the token marked); the unit vector too with ``with_vector``."""
    cols = "a.*" if with_vector else "a.* EXCLUDE (vector)"
    row = _one(
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


def top_contexts(
    con: duckdb.DuckDBPyConnection, dict_id: int, atom: int, *, window: int = 8, limit: int = 20
) -> pd.DataFrame:
    """The atom's highest-coefficient held-out contexts: rank, doc_id, position, coef, rendered window."""
    hits = con.execute(
        f"SELECT rank, doc_id, position, coef FROM atom_top_contexts WHERE dict_id = ? AND atom = ? "
        f"ORDER BY rank LIMIT {int(limit)}",
        [dict_id, atom],
    ).df()
    return render_contexts(con, dict_id, hits, window)


def quantile_samples(
    con: duckdb.DuckDBPyConnection, dict_id: int, atom: int, *, window: int = 8
) -> pd.DataFrame:
    """Samples from each coefficient quantile bin (bin, q_lo, q_hi, bin_lo, bin_hi, bin_count, coef, context),
    highest bin first."""
    hits = con.execute(
        "SELECT bin, q_lo, q_hi, bin_lo, bin_hi, bin_count, sample, doc_id, position, coef "
        "FROM atom_quantiles "
        "WHERE dict_id = ? AND atom = ? ORDER BY bin DESC, coef DESC, doc_id, position",
        [dict_id, atom],
    ).df()
    return render_contexts(con, dict_id, hits, window)


def coefficient_histogram(con: duckdb.DuckDBPyConnection, dict_id: int, atom: int) -> pd.DataFrame:
    """The atom's signed coefficient histogram: non-empty bins with edges (lo, hi) and count."""
    return con.execute(
        "SELECT bin, lo, hi, count FROM atom_histograms WHERE dict_id = ? AND atom = ? ORDER BY bin",
        [dict_id, atom],
    ).df()


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


def density_by_layer(con: duckdb.DuckDBPyConnection, model_id: str | None = None) -> pd.DataFrame:
    """Per indexed dictionary: atoms, atoms active on held-out text, and density quartiles."""
    where = "WHERE d.model_id = ?" if model_id is not None else ""
    return con.execute(
        f"""
        SELECT d.dict_id, d.model_name, d.layer, d.n_atoms,
               COUNT(*) FILTER (WHERE s.n_active > 0) AS active_atoms,
               AVG(s.density) AS mean_density, quantile_cont(s.density, 0.5) AS median_density,
               quantile_cont(s.density, 0.9) AS p90_density, MAX(s.density) AS max_density
        FROM dictionaries d JOIN atom_stats s USING (dict_id)
        {where}
        GROUP BY ALL ORDER BY d.model_name, d.layer""",
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
        "corpora": _records(
            con, "SELECT corpus_id, name, n_documents, held_out_fraction, split_seed FROM corpora"
        ),
        "models": list_models(con).to_dict("records"),
        "counts": counts,
    }
