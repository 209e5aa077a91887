"""Which fast path encodes a call, and the paths themselves: the Gram recurrence in numba (CPU, float32), Triton
(CUDA, float32) or torch (elsewhere), the float16-screened kernel for a :class:`HalfGram`; whether building a
Gram matrix pays off; and the early stop on the residual's energy (``stop_residual``)."""

from __future__ import annotations

import logging
import numbers
from collections.abc import Callable
from types import ModuleType

import numpy as np
import torch
from torch import Tensor

from itda_core.mp import backends, hugepages
from itda_core.mp.common import _default_chunk, _empty_codes
from itda_core.mp.gram import HalfGram

logger = logging.getLogger(__name__)

def _gram_mp_torch(x: Tensor, atoms: Tensor, gram: Tensor, k: int, chunk: int) -> tuple[Tensor, Tensor]:
    """Gram recurrence in torch (CUDA path, CPU fallback without numba): corr -= a * G[j] each step."""
    idx, coef = _empty_codes(x, k)
    at = atoms.T
    on_cpu = x.device.type == "cpu"
    for lo in range(0, x.shape[0], chunk):
        hi = min(lo + chunk, x.shape[0])
        corr = x[lo:hi] @ at
        rows = torch.empty_like(corr) if on_cpu else corr
        for s in range(k):
            # on CPU max/min + a reused row buffer beat abs/argmax; on CUDA the plain ops are faster
            j = _argmax_abs(corr) if on_cpu else corr.abs().argmax(dim=1)
            a = corr.gather(1, j[:, None])
            idx[lo:hi, s] = j
            coef[lo:hi, s] = a[:, 0]
            if s < k - 1:
                if on_cpu:
                    torch.index_select(gram, 0, j, out=rows)
                    corr.addcmul_(rows, a, value=-1)
                else:
                    corr -= a * gram[j]
    return idx, coef


def _argmax_abs(corr: Tensor) -> Tensor:
    """Row-wise lowest index of max |corr| from max and min (two read passes, no |corr| buffer)."""
    vmax, imax = corr.max(dim=1)
    vmin, imin = corr.min(dim=1)
    tie = torch.minimum(imax, imin)
    return torch.where(vmax > -vmin, imax, torch.where(-vmin > vmax, imin, tie))



def _flat_rows(gram: Tensor) -> tuple[np.ndarray, int]:
    """A square matrix (possibly a view into larger storage) as one flat numpy array, row j at j * stride."""
    m = gram.shape[0]
    if gram.stride(1) != 1 or gram.stride(0) < m:
        gram = gram.contiguous()
    stride = gram.stride(0)
    return torch.as_strided(gram.detach(), ((m - 1) * stride + m,), (1,)).numpy(), stride


def _kernel_stop(n: int, stop: tuple[Tensor, Tensor] | None) -> tuple[np.ndarray, np.ndarray]:
    """The numba kernels' early-stop arrays: |x|^2 (a copy, which the screened kernel updates in place) and
    the stop level, float64; without ``stop`` a level of -inf, which never stops."""
    if stop is None:
        return np.zeros(n), np.full(n, -np.inf)
    return stop[0].numpy().copy(), stop[1].numpy()


def _kernel_outputs(n: int, k: int, m: int, chunk: int) -> tuple[Tensor, Tensor, Tensor]:
    """The numba paths' codes (int64 and float32 [n, k]) and their [chunk, m] correlation buffer (huge pages)."""
    return (torch.empty((n, k), dtype=torch.int64), torch.empty((n, k), dtype=torch.float32),
            hugepages.empty((min(chunk, n), m), torch.float32))


