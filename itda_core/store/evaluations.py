"""The ``evaluations`` table and what evaluating stored dictionaries reads: the held-out split of a stored
corpus, and one dictionary's figures replaced in one transaction (computing them is the job's part,
:mod:`itda_core.jobs.evaluation`).

A row is ``(dict_id, metric, value, corpus_id, n_tokens, details JSON, created)``; ``details`` holds the
whole result, its ``k`` among it, so that re-evaluating replaces the rows of the same metric, k and corpus
instead of piling them up.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import duckdb

from itda_core.corpus import Corpus, Document
from itda_core.store.connection import connect_write, transaction
from itda_core.store.schema import first_row


def held_out_corpus(con: duckdb.DuckDBPyConnection, corpus_id: str) -> Corpus | None:
    """The stored held-out documents of ``corpus_id`` as the Corpus ``load_corpus(...).split(f, seed)[1]``
    gives (same documents, order, id and sha256); None when the corpus has no held-out split."""
    meta = con.execute(
        "SELECT name, held_out_fraction, split_seed FROM corpora WHERE corpus_id = ?", [corpus_id]
    ).fetchall()
    if not meta or meta[0][1] is None:
        return None
    rows = con.execute(
        "SELECT doc_id, text, source FROM documents WHERE corpus_id = ? AND split = 'held_out' ORDER BY doc_id",
        [corpus_id],
    ).fetchall()
    if not rows:
        return None
    name, frac, seed = meta[0]
    docs = [Document(int(d), t, s) for d, t, s in rows]
    return Corpus(f"{name}:held_out", docs, f"{corpus_id}:held_out:{float(frac):g}:{int(seed or 0)}")


def replace_evaluations(
    store: str | Path,
    dict_id: int,
    rows: Sequence[tuple[Any, ...]],
    replaced: Sequence[tuple[str, int]],
    metrics: Sequence[str],
    written: Any = None,
    timeout: float = 600.0,
) -> str:
    """In one transaction, delete the dictionary's rows of ``metrics`` for each (corpus_id, k) of ``replaced``
    and insert ``rows`` (dict_id, metric, value, corpus_id, n_tokens, details; created is now()).

    ``written`` (the dictionary's ``written`` stamp when it was read) guards against a concurrent rewrite.
    Returns '' when written, else why not."""
    with connect_write(store, timeout=timeout) as con, transaction(con):
        now = first_row(con, "SELECT written FROM dictionaries WHERE dict_id = ?", [dict_id])
        if now is None:
            return "deleted while it was evaluated"
        if written is not None and now[0] != written:
            return "rewritten while it was evaluated (evaluate it again)"
        for corpus_id, k in replaced:
            con.execute(
                "DELETE FROM evaluations WHERE dict_id = ? AND corpus_id = ? AND metric IN ("
                + ", ".join("?" * len(metrics))
                + ") AND TRY_CAST(json_extract_string(details, '$.k') AS INTEGER) = ?",
                [dict_id, corpus_id, *metrics, k],
            )
        if rows:
            con.executemany("INSERT INTO evaluations VALUES (?, ?, ?, ?, ?, ?, now())", list(rows))
    return ""


__all__ = ["held_out_corpus", "replace_evaluations"]
