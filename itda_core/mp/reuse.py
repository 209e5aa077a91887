"""The Gram matrix :func:`~itda_core.mp.matching_pursuit` built without ``gram=``, kept for the next call on the
same atoms tensor: encoding batch after batch builds it once (one call on 1,024 tokens at m = 16,384 cost 23x a
dense product with the build, 1.5x without).

One entry. Its key is the atoms tensor's identity and its version counter (``atoms._version``: any in-place edit
through torch makes the next call a miss), plus device, dtype, shape, strides, data pointer, the compute dtype,
the method and what else :func:`~itda_core.mp.gram.auto_gram` decides by (the float16 tier's availability,
:data:`~itda_core.mp.gram.HALF_FROM_BYTES`). A different tensor with equal values (a copy, another view of the
same memory) is a miss: recognising equal values would cost a comparison of all m x d entries per call, and
the identity says what the caller means. The atoms are held through a weak reference, so the matrix is freed
with them.

Memory: on a miss the kept matrix is dropped before the new one is built, so no call holds more than one, as
before. A matrix is kept only within :func:`~itda_core.mp.gram.gram_budget_bytes`, and a hit is one only while
the budget (the kept matrix counted as free) still picks the same tier: a hit returns exactly the matrix a
fresh call would build. :func:`clear_gram_reuse` frees it at once. A lock makes the reuse thread-safe (two
threads asking for the same atoms build once).

Edits the version counter does not see (through ``.data``, a numpy view, shared memory) are not detected: pass
``gram=`` for such atoms, or call :func:`clear_gram_reuse`; for a dictionary that changes between calls, keep
a :class:`~itda_core.mp.gram.GramCache`.
"""

from __future__ import annotations

import logging
import threading
import weakref

import torch
from torch import Tensor

from itda_core.mp import gram as tiers
from itda_core.mp.gram import HalfGram

logger = logging.getLogger(__name__)


class _Kept:
    """The kept Gram matrix, the key and fit it was built under, its bytes, and a weak reference to its atoms."""

    def __init__(self, atoms: Tensor, key: tuple, fit: tuple[bool, bool], gram: Tensor | HalfGram) -> None:
        box: list[Tensor | HalfGram] = [gram]
        self.box = box  # emptied when the atoms are freed: the callback holds the box, not this object (no cycle)
        self.ref = weakref.ref(atoms, lambda _ref: box.clear())  # one atomic list operation: no lock needed
        self.key, self.fit, self.nbytes = key, fit, _nbytes(gram)


_lock = threading.Lock()
_kept: _Kept | None = None
_told = False


def _nbytes(gram: Tensor | HalfGram) -> int:
    """Bytes a Gram matrix holds."""
    if isinstance(gram, HalfGram):
        return gram.rows.numel() * gram.rows.element_size() + gram.row_err.numel() * gram.row_err.element_size()
    return gram.numel() * gram.element_size()


def _key(atoms: Tensor, dtype: torch.dtype, method: str) -> tuple | None:
    """What must be unchanged for the kept matrix to stand for ``atoms`` encoded in ``dtype``; None where the
    tensor keeps no version counter (inference tensors), so an edit could not be seen and nothing is kept."""
    try:
        version = atoms._version
    except RuntimeError:
        return None
    return (method, version, atoms.device, atoms.dtype, tuple(atoms.shape), atoms.stride(), atoms.data_ptr(), dtype,
            tiers._half_tier_available(atoms.device, dtype), tiers.HALF_FROM_BYTES)


def _fit(m: int, dtype: torch.dtype, budget: int) -> tuple[bool, bool]:
    """Whether the Gram matrix of m atoms fits ``budget`` in ``dtype`` and in float16: with the key, everything
    :func:`~itda_core.mp.gram.auto_gram` decides by apart from the atoms' norms (fixed with their version)."""
    return m * m * dtype.itemsize <= budget, m * m * 2 <= budget


def _tell_once(m: int) -> None:
    """Say once per process that matching_pursuit builds the Gram matrix itself, and how to control that."""
    global _told
    if not _told:
        _told = True
        logger.info("MP: built the %d x %d Gram matrix of atoms passed without gram=; it is kept for the next call "
                    "on this same, unchanged atoms tensor (within the memory budget). For a dictionary that "
                    "changes between calls, pass gram= (itda_core.mp.auto_gram) or keep an itda_core.mp.GramCache",
                    m, m)


def gram_for(atoms: Tensor, d: Tensor, method: str) -> Tensor | HalfGram | None:
    """The Gram matrix ``matching_pursuit`` builds for ``d`` (``atoms`` in the compute dtype): ``auto_gram(d)``
    for method "auto", ``gram_matrix(d)`` for "gram"; the kept one when the last such call was on this same,
    unchanged ``atoms`` tensor and the budget still picks it."""
    global _kept
    key = _key(atoms, d.dtype, method)
    m, device = d.shape[0], d.device
    with _lock:
        kept = _kept
        if (kept is not None and key is not None and kept.key == key and kept.ref() is atoms and kept.box
                and _fit(m, d.dtype, tiers.gram_budget_bytes(device, freeable=kept.nbytes)) == kept.fit):
            return kept.box[0]
        _kept = kept = None  # stale, another tensor's, or no longer the budget's choice: freed before the build
        budget = tiers.gram_budget_bytes(device)
        fit = _fit(m, d.dtype, budget)
        gram = tiers.auto_gram(d, budget) if method == "auto" else tiers.gram_matrix(d)
        if gram is None:
            return None
        _tell_once(m)
        if key is not None and (method == "auto" or fit[0]):  # "gram" builds past the budget: never kept then
            _kept = _Kept(atoms, key, fit, gram)
        return gram


def clear_gram_reuse() -> None:
    """Free the kept Gram matrix now (it is otherwise held until its atoms are freed or another call replaces it)."""
    global _kept
    with _lock:
        _kept = None