def _gram_mp_numba(x: Tensor, atoms: Tensor, gram: Tensor, k: int, chunk: int,
                   kernel: Callable[..., None], stop: tuple[Tensor, Tensor] | None) -> tuple[Tensor, Tensor]:
    """CPU float32 fast path: torch computes x @ D.T per chunk, the numba kernel runs the k steps (and
    skips a token's remaining steps once its residual energy reaches ``stop``'s level)."""
    n, m = x.shape[0], atoms.shape[0]
    e_np, l_np = _kernel_stop(n, stop)
    flat, stride = _flat_rows(gram)
    idx, coef, buf = _kernel_outputs(n, k, m, chunk)
    idx_np, coef_np = idx.numpy(), coef.numpy()
    threads = max(1, torch.get_num_threads())
    at = atoms.T
    for lo in range(0, n, chunk):
        hi = min(lo + chunk, n)
        corr = buf[: hi - lo]
        torch.mm(x[lo:hi], at, out=corr)
        c_np = corr.numpy()

        def args(a: int, b: int, lo: int = lo, c_np: np.ndarray = c_np) -> tuple:
            t0, t1 = lo + a, lo + b  # the rows' positions in the whole batch
            return (c_np[a:b], flat, stride, k, idx_np[t0:t1], coef_np[t0:t1], e_np[t0:t1], l_np[t0:t1])

        backends._run_rows(kernel, hi - lo, threads, args)
    return idx, coef


