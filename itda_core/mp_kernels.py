"""Kernels for the fast matching-pursuit paths (imported lazily by :mod:`itda_core.mp`).

CPU: a numba kernel. One call encodes a block of tokens sequentially; the caller runs blocks on
several threads (the kernel releases the GIL). Per token and step it makes ONE pass over the token's
correlation row: ``corr -= a * G[j]`` fused with the search for the next ``argmax |corr|``, so the
64 KB row stays in L2 while the Gram row streams from memory.

Exactness: the float arithmetic is the same as the torch loop (``c - a * g``, no FMA contraction,
no reassociation; numba's fastmath stays off). The argmax works on the IEEE bit pattern of ``|c|``:
for non-negative floats the integer order of the bits IS the float order, and an integer max
reduction vectorises (LLVM will not vectorise a float max without fast-math flags). Ties resolve to
the lowest index because the winner is the smallest index whose ``|c|`` equals the maximum.
The caller guarantees finite inputs.

CUDA: two Triton kernels (only defined when Triton imports), one program per token: the token's
whole correlation row in registers when m <= 16384, else streamed through in tiles.
"""

from __future__ import annotations

import numpy as np
from llvmlite import ir
from numba import njit, types
from numba.extending import intrinsic

# Tokens are scanned in blocks of this many atoms: the per-block max of |corr| is kept, so finding
# the winner costs a scan of m / BLOCK block maxima plus one block, instead of a second full pass.
BLOCK = 2048

@intrinsic
def _abs_bits(typingctx, x):  # type: ignore[no-untyped-def]
    """The IEEE-754 bits of |x| for a float32, as an int32 (bitcast + clear the sign bit).

    Done in LLVM IR so the result stays int32: numba's own ``&`` widens to int64, which halves the
    vector width of the max reduction.
    """
    sig = types.int32(types.float32)

    def codegen(context, builder, signature, args):  # type: ignore[no-untyped-def]
        bits = builder.bitcast(args[0], ir.IntType(32))
        return builder.and_(bits, ir.Constant(ir.IntType(32), 0x7FFFFFFF))

    return sig, codegen


@njit(nogil=True, boundscheck=False, cache=True)
def _block_max(c):  # type: ignore[no-untyped-def]
    """max over the block of the bits of |c| (vectorised integer max)."""
    mx = np.int32(0)
    for i in range(c.shape[0]):
        q = _abs_bits(c[i])
        mx = q if q > mx else mx
    return mx


@njit(nogil=True, boundscheck=False, cache=True)
def _update_block(c, g, a):  # type: ignore[no-untyped-def]
    """c -= a * g in place, returning the bits of max |c| over the block (one fused pass)."""
    mx = np.int32(0)
    for i in range(c.shape[0]):
        v = c[i] - a * g[i]
        c[i] = v
        q = _abs_bits(v)
        mx = q if q > mx else mx
    return mx


@njit(nogil=True, boundscheck=False, cache=True)
def _argmax(c, bmax, nblk, m):  # type: ignore[no-untyped-def]
    """Lowest index of max |c|, given the per-block maxima ``bmax``."""
    best = np.int32(-1)
    for b in range(nblk):
        v = bmax[b]
        best = v if v > best else best
    blk = 0
    for b in range(nblk):
        if bmax[b] == best:
            blk = b
            break
    lo = blk * BLOCK
    cb = c[lo : min(lo + BLOCK, m)]
    nb = cb.shape[0]
    j = nb
    for i in range(nb):  # vectorised "min index where equal" instead of an early-exit scan
        q = i if _abs_bits(cb[i]) == best else nb
        j = q if q < j else j
    return lo + j


@njit(nogil=True, boundscheck=False, cache=True)
def gram_mp_rows(corr, gram, stride, k, idx, coef):  # type: ignore[no-untyped-def]
    """Plain MP for each row of ``corr`` [n, m] (= x @ D.T, overwritten) using Gram rows.

    ``gram`` is the flat Gram storage, row ``j`` at ``gram[j * stride : j * stride + m]``.
    Writes step ``s``'s atom and signed coefficient to ``idx[:, s]`` and ``coef[:, s]``.
    """
    n, m = corr.shape
    nblk = (m + BLOCK - 1) // BLOCK
    bmax = np.empty(nblk, np.int32)
    for t in range(n):
        c = corr[t]
        for b in range(nblk):
            lo = b * BLOCK
            bmax[b] = _block_max(c[lo : min(lo + BLOCK, m)])
        for s in range(k):
            j = _argmax(c, bmax, nblk, m)
            a = c[j]
            idx[t, s] = j
            coef[t, s] = a
            if s == k - 1:
                break
            g = gram[j * stride : j * stride + m]
            for b in range(nblk):
                lo = b * BLOCK
                hi = min(lo + BLOCK, m)
                bmax[b] = _update_block(c[lo:hi], g[lo:hi], a)


# --------------------------------------------------------------------------------------------------
# CUDA (Triton)
# --------------------------------------------------------------------------------------------------

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
