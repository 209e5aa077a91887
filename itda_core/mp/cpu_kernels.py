"""The numba CPU kernels of the fast matching-pursuit paths (loaded lazily by :mod:`itda_core.mp.backends`).

A float32 kernel. One call encodes a block of tokens sequentially; the caller runs blocks on
several threads (the kernel releases the GIL). Per token and step it makes ONE pass over the token's
correlation row: ``corr -= a * G[j]`` fused with the search for the next ``argmax |corr|``, so the
64 KB row stays in L2 while the Gram row streams from memory.

Exactness: the float arithmetic is the same as the torch loop (``c - a * g``, no FMA contraction,
no reassociation; this kernel keeps numba's fastmath off). The argmax works on the IEEE bit pattern of ``|c|``:
for non-negative floats the integer order of the bits IS the float order, and an integer max
reduction vectorises (LLVM will not vectorise a float max without fast-math flags). Ties resolve to
the lowest index because the winner is the smallest index whose ``|c|`` equals the maximum.
The caller guarantees finite inputs.

The float16-screened kernel is in :mod:`itda_core.mp.screened_kernel` (it shares this module's bit helpers),
the CUDA (Triton) kernels in :mod:`itda_core.mp.cuda_kernels`.
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
def gram_mp_rows(corr, gram, stride, k, idx, coef, energy, stop):  # type: ignore[no-untyped-def]
    """Plain MP for each row of ``corr`` [n, m] (= x @ D.T, overwritten) using Gram rows.

    ``gram`` is the flat Gram storage, row ``j`` at ``gram[j * stride : j * stride + m]``.
    Writes step ``s``'s atom and signed coefficient to ``idx[:, s]`` and ``coef[:, s]``.
    Early stop: ``energy[t]`` is |x_t|^2 (float64); after each step it loses coef^2 (the residual's
    energy for unit atoms) and once it is <= ``stop[t]`` the token's remaining steps are (0, 0.0).
    ``stop[t] = -inf`` never stops.
    """
    n, m = corr.shape
    nblk = (m + BLOCK - 1) // BLOCK
    bmax = np.empty(nblk, np.int32)
    for t in range(n):
        c = corr[t]
        e = energy[t]
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
            e -= np.float64(a) * np.float64(a)
            if e <= stop[t]:
                for q in range(s + 1, k):
                    idx[t, q] = 0
                    coef[t, q] = 0.0
                break
            g = gram[j * stride : j * stride + m]
            for b in range(nblk):
                lo = b * BLOCK
                hi = min(lo + BLOCK, m)
                bmax[b] = _update_block(c[lo:hi], g[lo:hi], a)