def _gram_mp_screened(x: Tensor, atoms: Tensor, hg: HalfGram, k: int, chunk: int,
                      kernel: Callable[..., None], stop: tuple[Tensor, Tensor] | None = None) -> tuple[Tensor, Tensor]:
    """CPU float32 path over a float16 Gram matrix: x @ D.T per chunk, then the screened kernel.

    The kernel's error bound (see :func:`itda_core.mp.screened_kernel.screened_mp_rows`) starts from the
    float32 rounding of a dot product of length d, gamma_d * |r| * max|D_i| (the standard worst-case
    bound, gamma_d = d u / (1 - d u)), counted twice: once for the first correlations (a GEMM), once for
    the dot products that decide. Rows whose bound grows too loose are refreshed with r @ D.T here.
    The kernel applies ``stop`` itself, as the float32 one does.
    """
    n, m, d = x.shape[0], atoms.shape[0], atoms.shape[1]
    en_np, lv_np = _kernel_stop(n, stop)
    flat, stride = _flat_rows(hg.rows.view(torch.uint16))  # the kernel reads float16 as its bits
    u = 2.0**-24
    gamma = d * u / (1 - d * u)
    nu = float(atoms.norm(dim=1).max()) * (1 + 4 * d * u)
    # per row: float16 rounding (measured) plus the float32 Gram product's own rounding
    row_err = (hg.row_err.double() + gamma * nu * nu).numpy()
    atoms_np = atoms.contiguous().numpy()
    cmax = max(32, m // 128)  # a refresh (one r @ D.T) costs about m / 100 candidate dot products
    idx, coef, buf = _kernel_outputs(n, k, m, chunk)
    idx_np, coef_np = idx.numpy(), coef.numpy()
    threads = max(1, torch.get_num_threads())
    at = atoms.T
    for lo in range(0, n, chunk):
        hi = min(lo + chunk, n)
        rows = hi - lo
        corr = buf[:rows]
        torch.mm(x[lo:hi], at, out=corr)
        res = x[lo:hi].clone()
        base = res.double().norm(dim=1)
        err = 2 * gamma * nu * base
        step = torch.zeros(rows, dtype=torch.int64)
        c_np, r_np, s_np, e_np, b_np = corr.numpy(), res.numpy(), step.numpy(), err.numpy(), base.numpy()

        def args(a: int, b: int, lo: int = lo, c_np: np.ndarray = c_np, r_np: np.ndarray = r_np,
                 s_np: np.ndarray = s_np, e_np: np.ndarray = e_np, b_np: np.ndarray = b_np) -> tuple:
            t0, t1 = lo + a, lo + b  # the rows' positions in the whole batch
            return (c_np[a:b], r_np[a:b], atoms_np, flat, stride, row_err, nu, k, idx_np[t0:t1],
                    coef_np[t0:t1], s_np[a:b], e_np[a:b], b_np[a:b], cmax, en_np[t0:t1], lv_np[t0:t1])

        backends._run_rows(kernel, rows, threads, args)
        while True:  # rows whose error bound outgrew their correlations: recompute them exactly
            pending = (step < k).nonzero().flatten()
            if pending.numel() == 0:
                break
            r = res[pending]
            corr[pending] = (atoms @ r.T).T  # ~5x faster than r @ atoms.T for a few rows (MKL gemm shapes)
            base[pending] = r.double().norm(dim=1)
            err[pending] = 2 * gamma * nu * base[pending]
            backends._run_rows(kernel, rows, threads if pending.numel() > 1 else 1, args)
    return idx, coef


def _gram_mp_triton(x: Tensor, atoms: Tensor, gram: Tensor, k: int, chunk: int,
                    kernels: ModuleType) -> tuple[Tensor, Tensor]:
    """CUDA float32 fast path: x @ D.T per chunk, then one Triton program per token runs the k steps."""
    n, m = x.shape[0], atoms.shape[0]
    if gram.stride(1) != 1:
        gram = gram.contiguous()
    idx = torch.empty((n, k), dtype=torch.int64, device=x.device)
    coef = torch.empty((n, k), dtype=torch.float32, device=x.device)
    width = kernels.triton.next_power_of_2(m)
    if width <= kernels.TRITON_MAX_INREG:
        kernel, block, warps = kernels.triton_mp_inreg, width, (8 if width <= 4096 else 16)
    else:
        kernel, block, warps = kernels.triton_mp_tiled, kernels.TRITON_TILE, 8
    at = atoms.T
    with torch.cuda.device(x.device):
        for lo in range(0, n, chunk):
            hi = min(lo + chunk, n)
            corr = (x[lo:hi] @ at).contiguous()
            kernel[(hi - lo,)](corr, gram, gram.stride(0), idx[lo:hi], coef[lo:hi], m, k,
                               BLOCK=block, num_warps=warps)
    return idx, coef


def _gram_mp(x: Tensor, atoms: Tensor, gram: Tensor | HalfGram, k: int, chunk_size: int | None,
             stop: tuple[Tensor, Tensor] | None = None) -> tuple[Tensor, Tensor]:
    """Dispatch: the screened kernel for a float16 Gram matrix on CPU, else the Gram recurrence (numba on
    CPU, Triton on CUDA, float32; the torch loop otherwise). The numba kernels apply ``stop`` themselves
    (skipping the steps); the other paths' codes are cut afterwards."""
    idx, coef = _gram_mp_paths(x, atoms, gram, k, chunk_size, stop)
    if stop is not None and not _stops_natively(x, gram):
        _apply_stop(idx, coef, stop)
    return idx, coef


def _stops_natively(x: Tensor, gram: Tensor | HalfGram) -> bool:
    """Whether :func:`_gram_mp` runs a numba kernel (float32 recurrence or float16 screened), which skips the
    steps after an early stop."""
    return x.dtype == torch.float32 and x.device.type == "cpu" and backends._numba_kernel() is not None


def _gram_mp_paths(x: Tensor, atoms: Tensor, gram: Tensor | HalfGram, k: int, chunk_size: int | None,
                   stop: tuple[Tensor, Tensor] | None) -> tuple[Tensor, Tensor]:
    """The fast path for this call's device, dtype and Gram tier (see :func:`_gram_mp`), falling back to torch."""
    m = atoms.shape[0]
    if isinstance(gram, HalfGram):
        screened = backends._screened_kernel() if x.dtype == torch.float32 and x.device.type == "cpu" else None
        if screened is not None:
            return _gram_mp_screened(x, atoms, gram, k, chunk_size or _default_chunk(m, x.device), screened, stop)
        gram = gram.float()  # no float16 kernel here: the float32 recurrence on the widened matrix
    if x.dtype == torch.float32 and x.device.type == "cpu":
        kernel = backends._numba_kernel()
        if kernel is not None:
            return _gram_mp_numba(x, atoms, gram, k, chunk_size or _default_chunk(m, x.device), kernel, stop)
    if x.dtype == torch.float32 and x.device.type == "cuda":
        kernels = backends._triton_module()
        if kernels is not None:
            try:
                return _gram_mp_triton(x, atoms, gram, k, chunk_size or _default_chunk(m, x.device), kernels)
            except Exception as exc:  # e.g. Triton cannot compile for this GPU: keep working, slower
                backends._disable_triton()
                logger.warning("Triton MP kernel failed (%s); using the torch Gram loop", exc)
    return _gram_mp_torch(x, atoms, gram, k, chunk_size or _default_chunk(m, x.device, buffers=3))


def _gram_pays_off(n: int, m: int, k: int, device: torch.device) -> bool:
    """Whether building G for this one call beats the textbook loop.

    Building G costs about m tokens' worth of dense product; per token the textbook loop costs about k
    of them (plus k argmax passes) and the Gram path about 2, so G pays off from n ~ c * m / k tokens.
    c was measured: ~1 on a 2-core CPU (numba path ~30-50x the textbook loop), ~5 on an H100 (where
    the textbook loop's GEMMs are cheap: Triton path ~15x it, torch Gram loop ~2.5x).
    """
    factor = 5 if device.type == "cuda" else 1
    return k >= 3 and n * (k - 2) >= factor * m


# --------------------------------------------------------------------------------------------------
# Early stop on the residual's energy
# --------------------------------------------------------------------------------------------------


def _stop_levels(x: Tensor, stop_residual: float | Tensor) -> tuple[Tensor, Tensor]:
    """(|x|^2, stop level = stop_residual * |x|^2) per row, float64 on CPU; -inf (never stops) where
    stop_residual is negative."""
    n = x.shape[0]
    if isinstance(stop_residual, Tensor):
        frac = stop_residual.detach().to(device="cpu", dtype=torch.float64).reshape(-1)
        if frac.shape[0] != n:
            raise ValueError(f"stop_residual must be a float or one value per row of x ({n}), got shape "
                             f"{tuple(stop_residual.shape)}")
    elif isinstance(stop_residual, numbers.Real) and not isinstance(stop_residual, bool):
        frac = torch.full((n,), float(stop_residual), dtype=torch.float64)
    else:
        raise ValueError(f"stop_residual must be a number or a tensor with one value per row, got "
                         f"{type(stop_residual).__name__}")
    if not bool(torch.isfinite(frac).all()):
        raise ValueError("stop_residual must be finite (a fraction of |x|^2; negative: never stop)")
    energy = torch.linalg.vector_norm(x.detach(), dim=1, dtype=torch.float64).cpu().square()
    return energy, torch.where(frac < 0, torch.full_like(frac, -np.inf), frac * energy)


def _apply_stop(idx: Tensor, coef: Tensor, stop: tuple[Tensor, Tensor]) -> None:
    """Zero every step after the one where a row's residual energy |x|^2 - sum coef^2 first reaches its
    level, in place. The arithmetic is the CPU kernel's (float64, step by step), so on its output this
    changes nothing, and on any other path's output it gives the same codes."""
    energy, level = stop
    c64 = coef.detach().to(device="cpu", dtype=torch.float64)
    e = energy.clone()
    done = torch.zeros(idx.shape[0], dtype=torch.bool)
    keep = torch.ones(idx.shape, dtype=torch.bool)
    for s in range(idx.shape[1]):
        keep[:, s] = ~done
        e -= c64[:, s] * c64[:, s]
        done |= e <= level
    if not bool(keep.all()):
        keep = keep.to(idx.device)
        idx.masked_fill_(~keep, 0)
        coef.masked_fill_(~keep, 0)
