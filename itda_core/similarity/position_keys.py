"""Position keys of atoms (``method="keys"``, the paper's rule): an atom is its ``(doc_id, position)``.

Valid only between dictionaries built with the same tokenizer, corpus, ``seq_len`` and
``skip_special_tokens`` (:mod:`itda_core.similarity.comparable` checks). Keys are packed into one int64, so
shared atoms are one ``np.intersect1d`` of sorted arrays.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from itda_core.errors import ITDAError

if TYPE_CHECKING:
    from itda_core.similarity.atom_sets import AtomSet

__all__ = ["POSITION_BITS", "pack_keys", "pairs_by_key"]

POSITION_BITS = 20  # key = doc_id * 2**20 + position: positions up to ~1M tokens, doc ids up to 2**43
_MAX_DOC = 2 ** (63 - POSITION_BITS)


def pack_keys(doc_id: np.ndarray, position: np.ndarray) -> np.ndarray:
    """``doc_id * 2**20 + position`` as int64; raises when a value does not fit."""
    doc_id = np.asarray(doc_id, dtype=np.int64)
    position = np.asarray(position, dtype=np.int64)
    if len(doc_id) and (position.min() < 0 or position.max() >= 2**POSITION_BITS or doc_id.min() < 0
                        or doc_id.max() >= _MAX_DOC):
        raise ITDAError(f"provenance out of range for Jaccard keys: positions must be < 2**{POSITION_BITS} "
                        f"and document ids < 2**{63 - POSITION_BITS}")
    return (doc_id << POSITION_BITS) | position


def pairs_by_key(sa: AtomSet, sb: AtomSet) -> tuple[np.ndarray, np.ndarray]:
    """Positions (in each set) of the shared keys; checks that both agree on the token at each key."""
    _, ia, ib = np.intersect1d(sa.keys, sb.keys, assume_unique=True, return_indices=True)
    differ = np.flatnonzero(sa.token_id[ia] != sb.token_id[ib])
    if len(differ):
        i, j = ia[differ[0]], ib[differ[0]]
        raise ITDAError(f"{sa.label} and {sb.label} disagree on the token at document {int(sa.doc_id[i])} "
                        f"position {int(sa.position[i])} ({sa.token_str[i]!r} vs {sb.token_str[j]!r}), "
                        "so their tokenizers differ; use jaccard_by_span (method 'spans')")
    return ia, ib
