"""Reconstruction quality measured while ``itda index`` encodes the held-out text (FVU, cosine, MSE of the
non-special tokens it encodes past each document's first position), and its ``evaluations`` rows: the figures
``itda eval --store --exclude-first`` computes, by the same formulas (:mod:`itda_core.evaluation.accumulate`), at
no cost but the reconstruction ``codes @ atoms``. The first position is left out because on models without a BOS
token it is an attention sink whose norm dwarfs the rest (SmolLM2 layer 15: 22,562 against a median of 173),
which makes FVU meaningless (0.0011 with it, 0.3586 without, at the same MSE); on models with BOS it is the BOS,
special anyway.

The rows are ``itda eval``'s (metric, value, held-out corpus id, tokens counted, details JSON with ``k``), with
``details.source = 'index'``: a re-index replaces them, ``itda eval`` leaves them alone (and the reverse).
The Ray engine writes the same rows from its merged shard sums (:func:`write_quality`).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from itda_core.evaluation.accumulate import QUALITY_METRICS, QualityAccumulator, counted_tokens


def counted_rows(model: Any, token_ids: np.ndarray, positions: np.ndarray) -> np.ndarray:
    """Which indexed rows count in the figures: not a special token of ``model``'s tokenizer and not a document's
    first position (as ``itda eval --exclude-first``)."""
    from itda_core.evaluation.ce_score import special_token_ids

    return counted_tokens(token_ids, special_token_ids(model.tokenizer)) & (np.asarray(positions) > 0)


def quality_rows(dict_id: int, acc: QualityAccumulator, corpus_id: str, k: int, indexed_tokens: int,
                 max_tokens: int | None) -> list[tuple[Any, ...]]:  # fmt: skip
    """The ``evaluations`` rows (dict_id, metric, value, corpus_id, n_tokens, details) of one dictionary's sums;
    none without counted tokens."""
    from itda_core.store.evaluations import INDEX_SOURCE

    figures = acc.result()
    details = json.dumps({
        "source": INDEX_SOURCE, "k": int(k), "tokens": acc.tokens, "indexed_tokens": int(indexed_tokens),
        "excluded": int(indexed_tokens) - acc.tokens, "exclude_first": True, "max_tokens": max_tokens,
        "order": "spread (sha256 of doc_id), see itda_core.jobs.index.spread", **figures,
    })  # fmt: skip
    return [(int(dict_id), m, float(v), corpus_id, acc.tokens, details)
            for m, v in figures.items() if v is not None]  # fmt: skip


def write_quality(store: str | Path, dict_id: int, acc: QualityAccumulator, corpus_id: str, k: int,
                  indexed_tokens: int, max_tokens: int | None, written: Any, timeout: float = 600.0) -> str:
    """Replace the dictionary's index-time figures (same held-out split and k) by ``acc``'s, in one transaction.
    ``corpus_id`` is the dictionary's corpus; the rows name its held-out split, as ``itda eval`` does. Returns ''
    when written, else why not."""
    from itda_core.store.connection import connect_readonly
    from itda_core.store.evaluations import INDEX_SOURCE, held_out_id, replace_evaluations

    with connect_readonly(store, timeout=timeout) as con:
        held = held_out_id(con, corpus_id) or corpus_id
    rows = quality_rows(dict_id, acc, held, k, indexed_tokens, max_tokens)
    return replace_evaluations(store, dict_id, rows, [(held, int(k))], list(QUALITY_METRICS), written,
                               timeout=timeout, source=INDEX_SOURCE)  # fmt: skip


__all__ = ["counted_rows", "quality_rows", "write_quality"]
