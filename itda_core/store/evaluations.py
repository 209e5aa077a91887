"""The ``evaluations`` table and what evaluating stored dictionaries reads: the held-out split of a stored
corpus, and one dictionary's figures replaced in one transaction (computing them is the job's part,
:mod:`itda_core.jobs.evaluation`).

A row is ``(dict_id, metric, value, corpus_id, n_tokens, details JSON, created)``; ``details`` holds the
whole result, its ``k`` among it, so that re-evaluating replaces the rows of the same metric, k and corpus
instead of piling them up. A metric that depends on the CE rule is named with it (``ce_loss_score:saebench``;
the rule is also ``details.ce_rule``). Rows written before the rule was recorded are named by the metric
alone; they stay readable as they are, and the first write of new figures names them with the rule their
``details.splice_special`` stands for (:data:`itda_core.config.evaluation.LEGACY_CE_RULES`), so that a column
never holds figures of two rules. No schema change: only the ``metric`` text of those rows changes.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import duckdb

from itda_core.config.evaluation import LEGACY_CE_RULES
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


def name_legacy_rules(con: duckdb.DuckDBPyConnection, rule_metrics: Sequence[str]) -> None:
    """Rename every row written before the CE rule was recorded (its metric one of ``rule_metrics`` itself,
    e.g. ``ce_loss_score``) to ``metric:rule``, the rule its ``details.splice_special`` stands for (absent or
    true: special tokens were spliced; false: left alone). Idempotent: rows named with a rule are kept."""
    if not rule_metrics:
        return
    con.execute(
        "UPDATE evaluations SET metric = metric || ':' || CASE WHEN "
        "lower(COALESCE(json_extract_string(details, '$.splice_special'), 'true')) = 'false' THEN ? ELSE ? END "
        "WHERE metric IN (" + ", ".join("?" * len(rule_metrics)) + ")",
        [LEGACY_CE_RULES[False], LEGACY_CE_RULES[True], *rule_metrics],
    )


def replace_evaluations(
    store: str | Path,
    dict_id: int,
    rows: Sequence[tuple[Any, ...]],
    replaced: Sequence[tuple[str, int]],
    metrics: Sequence[str],
    written: Any = None,
    timeout: float = 600.0,
    *,
    rule_metrics: Sequence[str] = (),
) -> str:
    """In one transaction, delete the dictionary's rows of ``metrics`` for each (corpus_id, k) of ``replaced``
    and insert ``rows`` (dict_id, metric, value, corpus_id, n_tokens, details; created is now()). Rows of
    ``rule_metrics`` written before the CE rule was recorded are first named with their rule
    (:func:`name_legacy_rules`), in the whole store.

    ``written`` (the dictionary's ``written`` stamp when it was read) guards against a concurrent rewrite.
    Returns '' when written, else why not."""
    with connect_write(store, timeout=timeout) as con, transaction(con):
        now = first_row(con, "SELECT written FROM dictionaries WHERE dict_id = ?", [dict_id])
        if now is None:
            return "deleted while it was evaluated"
        if written is not None and now[0] != written:
            return "rewritten while it was evaluated (evaluate it again)"
        name_legacy_rules(con, rule_metrics)
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


__all__ = ["held_out_corpus", "name_legacy_rules", "replace_evaluations"]
