"""The held-out index tables (written by ``itda index``): which dictionaries have no index yet, the held-out
documents to encode, and one dictionary's summaries written from its sparse codes in ONE transaction.

The summaries are computed by DuckDB from a Parquet file of codes with the window functions of
:mod:`itda_core.store.quantiles`, so they are exact and the SQL tested on known distributions is the SQL
that runs. Encoding the codes (a model, MP) is the job's part: :mod:`itda_core.jobs.index`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from itda_core.corpus import Document
from itda_core.store.connection import connect_readonly, connect_write, transaction
from itda_core.store.quantiles import histogram_sql, quantile_sql, top_sql
from itda_core.store.schema import INDEX_TABLES, first_row


def pending(store: str | Path, model_id: str | None = None, reindex: bool = False) -> list[dict[str, Any]]:
    """Dictionaries (as dicts of columns) that have no index yet (all of them with ``reindex``)."""
    with connect_readonly(store) as con:
        sql = (
            "SELECT d.dict_id, d.model_id, d.model_name, d.layer, d.corpus_id, d.seq_len,"
            " d.skip_special_tokens,"
            " d.k, d.n_atoms, d.written FROM dictionaries d"
        )
        where, params = [], []
        if not reindex:
            where.append("d.dict_id NOT IN (SELECT dict_id FROM index_runs)")
        if model_id is not None:
            where.append("d.model_id = ?")
            params.append(model_id)
        if where:
            sql += " WHERE " + " AND ".join(where)
        cur = con.execute(sql + " ORDER BY d.model_id, d.layer, d.dict_id", params)
        names = [c[0] for c in cur.description]
        return [dict(zip(names, row, strict=True)) for row in cur.fetchall()]


def held_out_documents(store: str | Path, corpus_id: str) -> list[Document]:
    """The corpus's held-out documents as stored, by doc_id."""
    with connect_readonly(store) as con:
        rows = con.execute(
            "SELECT doc_id, text, source FROM documents WHERE corpus_id = ? AND split = 'held_out' "
            "ORDER BY doc_id",
            [corpus_id],
        ).fetchall()
    return [Document(int(d), t, s) for d, t, s in rows]


@dataclass(frozen=True)
class IndexRun:
    """One dictionary's index as ``index_runs`` records it: what was encoded and how much of it is kept."""

    dict_id: int
    corpus_id: str
    n_documents: int
    n_tokens: int  # the density denominator
    k: int
    top_n: int
    n_quantiles: int
    per_quantile: int
    hist_bins: int
    codes_kept: bool
    seconds: float  # encoding time
    dict_written: object  # the dictionary version it describes (``dictionaries.written``)


def write_index(store: str | Path, run: IndexRun, codes_path: Path | Sequence[Path], timeout: float = 600.0) -> str:
    """Replace the dictionary's index with the summaries of the codes in ``codes_path`` (Parquet: atom, doc_id,
    position, coef; one file, or a list of shards read as one) in one transaction; returns a reason when it was
    skipped (the dictionary was deleted or rewritten meanwhile), else ''."""
    d = int(run.dict_id)
    with connect_write(store, timeout=timeout) as con, transaction(con):
        row = first_row(con, "SELECT written FROM dictionaries WHERE dict_id = ?", [d])
        if row is None:
            return "deleted while indexing"
        if row[0] != run.dict_written:
            return "rewritten while indexing (index it again)"
        for table in INDEX_TABLES:
            con.execute(f"DELETE FROM {table} WHERE dict_id = ?", [d])
        paths = [codes_path] if isinstance(codes_path, str | Path) else list(codes_path)
        files = ", ".join("'" + str(p).replace("'", "''") + "'" for p in paths)
        con.execute(f"CREATE OR REPLACE TEMP TABLE _codes AS SELECT * FROM read_parquet([{files}])")
        if run.codes_kept:
            con.execute(
                f"INSERT INTO codes SELECT {d}, doc_id, position, atom, coef FROM _codes "
                "ORDER BY atom, doc_id, position"
            )
        n_tokens = int(run.n_tokens)
        con.execute(f"""
            INSERT INTO atom_stats
            SELECT {d}, a.atom, COALESCE(s.n, 0), COALESCE(s.n, 0) / {n_tokens}::DOUBLE, s.mean_coef,
                   s.min_coef,
                   s.max_coef, s.mean_abs, COALESCE(s.n_negative, 0)
            FROM (SELECT atom FROM atoms WHERE dict_id = {d}) a
            LEFT JOIN (SELECT atom, COUNT(*) AS n, AVG(coef) AS mean_coef, MIN(coef) AS min_coef,
                              MAX(coef) AS max_coef, AVG(ABS(coef)) AS mean_abs,
                              COUNT(*) FILTER (WHERE coef < 0) AS n_negative
                       FROM _codes GROUP BY atom) s USING (atom)
            ORDER BY a.atom""")
        con.execute(f"INSERT INTO atom_top_contexts SELECT {d}, * FROM ({top_sql('_codes', run.top_n)})")
        con.execute(
            f"INSERT INTO atom_quantiles SELECT {d}, * FROM "
            f"({quantile_sql('_codes', run.n_quantiles, run.per_quantile)})"
        )
        con.execute(
            f"INSERT INTO atom_histograms SELECT {d}, * FROM ({histogram_sql('_codes', run.hist_bins)})"
        )
        con.execute(
            "INSERT INTO index_runs VALUES (?, ?, 'held_out', ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, now())",
            [
                d,
                run.corpus_id,
                run.n_documents,
                n_tokens,
                run.k,
                run.top_n,
                run.n_quantiles,
                run.per_quantile,
                run.hist_bins,
                run.codes_kept,
                round(run.seconds, 3),
                run.dict_written,
            ],
        )
        con.execute("DROP TABLE _codes")
    return ""
