"""The atoms two sets share: matched rows, counts (cached by content) and the index value of a pair.

Both rules reduce to one ``np.intersect1d`` of sorted int64 arrays: position keys
(:mod:`~itda_core.similarity.position_keys`) or span identities (:mod:`~itda_core.similarity.spans`), after
:mod:`~itda_core.similarity.comparable` has checked the pair.
"""

from __future__ import annotations

import numpy as np

from itda_core.config.similarity import JaccardOptions
from itda_core.dictionary import ITDA
from itda_core.similarity.atom_sets import AtomSet, atom_set
from itda_core.similarity.comparable import check_comparable, choose_method
from itda_core.similarity.position_keys import pairs_by_key
from itda_core.similarity.spans import pairs_by_span

__all__ = ["as_atom_set", "matched_pairs", "pair_universe", "pair_value", "shared_count"]


def as_atom_set(x: ITDA | AtomSet, atoms: str | JaccardOptions = "evidence") -> AtomSet:
    """``x`` itself when it is an atom set, else the atom set of dictionary ``x`` (those that count, ``atoms``)."""
    return x if isinstance(x, AtomSet) else atom_set(x, atoms)


def matched_pairs(a: ITDA | AtomSet, b: ITDA | AtomSet, method: str = "auto",
                  atoms: str | JaccardOptions = "evidence") -> tuple[np.ndarray, np.ndarray, str]:
    """(rows of ``a``'s provenance, rows of ``b``'s provenance, method used) of the atoms the two share
    (among the atoms that count, ``atoms``, when given dictionaries)."""
    sa, sb = as_atom_set(a, atoms), as_atom_set(b, atoms)
    method = choose_method(sa.config, sb.config, method)
    check_comparable(sa.config, sb.config, method)
    ia, ib = pairs_by_key(sa, sb) if method == "keys" else pairs_by_span(sa, sb)
    order = np.lexsort((sa.position[ia], sa.doc_id[ia]))
    ia, ib = ia[order], ib[order]
    return sa.rows[ia], sb.rows[ib], method


def pair_universe(sa: AtomSet, sb: AtomSet) -> int:
    """The token count the chance model draws from: the larger of the two sets' training tokens (the same
    number for one tokenizer; across tokenizers the finer one, whose token ends include the coarser one's
    almost everywhere); 0 when either is unknown."""
    return max(sa.universe, sb.universe) if sa.universe > 0 and sb.universe > 0 else 0


_PAIR_CACHE: dict[tuple[str, str, str], int] = {}
_PAIR_CACHE_MAX = 65_536


def shared_count(a: ITDA | AtomSet, b: ITDA | AtomSet, method: str = "auto",
                 atoms: str | JaccardOptions = "evidence") -> tuple[int, int, int, str]:
    """(shared atoms, |A|, |B|, method used) among the atoms that count (``atoms``, when given dictionaries);
    results are cached by content fingerprint and method."""
    sa, sb = as_atom_set(a, atoms), as_atom_set(b, atoms)
    method = choose_method(sa.config, sb.config, method)
    check_comparable(sa.config, sb.config, method)
    key = (*sorted((sa.fingerprint, sb.fingerprint)), method)
    shared = _PAIR_CACHE.get(key)
    if shared is None:
        ia, _ = pairs_by_key(sa, sb) if method == "keys" else pairs_by_span(sa, sb)
        shared = len(ia)
        if len(_PAIR_CACHE) >= _PAIR_CACHE_MAX:
            _PAIR_CACHE.pop(next(iter(_PAIR_CACHE)))
        _PAIR_CACHE[key] = shared
    return shared, len(sa), len(sb), method


def pair_value(a: ITDA | AtomSet, b: ITDA | AtomSet, method: str, options: JaccardOptions) -> float:
    """The index (``options``: which atoms count, raw or corrected) of one pair under ``method``."""
    sa, sb = as_atom_set(a, options), as_atom_set(b, options)
    shared, n_a, n_b, _ = shared_count(sa, sb, method)
    return options.value(shared, n_a, n_b, pair_universe(sa, sb))
