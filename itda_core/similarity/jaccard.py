"""Jaccard similarity of ITDA dictionaries: how many source tokens two dictionaries share.

Two rules identify an atom (see docs/similarity.md for the full rules and why):

* ``keys``: ``(doc_id, position)``, as in the paper. Valid only between dictionaries built with the same
  tokenizer, corpus, ``seq_len`` and ``skip_special_tokens``; :func:`jaccard` refuses anything else.
* ``spans``: for different tokenizers. A whole-character token is identified by the character where it
  ends (``(doc_id, char_end)``): two tokens that end at the same character have read the same text. Pieces
  of a split character and special tokens not at position 0 need the identical token at the same position;
  empty-span tokens at position 0 (BOS/CLS) match each other. Every identity is unique within one
  dictionary, so the matching is one-to-one, and for one tokenizer it is exactly the ``keys`` rule.

Every identity is an int64 (keys packed, span identities hashed), so intersections are ``np.intersect1d``
over sorted arrays; per-dictionary arrays are cached on the dictionary object.

This module holds the public entry points and re-exports the pieces: the sets of atoms that count
(:mod:`~itda_core.similarity.atom_sets`), position keys (:mod:`~itda_core.similarity.position_keys`), span
identities (:mod:`~itda_core.similarity.spans`), whether a pair is comparable
(:mod:`~itda_core.similarity.comparable`), and a pair's shared atoms and cached counts
(:mod:`~itda_core.similarity.pairs`).

Which atoms count and which index (:class:`JaccardOptions`): by default only the atoms that carry evidence
(``ITDA.evidence``: not the initial atoms picked arbitrarily among rows seen once) and the paper's raw
index |A n B| / |A u B|, the pair that matched layers best in the 5-seed benchmark (docs/benchmarks.md).
Optionally the index corrected for chance: ``(J - J0) / (Jmax - J0)``, where J0 is the Jaccard of two sets
of these sizes at the overlap expected when both are drawn at random from the N training tokens
(``a * b / N``) and Jmax = min(a, b) / max(a, b) the largest Jaccard two sets of these sizes can have. 0
means no more shared than chance, 1 the smaller set inside the larger. See docs/similarity.md.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd

from itda_core.config.similarity import (  # the options live apart from torch (the CLI's help reads them)
    ATOM_CHOICES,
    DEFAULT_OPTIONS,
    INDEX_CHOICES,
    MAX_MIN_ATOMS,
    JaccardOptions,
    expected_shared,
    jaccard_index,
)
from itda_core.dictionary import ITDA
from itda_core.similarity.atom_sets import AtomSet, atom_set, model_atom_set, model_layers
from itda_core.similarity.comparable import check_comparable, choose_method, same_tokenizer
from itda_core.similarity.pairs import matched_pairs, pair_universe, pair_value, shared_count
from itda_core.similarity.position_keys import POSITION_BITS, pack_keys
from itda_core.similarity.spans import is_partial_token

if TYPE_CHECKING:
    import torch

__all__ = [
    "ATOM_CHOICES",
    "DEFAULT_OPTIONS",
    "INDEX_CHOICES",
    "MAX_MIN_ATOMS",
    "POSITION_BITS",
    "AtomSet",
    "JaccardOptions",
    "atom_set",
    "check_comparable",
    "choose_method",
    "expected_shared",
    "is_partial_token",
    "jaccard",
    "jaccard_by_span",
    "jaccard_index",
    "matched_pairs",
    "model_atom_set",
    "model_jaccard",
    "model_layers",
    "pack_keys",
    "pair_universe",
    "same_tokenizer",
    "shared_atoms",
    "shared_count",
    "span_matches",
]


def jaccard(a: ITDA, b: ITDA, options: JaccardOptions = DEFAULT_OPTIONS) -> float:
    """Jaccard of the ``(doc_id, position)`` sets (same tokenizer, corpus, seq_len and special-token handling,
    else :class:`ITDAError`; ``nan`` when undefined). ``options`` say which atoms count and which index; the
    paper's number is ``JaccardOptions(atoms="all", index="raw")``."""
    return pair_value(a, b, "keys", options)


def jaccard_by_span(a: ITDA, b: ITDA, options: JaccardOptions = DEFAULT_OPTIONS) -> float:
    """:func:`jaccard` with atoms matched by character spans (for different tokenizers); equals it when the
    tokenizers are the same."""
    return pair_value(a, b, "spans", options)


def span_matches(a: ITDA, b: ITDA, atoms: str | JaccardOptions = "evidence") -> pd.DataFrame:
    """The span-matched pairs: columns ``index_a`` and ``index_b`` (atom indices), one row per match."""
    ia, ib, _ = matched_pairs(a, b, "spans", atoms)
    return pd.DataFrame({"index_a": ia, "index_b": ib})


def shared_atoms(a: ITDA, b: ITDA, method: str = "auto", atoms: str | JaccardOptions = "evidence") -> pd.DataFrame:
    """The atoms ``a`` and ``b`` share (among those that count, ``atoms``), one row each: atom indices in a and
    b, document, positions, token strings and character spans (``_a`` / ``_b``; positions differ only across
    tokenizers)."""
    ia, ib, _ = matched_pairs(a, b, method, atoms)
    pa, pb = a.provenance, b.provenance
    ta, tb = _torch_rows(ia), _torch_rows(ib)
    return pd.DataFrame({
        "index_a": ia,
        "index_b": ib,
        "doc_id": pa.doc_id[ta].numpy(),
        "position_a": pa.position[ta].numpy(),
        "position_b": pb.position[tb].numpy(),
        "token_a": [pa.token_str[i] for i in ia.tolist()],
        "token_b": [pb.token_str[i] for i in ib.tolist()],
        "char_start_a": pa.char_start[ta].numpy(),
        "char_end_a": pa.char_end[ta].numpy(),
        "char_start_b": pb.char_start[tb].numpy(),
        "char_end_b": pb.char_end[tb].numpy(),
    })


def _torch_rows(rows: np.ndarray) -> torch.Tensor:
    """int64 tensor of numpy row indices (for indexing provenance columns)."""
    import torch

    return torch.from_numpy(np.ascontiguousarray(rows, dtype=np.int64))


def model_jaccard(dicts_a: Mapping[int, ITDA], dicts_b: Mapping[int, ITDA],
                  layers: Sequence[int] | None = None, *, method: str = "auto",
                  options: JaccardOptions = DEFAULT_OPTIONS) -> float:
    """Jaccard of the two models' unions of provenance sets over ``layers`` (default 1..n-1 of each model),
    span-based automatically when the tokenizers differ."""
    sa, sb = model_atom_set(dicts_a, layers, options), model_atom_set(dicts_b, layers, options)
    return pair_value(sa, sb, method, options)
