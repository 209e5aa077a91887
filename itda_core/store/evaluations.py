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

Two jobs write figures: ``itda eval --store`` (details without ``source``: an :class:`EvalResult`) and ``itda
index`` (``details.source = 'index'``: FVU, cosine and MSE of the tokens it encodes). Each replaces only its own
rows (:data:`EVAL_SOURCE`, :data:`INDEX_SOURCE`), so neither deletes the other's figures.
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

EVAL_SOURCE = "eval"  # rows of ``itda eval --store`` (their details have no 'source')
INDEX_SOURCE = "index"  # rows of ``itda index``


def _source_sql(details: str = "details") -> str:
    """A row's source in SQL, from its ``details`` column (rows without one are ``itda eval``'s)."""
    return f"COALESCE(json_extract_string({details}, '$.source'), '{EVAL_SOURCE}')"


def held_out_corpus(con: duckdb.DuckDBPyConnection, corpus_id: str) -> Corpus | None:
    """The stored held-out documents of ``corpus_id`` as the Corpus ``load_corpus(...).split(f, seed)[1]``
    gives (same documents, order, id and sha256); None when the corpus has no held-out split."""
    held_id = held_out_id(con, corpus_id)
    if held_id is None:
        return None
    rows = con.execute(
        "SELECT doc_id, text, source FROM documents WHERE corpus_id = ? AND split = 'held_out' ORDER BY doc_id",
        [corpus_id],
    ).fetchall()
    if not rows:
        return None
    name = first_row(con, "SELECT name FROM corpora WHERE corpus_id = ?", [corpus_id])
    docs = [Document(int(d), t, s) for d, t, s in rows]
    return Corpus(f"{name[0] if name else corpus_id}:held_out", docs, held_id)


def held_out_id(con: duckdb.DuckDBPyConnection, corpus_id: str) -> str | None:
    """The corpus id of ``corpus_id``'s held-out split as :func:`held_out_corpus` (and ``Corpus.split``) names
    it, without reading its documents; None when the corpus has no held-out split."""
    meta = first_row(con, "SELECT held_out_fraction, split_seed FROM corpora WHERE corpus_id = ?", [corpus_id])
    if meta is None or meta[0] is None:
        return None
    return f"{corpus_id}:held_out:{float(meta[0]):g}:{int(meta[1] or 0)}"


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
    source: str = EVAL_SOURCE,
) -> str:
    """In one transaction, delete the dictionary's rows of ``metrics`` for each (corpus_id, k) of ``replaced``
    and insert ``rows`` (dict_id, metric, value, corpus_id, n_tokens, details; created is now()). Rows of
    ``rule_metrics`` written before the CE rule was recorded are first named with their rule
    (:func:`name_legacy_rules`), in the whole store. Only rows of ``source`` (:data:`EVAL_SOURCE` or
    :data:`INDEX_SOURCE`) are deleted.

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
                + f") AND TRY_CAST(json_extract_string(details, '$.k') AS INTEGER) = ? AND {_source_sql()} = ?",
                [dict_id, corpus_id, *metrics, k, source],
            )
        if rows:
            con.executemany("INSERT INTO evaluations VALUES (?, ?, ?, ?, ?, ?, now())", list(rows))
    return ""


# Which stored figure stands for a dictionary's metric when there are several (another k, corpus, sample, tool):
# the one at its own k, then ``itda index``'s (one sample and rule for all of a model's layers), then the one on
# the most tokens, then the newest.
FIGURE_CHOICE = "own_k DESC, source = 'index' DESC, n_tokens DESC NULLS LAST, created DESC"


def quality_rows(
    con: duckdb.DuckDBPyConnection, metrics: Sequence[str] | None = None, prefixes: Sequence[str] = ()
) -> Any:
    """One stored figure per dictionary and metric (the one :data:`FIGURE_CHOICE` puts first), for ``metrics``
    and metrics starting with one of ``prefixes`` (e.g. ``ce_loss_score:``), or every metric when both are
    left out: a DataFrame of dict_id, metric, value, corpus_id, n_tokens, k (of the details), own_k (whether k
    is the dictionary's own), source ('eval' or 'index'), created."""
    tests = ["starts_with(e.metric, ?)"] * len(prefixes)
    if metrics:
        tests.append("e.metric IN (" + ", ".join("?" * len(metrics)) + ")")
    where = " OR ".join(tests) or ("true" if metrics is None else "false")
    return con.execute(
        "SELECT * FROM (SELECT e.dict_id, e.metric, e.value, e.corpus_id, e.n_tokens, "
        "TRY_CAST(json_extract_string(e.details, '$.k') AS INTEGER) AS k, "
        "COALESCE(TRY_CAST(json_extract_string(e.details, '$.k') AS INTEGER) = d.k, false) AS own_k, "
        f"{_source_sql('e.details')} AS source, e.created "
        f"FROM evaluations e JOIN dictionaries d USING (dict_id) WHERE {where}) "
        f"QUALIFY row_number() OVER (PARTITION BY dict_id, metric ORDER BY {FIGURE_CHOICE}) = 1 "
        "ORDER BY dict_id, metric",
        [*prefixes, *(metrics or [])],
    ).df()


def evaluation_values(con: duckdb.DuckDBPyConnection) -> Any:
    """Every metric's chosen figure per dictionary (dict_id, metric, value): see :func:`quality_rows`."""
    return quality_rows(con)[["dict_id", "metric", "value"]]


def evaluated(con: duckdb.DuckDBPyConnection, dict_ids: Sequence[int], metric: str) -> set[int]:
    """The dictionaries among ``dict_ids`` with a stored ``metric`` figure at their own k."""
    if not dict_ids:
        return set()
    rows = con.execute(
        "SELECT DISTINCT e.dict_id FROM evaluations e JOIN dictionaries d USING (dict_id) WHERE e.metric = ? "
        "AND TRY_CAST(json_extract_string(e.details, '$.k') AS INTEGER) = d.k AND e.dict_id IN ("
        + ", ".join("?" * len(dict_ids)) + ")",
        [metric, *[int(d) for d in dict_ids]],
    ).fetchall()
    return {int(r[0]) for r in rows}


__all__ = ["EVAL_SOURCE", "FIGURE_CHOICE", "INDEX_SOURCE", "evaluated", "evaluation_values", "held_out_corpus",
           "held_out_id", "name_legacy_rules", "quality_rows", "replace_evaluations"]
