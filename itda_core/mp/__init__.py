"""Matching pursuit (MP) encoding of activations against a dictionary of unit-norm atoms.

ITDA encodes with plain MP and a fixed number of steps ``k`` (see docs/method.md):
``r = x``; k times: ``corr = r @ D.T``; ``j = argmax |corr|``; ``a = corr[j]``; record ``(j, a)``;
``r -= a * D[j]``. The textbook loop costs a full ``[n, d] x [d, m]`` product per step. Because
``r @ D.T`` changes by ``-a * (D @ D[j]) = -a * G[j]``, one product ``x @ D.T`` plus one Gram row
per step gives the same result up to float rounding -- that is the fast path here. "Up to rounding" includes
near-ties: where two atoms' |corr| are within rounding of each other (ITDA dictionaries hold near-duplicate
atoms, added together from one batch), two paths may pick different ones, and their codes differ from that
step on while every step stays a greedy MP step up to rounding (tested):

* CPU, float32: a numba kernel (:mod:`itda_core.mp.cpu_kernels`) fuses the row update with the next
  argmax in one pass per step and token; tokens are spread over ``torch.get_num_threads()`` threads.
* CUDA, float32: a Triton kernel (:mod:`itda_core.mp.cuda_kernels`), one program per token (its corr row
  in registers when m <= 16384).
* Elsewhere (float64, no numba / Triton): the same Gram recurrence in torch over chunks of tokens.
* CPU, float32, large dictionaries (a float32 Gram matrix of :data:`HALF_FROM_BYTES`, 512 MiB, or
  more: m >= 11,586), or whenever the float32 matrix would not fit the memory budget but a float16 one
  does (:class:`HalfGram`): a screened kernel (:mod:`itda_core.mp.screened_kernel`). The float16 rows only
  narrow each step's search to the atoms that could win given a rigorous bound on the accumulated error;
  exact float32 dot products with the residual pick the winner and give its coefficient, so the results are
  still those of the textbook loop up to float rounding. Each step reads half the bytes of the float32
  recurrence: at m = 16,384 it is as fast on real activations and faster on random data, with half the
  memory; on smaller dictionaries the float32 rows (which then nearly fit the CPU caches) win.
* When no Gram matrix fits the memory budget, a chunked textbook loop.

On CPU the Gram matrices and the correlation buffer live in transparent huge pages where Linux offers
them (:mod:`itda_core.mp.hugepages`): each step reads a random 64 KB row, which with 4 KiB pages costs 16
TLB misses.

Without ``gram=``, :func:`matching_pursuit` keeps the Gram matrix it built for the next call on the same
atoms tensor (:mod:`itda_core.mp.reuse`): one entry, keyed by the tensor's identity and version counter (an
in-place edit rebuilds it), held through a weak reference (freed with the atoms, or by
:func:`clear_gram_reuse`) and only within the memory budget. For a dictionary that changes between calls,
pass ``gram=`` (:func:`auto_gram`) or keep a :class:`GramCache`.

Set ``ITDA_GRAM_MAX_BYTES`` to override the Gram budget, ``ITDA_MP_NUMBA=0`` / ``ITDA_MP_TRITON=0``
to skip the numba / Triton kernels.

Modules: :mod:`~itda_core.mp.encode` (the entry points), :mod:`~itda_core.mp.gram` (Gram matrices, their
tiers and budget, :class:`GramCache`), :mod:`~itda_core.mp.reuse` (the kept Gram matrix),
:mod:`~itda_core.mp.reference` (textbook loop, OMP), :mod:`~itda_core.mp.dispatch` (the fast paths and the
early stop), :mod:`~itda_core.mp.backends` (which kernels load), :mod:`~itda_core.mp.common` (validation,
work sizes), the kernels and :mod:`~itda_core.mp.hugepages`. Submodules import one another as modules and
call e.g. ``tiers.auto_gram(...)``, so a monkeypatch on the module that defines a name reaches every caller;
this file only re-exports.
"""

from __future__ import annotations

from itda_core.mp.encode import METHODS, matching_pursuit, reconstruct
from itda_core.mp.gram import (
    HALF_FROM_BYTES,
    GramCache,
    HalfGram,
    auto_gram,
    available_ram,
    gram_budget_bytes,
    gram_matrix,
    gram_matrix_half,
)
from itda_core.mp.reference import orthogonal_matching_pursuit, textbook_matching_pursuit
from itda_core.mp.reuse import clear_gram_reuse

__all__ = [
    "HALF_FROM_BYTES",
    "METHODS",
    "GramCache",
    "HalfGram",
    "auto_gram",
    "available_ram",
    "clear_gram_reuse",
    "gram_budget_bytes",
    "gram_matrix",
    "gram_matrix_half",
    "matching_pursuit",
    "orthogonal_matching_pursuit",
    "reconstruct",
    "textbook_matching_pursuit",
]
