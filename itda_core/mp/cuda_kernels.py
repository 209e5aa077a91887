"""The Triton (CUDA) kernels of the fast matching-pursuit path (loaded lazily by :mod:`itda_core.mp.backends`).

One program per token: the token's whole correlation row in registers when m <= 16384, else streamed
through in tiles. Only defined when Triton imports; ``triton`` is None otherwise.
"""

from __future__ import annotations

try:
    import triton
    import triton.language as tl
except ImportError:  # CPU-only installs: CUDA then uses the torch Gram loop
    triton = None

# Largest m (rounded up to a power of two) whose correlation row a Triton program keeps in registers.
TRITON_MAX_INREG = 16384
TRITON_TILE = 4096

if triton is not None:

    @triton.jit
    def triton_mp_inreg(corr_ptr, gram_ptr, gram_stride, idx_ptr, coef_ptr, m, k, BLOCK: tl.constexpr):
        """One token per program, its corr row held in registers; one Gram row read per step."""
        t = tl.program_id(0).to(tl.int64)
        offs = tl.arange(0, BLOCK)
        mask = offs < m
        c = tl.load(corr_ptr + t * m + offs, mask=mask, other=0.0)
        for s in range(k):
            _v, j = tl.max(tl.abs(c), axis=0, return_indices=True, return_indices_tie_break_left=True)
            a = tl.sum(tl.where(offs == j, c, 0.0), axis=0)
            tl.store(idx_ptr + t * k + s, j.to(tl.int64))
            tl.store(coef_ptr + t * k + s, a)
            g = tl.load(gram_ptr + j.to(tl.int64) * gram_stride + offs, mask=mask, other=0.0)
            c = c - a * g

    @triton.jit
    def triton_mp_tiled(corr_ptr, gram_ptr, gram_stride, idx_ptr, coef_ptr, m, k, BLOCK: tl.constexpr):
        """One token per program for large m: corr row updated in place tile by tile, argmax tracked."""
        t = tl.program_id(0).to(tl.int64)
        row = corr_ptr + t * m
        offs = tl.arange(0, BLOCK)
        best_v = -1.0
        best_i = 0
        for lo in range(0, m, BLOCK):
            mask = lo + offs < m
            c = tl.load(row + lo + offs, mask=mask, other=0.0)
            tv, ti = tl.max(tl.abs(c), axis=0, return_indices=True, return_indices_tie_break_left=True)
            upd = tv > best_v  # strict: an earlier tile keeps a tie
            best_i = tl.where(upd, lo + ti, best_i)
            best_v = tl.where(upd, tv, best_v)
        for s in range(k):
            tl.debug_barrier()  # the tile stores must land before corr[j] is read back
            a = tl.load(row + best_i)
            tl.store(idx_ptr + t * k + s, best_i.to(tl.int64))
            tl.store(coef_ptr + t * k + s, a)
            grow = gram_ptr + best_i.to(tl.int64) * gram_stride
            tl.debug_barrier()
            best_v = -1.0
            best_i = 0
            for lo in range(0, m, BLOCK):
                mask = lo + offs < m
                c = tl.load(row + lo + offs, mask=mask, other=0.0)
                g = tl.load(grow + lo + offs, mask=mask, other=0.0)
                c = c - a * g
                tl.store(row + lo + offs, c, mask=mask)
                tv, ti = tl.max(tl.abs(c), axis=0, return_indices=True, return_indices_tie_break_left=True)
                upd = tv > best_v
                best_i = tl.where(upd, lo + ti, best_i)
                best_v = tl.where(upd, tv, best_v)
