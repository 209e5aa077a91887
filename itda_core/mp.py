"""Matching pursuit (MP) encoding of activations against a dictionary of unit-norm atoms.

ITDA encodes with plain MP and a fixed number of steps ``k`` (see docs/itda-method.md):
``r = x``; k times: ``corr = r @ D.T``; ``j = argmax |corr|``; ``a = corr[j]``; record ``(j, a)``;
``r -= a * D[j]``. The textbook loop costs a full ``[n, d] x [d, m]`` product per step. Because
``r @ D.T`` changes by ``-a * (D @ D[j]) = -a * G[j]``, one product ``x @ D.T`` plus one Gram row
per step gives the same result up to float rounding -- that is the fast path here. "Up to rounding" includes
near-ties: where two atoms' |corr| are within rounding of each other (ITDA dictionaries hold near-duplicate
atoms, added together from one batch), two paths may pick different ones, and their codes differ from that
step on while every step stays a greedy MP step up to rounding (tested):

* CPU, float32: a numba kernel (:mod:`itda_core.mp_kernels`) fuses the row update with the next
  argmax in one pass per step and token; tokens are spread over ``torch.get_num_threads()`` threads.
* CUDA, float32: a Triton kernel, one program per token (its corr row in registers when m <= 16384).
* Elsewhere (float64, no numba / Triton): the same Gram recurrence in torch over chunks of tokens.
* CPU, float32, large dictionaries (a float32 Gram matrix of :data:`HALF_FROM_BYTES`, 512 MiB, or
  more: m >= 11,586), or whenever the float32 matrix would not fit the memory budget but a float16 one
  does (:class:`HalfGram`): a screened kernel. The float16 rows only narrow each step's search to the
  atoms that could win given a rigorous bound on the accumulated error; exact float32 dot products with
  the residual pick the winner and give its coefficient, so the results are still those of the textbook
  loop up to float rounding. Each step reads half the bytes of the float32 recurrence: at m = 16,384 it
  is as fast on real activations and faster on random data, with half the memory; on smaller
  dictionaries the float32 rows (which then nearly fit the CPU caches) win.
* When no Gram matrix fits the memory budget, a chunked textbook loop.

On CPU the Gram matrices and the correlation buffer live in transparent huge pages where Linux offers
them (:mod:`itda_core.hugepages`): each step reads a random 64 KB row, which with 4 KiB pages costs 16
TLB misses.

Set ``ITDA_GRAM_MAX_BYTES`` to override the Gram budget, ``ITDA_MP_NUMBA=0`` / ``ITDA_MP_TRITON=0``
to skip the numba / Triton kernels.
"""

from __future__ import annotations

import itertools
import logging
import math
import numbers
import os
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from types import ModuleType

import numpy as np
import torch
from torch import Tensor

from itda_core import hugepages

logger = logging.getLogger(__name__)

METHODS = ("auto", "gram", "textbook", "omp")

# Bytes per [chunk, m] work buffer: keeps the chunked loops' memory bounded whatever n is.
_CPU_WORK_BYTES = 128 << 20
_CUDA_WORK_BYTES = 512 << 20
_CPU_GRAM_CAP = 4 << 30
_GRAM_BLOCK_BYTES = 256 << 20  # GramCache computes new rows in products of at most this size


# --------------------------------------------------------------------------------------------------
# Validation and small helpers
# --------------------------------------------------------------------------------------------------


def _validate(x: Tensor, atoms: Tensor, k: int) -> None:
    """Raise ValueError with a clear message for inputs MP cannot encode."""
    if not isinstance(x, Tensor) or not isinstance(atoms, Tensor):
        raise ValueError("x and atoms must be torch tensors")
    if x.dim() != 2:
        raise ValueError(f"x must be 2-D [n, d], got shape {tuple(x.shape)}")
    if atoms.dim() != 2:
        raise ValueError(f"atoms must be 2-D [m, d], got shape {tuple(atoms.shape)}")
    if atoms.shape[0] == 0:
        raise ValueError("the dictionary is empty (m = 0 atoms): nothing to encode with")
    if x.shape[1] != atoms.shape[1]:
        raise ValueError(f"x has width {x.shape[1]} but atoms have width {atoms.shape[1]}")
    if isinstance(k, bool) or not isinstance(k, int) or k < 1:
        raise ValueError(f"k (the number of MP steps) must be an integer >= 1, got {k!r}")
    if x.device != atoms.device:
        raise ValueError(f"x is on {x.device} but atoms are on {atoms.device}; move one of them")
    if not (x.is_floating_point() and atoms.is_floating_point()):
        raise ValueError("x and atoms must be floating point tensors")


def _compute_dtype(x: Tensor, atoms: Tensor) -> torch.dtype:
    """float64 if either input is float64, else float32 (half inputs are encoded in float32)."""
    return torch.float64 if torch.float64 in (x.dtype, atoms.dtype) else torch.float32


def _empty_codes(x: Tensor, k: int) -> tuple[Tensor, Tensor]:
    n = x.shape[0]
    return (torch.zeros((n, k), dtype=torch.int64, device=x.device),
            torch.zeros((n, k), dtype=x.dtype, device=x.device))


def _default_chunk(m: int, device: torch.device, buffers: int = 1) -> int:
    """Tokens per chunk so that ``buffers`` [chunk, m] float32 buffers stay within the work budget."""
    budget = _CUDA_WORK_BYTES if device.type == "cuda" else _CPU_WORK_BYTES
    return max(1, budget // (4 * m * buffers))


def available_ram() -> int:
    """Bytes of RAM available now (MemAvailable), or a conservative guess when unknown."""
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_AVPHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        return 8 << 30


def gram_budget_bytes(device: torch.device | str) -> int:
    """Largest Gram matrix (bytes) the encoder will build on ``device`` before falling back.

    ``ITDA_GRAM_MAX_BYTES`` overrides; else min(4 GiB, 1/4 of available RAM) on CPU and half the
    free memory on CUDA.
    """
    env = os.environ.get("ITDA_GRAM_MAX_BYTES")
    if env:
        return int(float(env))
    device = torch.device(device)
    if device.type == "cuda":
        free, _total = torch.cuda.mem_get_info(device)
        return free // 2
    return min(_CPU_GRAM_CAP, available_ram() // 4)


def gram_matrix(atoms: Tensor) -> Tensor:
    """The Gram matrix ``atoms @ atoms.T`` [m, m] (its rows are what the fast MP path reads), on CPU in
    huge pages where the OS offers them (:mod:`itda_core.hugepages`)."""
    a = atoms.detach()
    return torch.mm(a, a.T, out=hugepages.empty((a.shape[0], a.shape[0]), a.dtype, a.device))


@dataclass(frozen=True)
class HalfGram:
    """A Gram matrix stored in float16 (half the bytes to read per MP step), with, per row, the largest
    absolute rounding error against the float32 products it was made from.

    The CPU kernel uses it only to narrow each step's search; the winner and its coefficient come from
    exact float32 dot products with the residual, so results match the textbook loop up to float rounding.
    """

    rows: Tensor  # [m, m] float16, may be a view into larger storage (row stride >= m)
    row_err: Tensor  # [m] float32

    def __post_init__(self) -> None:
        rows, err = self.rows, self.row_err
        if rows.dtype != torch.float16 or rows.dim() != 2 or rows.shape[0] != rows.shape[1]:
            raise ValueError(f"HalfGram rows must be a square float16 matrix, got {rows.dtype} {tuple(rows.shape)}; "
                             "build one with gram_matrix_half(atoms)")
        if err.dim() != 1 or err.shape[0] != rows.shape[0]:
            raise ValueError(f"HalfGram row_err must have one entry per row ({rows.shape[0]}), got "
                             f"{tuple(err.shape)}")

    @property
    def shape(self) -> torch.Size:
        return self.rows.shape

    def float(self) -> Tensor:
        """The float32 matrix (for the paths without a float16 kernel)."""
        return self.rows.float()


# Largest atom norm for which float16 Gram entries cannot overflow (|G_ij| <= norm^2 << 65504).
_HALF_MAX_NORM = 100.0


def _half_rows(rows: Tensor) -> tuple[Tensor, Tensor]:
    """float16 copy of float32 Gram rows and each row's largest rounding error (one fused pass on CPU)."""
    if rows.device.type == "cpu" and _screened_kernel() is not None:
        from itda_core.mp_kernels import half_rows

        rows = rows.contiguous()
        half = torch.empty(rows.shape, dtype=torch.float16)
        err = torch.empty(rows.shape[0], dtype=torch.float32)
        src, dst, err_np = rows.numpy(), half.view(torch.uint16).numpy(), err.numpy()
        _run_rows(half_rows, rows.shape[0], max(1, torch.get_num_threads()),
                  lambda a, b: (src[a:b], dst[a:b], err_np[a:b]))
        return half, err
    half = rows.to(torch.float16)
    return half, (half.float() - rows).abs().amax(dim=1)


def _half_tier_available(device: torch.device, dtype: torch.dtype) -> bool:
    """Whether a float16 Gram matrix can be used: the screened kernel runs on CPU in float32."""
    return device.type == "cpu" and dtype == torch.float32 and _screened_kernel() is not None


# From this float32 Gram size on (m >= 11,586 atoms), CPU MP keeps the Gram matrix in float16 even when the
# float32 one fits: half the memory, and at least as fast there (docs/benchmarks.md: 0.96-1.09x the float32
# kernel on SmolLM2 activations at m = 12,000-16,384, 1.06-1.2x on random data). Below it the float32 rows
# are faster (at m = 2,048 the float16 tier runs at 0.75x: the float32 matrix nearly fits the CPU caches).
HALF_FROM_BYTES = 512 << 20


def _prefers_half(m: int, device: torch.device, dtype: torch.dtype) -> bool:
    """Whether the float16 tier is the first choice for m atoms (CPU, float32, large dictionary)."""
    return m * m * 4 >= HALF_FROM_BYTES and _half_tier_available(device, dtype)


def auto_gram(atoms: Tensor, budget: int | None = None) -> Tensor | HalfGram | None:
    """The Gram matrix ``matching_pursuit(method="auto")`` builds for ``atoms``: a :class:`HalfGram` on CPU in
    float32 from :data:`HALF_FROM_BYTES` on, or when only it fits the budget; else the float32 (float64 for
    float64 atoms) matrix if it fits; None when neither fits (MP then runs the textbook loop).

    Build it once and pass it as ``gram=`` when encoding many batches with the same atoms.
    """
    if not isinstance(atoms, Tensor) or atoms.dim() != 2 or atoms.shape[0] == 0:
        shape = tuple(atoms.shape) if isinstance(atoms, Tensor) else type(atoms).__name__
        raise ValueError(f"atoms must be a non-empty 2-D tensor [m, d], got {shape}")
    m = atoms.shape[0]
    budget = gram_budget_bytes(atoms.device) if budget is None else budget
    full_fits = m * m * atoms.element_size() <= budget
    half_ok = (m * m * 2 <= budget and _half_tier_available(atoms.device, atoms.dtype)
               and float(atoms.norm(dim=1).max()) <= _HALF_MAX_NORM)
    if half_ok and (_prefers_half(m, atoms.device, atoms.dtype) or not full_fits):
        if not full_fits:
            logger.info("MP: the %d x %d float32 Gram matrix exceeds the memory budget; using it in float16 "
                        "(screened kernel, the same results up to rounding)", m, m)
        return gram_matrix_half(atoms)
    if full_fits:
        return gram_matrix(atoms)
    _log_fallback(m, budget)
    return None


def gram_matrix_half(atoms: Tensor) -> HalfGram:
    """The Gram matrix of float32 ``atoms`` as a :class:`HalfGram`, built in blocks of rows (no m^2
    float32 temporary)."""
    m = atoms.shape[0]
    a = atoms.float()
    rows16 = hugepages.empty((m, m), torch.float16, atoms.device)
    err = torch.empty(m, dtype=torch.float32, device=atoms.device)
    step = max(1, _GRAM_BLOCK_BYTES // (4 * m))
    for lo in range(0, m, step):
        hi = min(lo + step, m)
        rows16[lo:hi], err[lo:hi] = _half_rows(a[lo:hi] @ a.T)
    return HalfGram(rows16, err)


# --------------------------------------------------------------------------------------------------
# Gram cache for a growing dictionary
# --------------------------------------------------------------------------------------------------


class GramCache:
    """Incrementally maintained Gram matrix of a dictionary that only grows by appending rows.

    Each :meth:`update` computes only the new rows/columns (``D_new @ D.T``); storage grows by
    capacity doubling so a long run of small appends stays amortised O(m^2 d) overall. Storage is
    ``dtype`` while m^2 entries fit ``max_bytes`` and stay under :data:`HALF_FROM_BYTES`; past either, on
    CPU in float32, it switches to float16 (a :class:`HalfGram`, half the bytes, for the screened kernel)
    until that no longer fits either. ``half`` forces one storage (True: always float16, False: never).

    ``max_bytes`` bounds the matrices held at any moment, growth and conversion included: where the old and
    the new storage would not fit side by side, the old one is dropped and every row is computed again.
    """

    def __init__(self, device: torch.device | str, dtype: torch.dtype, max_bytes: int | None = None,
                 half: bool | None = None) -> None:
        self.device = torch.device(device)
        self.dtype = dtype
        self.max_bytes = gram_budget_bytes(self.device) if max_bytes is None else int(max_bytes)
        self.half = half
        self._store: Tensor | None = None
        self._err: Tensor | None = None  # per-row float16 rounding error (float16 storage only)
        self._m = 0
        self._warned = False

    @property
    def size(self) -> int:
        """Number of atoms covered by the cached Gram matrix."""
        return self._m

    def reset(self) -> None:
        """Forget the cached matrix (e.g. when the dictionary was edited rather than appended to)."""
        self._store = None
        self._err = None
        self._m = 0

    def _use_half(self, m: int) -> bool:
        if self.half is not None:
            return self.half
        full = m * m * torch.empty((), dtype=self.dtype).element_size()
        return ((full > self.max_bytes or _prefers_half(m, self.device, self.dtype))
                and _half_tier_available(self.device, self.dtype))

    def _held_bytes(self) -> int:
        """Bytes of the Gram storage held now (0 when none)."""
        return 0 if self._store is None else self._store.numel() * self._store.element_size()

    def _to_half(self) -> None:
        """Convert the cached float32 rows to float16, measuring each row's rounding error."""
        assert self._store is not None
        cap, old = self._store.shape[0], self._m
        half = hugepages.empty((cap, cap), torch.float16, self.device)
        err = torch.zeros(cap, dtype=torch.float32, device=self.device)
        step = max(1, _GRAM_BLOCK_BYTES // (4 * max(old, 1)))
        for lo in range(0, old, step):
            hi = min(lo + step, old)
            half[lo:hi, :old], err[lo:hi] = _half_rows(self._store[lo:hi, :old])
        self._store, self._err = half, err

    def update(self, atoms: Tensor) -> Tensor | HalfGram | None:
        """The [m, m] Gram view for ``atoms`` (whose first rows are unchanged since the last call): a
        :class:`HalfGram` when stored in float16, else a tensor in ``dtype``.

        Returns None (and frees the storage) when m^2 entries would exceed ``max_bytes``.
        """
        m = atoms.shape[0]
        half = self._use_half(m)
        store_dtype = torch.float16 if half else self.dtype
        elt = store_dtype.itemsize
        if m * m * elt > self.max_bytes:
            if not self._warned:
                logger.warning("MP: the Gram matrix of %d atoms exceeds its %.3g MiB budget; using the textbook "
                               "loop from now on (much slower)", m, self.max_bytes / 2**20)
                self._warned = True
            self.reset()
            return None
        if m < self._m:  # the dictionary shrank: the cached rows no longer describe it
            self.reset()
        if self._store is not None and self._store.dtype != store_dtype:
            cap = self._store.shape[0]
            if half and self._held_bytes() + cap * cap * elt <= self.max_bytes:
                logger.info("Gram matrix for %d atoms exceeds %d bytes in %s: stored in float16 from now on",
                            m, self.max_bytes, self.dtype)
                self._to_half()
            else:  # a forced change of mode, or no room for both copies: start again in the new storage
                self.reset()
        cap = 0 if self._store is None else self._store.shape[0]
        if m > cap:
            limit = math.isqrt(self.max_bytes // elt)  # the largest square matrix the budget holds (>= m)
            new_cap = min(max(2 * cap, m), limit)
            if self._held_bytes() + new_cap * new_cap * elt > self.max_bytes:
                self.reset()  # no room to copy the old rows beside the new storage: compute them again
                new_cap = limit
            grown = hugepages.empty((new_cap, new_cap), store_dtype, self.device)
            err = torch.zeros(new_cap, dtype=torch.float32, device=self.device)
            if self._store is not None and self._m:
                grown[: self._m, : self._m] = self._store[: self._m, : self._m]
                if self._err is not None:
                    err[: self._m] = self._err[: self._m]
            self._store, self._err = grown, err
        a = atoms.to(device=self.device, dtype=self.dtype)
        store, row_err = self._store, self._err
        assert store is not None and row_err is not None
        old = self._m
        at = a.T
        step = max(1, _GRAM_BLOCK_BYTES // (a.element_size() * m))  # new rows per product: bounds the temporary
        for lo in range(old, m, step):
            hi = min(lo + step, m)
            rows = a[lo:hi] @ at  # [hi - lo, m]: only the new rows' products
            if half:
                rows16, row_err[lo:hi] = _half_rows(rows)
                if old:  # the old rows gain new columns, and with them maybe a larger error
                    new_cols = (rows16[:, :old].float() - rows[:, :old]).abs().amax(dim=0)
                    torch.maximum(row_err[:old], new_cols, out=row_err[:old])
                rows = rows16
            store[lo:hi, :m] = rows
            store[:old, lo:hi] = rows[:, :old].T  # and, by symmetry, the new columns of the old rows
        self._m = m
        if half:
            return HalfGram(store[:m, :m], row_err[:m])
        return store[:m, :m]


# --------------------------------------------------------------------------------------------------
# Reference textbook loop and its chunked (fallback) form
# --------------------------------------------------------------------------------------------------


def _textbook_into(x: Tensor, atoms: Tensor, k: int, idx: Tensor, coef: Tensor) -> None:
    """Textbook MP of ``x`` written into ``idx``/``coef`` (one dense product per step)."""
    r = x.clone()
    at = atoms.T
    for s in range(k):
        corr = r @ at
        j = corr.abs().argmax(dim=1)
        a = corr.gather(1, j[:, None])
        idx[:, s] = j
        coef[:, s] = a[:, 0]
        if s < k - 1:
            r -= a * atoms[j]


@torch.no_grad()
def textbook_matching_pursuit(x: Tensor, atoms: Tensor, k: int) -> tuple[Tensor, Tensor]:
    """The literal MP loop (a full ``r @ atoms.T`` every step): the reference the fast paths match."""
    _validate(x, atoms, k)
    idx, coef = _empty_codes(x, k)
    if x.shape[0]:
        _textbook_into(x, atoms.to(x.dtype), k, idx, coef)
    return idx, coef


def _textbook_chunked(x: Tensor, atoms: Tensor, k: int, chunk: int) -> tuple[Tensor, Tensor]:
    """The textbook loop over chunks of tokens: no Gram matrix, bounded [chunk, m] buffers."""
    idx, coef = _empty_codes(x, k)
    for lo in range(0, x.shape[0], chunk):
        hi = min(lo + chunk, x.shape[0])
        _textbook_into(x[lo:hi], atoms, k, idx[lo:hi], coef[lo:hi])
    return idx, coef


# --------------------------------------------------------------------------------------------------
# Gram fast paths
# --------------------------------------------------------------------------------------------------


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


_kernel: Callable[..., None] | None = None
_kernel_failed = False
_pool: ThreadPoolExecutor | None = None
_pool_size = 0
_lock = threading.Lock()


def _numba_kernel() -> Callable[..., None] | None:
    """The compiled CPU kernel, or None when numba is disabled or unusable (then torch is used)."""
    global _kernel, _kernel_failed
    if os.environ.get("ITDA_MP_NUMBA", "1") == "0" or _kernel_failed:
        return None
    if _kernel is None:
        with _lock:
            if _kernel is None and not _kernel_failed:
                try:
                    from itda_core.mp_kernels import gram_mp_rows

                    _kernel = gram_mp_rows
                except Exception as exc:  # numba missing or unable to compile here
                    _kernel_failed = True
                    logger.warning("numba MP kernel unavailable (%s); using the torch Gram loop", exc)
    return _kernel


def _thread_pool(threads: int) -> ThreadPoolExecutor:
    global _pool, _pool_size
    with _lock:
        if _pool is None or _pool_size != threads:
            if _pool is not None:
                _pool.shutdown(wait=False)
            _pool = ThreadPoolExecutor(max_workers=threads, thread_name_prefix="itda-mp")
            _pool_size = threads
        return _pool


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

        _run_rows(kernel, hi - lo, threads, args)
    return idx, coef


_screened: Callable[..., None] | None = None


def _screened_kernel() -> Callable[..., None] | None:
    """The float16-screened CPU kernel, or None where numba is disabled or unusable."""
    global _screened
    if _numba_kernel() is None:
        return None
    if _screened is None:
        from itda_core.mp_kernels import screened_mp_rows

        _screened = screened_mp_rows
    return _screened


def _run_rows(kernel: Callable[..., None], rows: int, threads: int, args: Callable[[int, int], tuple]) -> None:
    """Run ``kernel(*args(a, b))`` over row ranges [a, b) covering ``rows``, on the MP thread pool."""
    if threads <= 1 or rows < 2:
        kernel(*args(0, rows))
        return
    # several pieces per thread so a briefly descheduled thread does not stall the chunk
    pieces = min(rows, 4 * threads)
    bounds = [rows * p // pieces for p in range(pieces + 1)]
    pool = _thread_pool(threads)
    futures = [pool.submit(kernel, *args(a, b)) for a, b in itertools.pairwise(bounds) if b > a]
    for f in futures:
        f.result()


def _gram_mp_screened(x: Tensor, atoms: Tensor, hg: HalfGram, k: int, chunk: int,
                      kernel: Callable[..., None], stop: tuple[Tensor, Tensor] | None = None) -> tuple[Tensor, Tensor]:
    """CPU float32 path over a float16 Gram matrix: x @ D.T per chunk, then the screened kernel.

    The kernel's error bound (see :func:`itda_core.mp_kernels.screened_mp_rows`) starts from the
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

        _run_rows(kernel, rows, threads, args)
        while True:  # rows whose error bound outgrew their correlations: recompute them exactly
            pending = (step < k).nonzero().flatten()
            if pending.numel() == 0:
                break
            r = res[pending]
            corr[pending] = (atoms @ r.T).T  # ~5x faster than r @ atoms.T for a few rows (MKL gemm shapes)
            base[pending] = r.double().norm(dim=1)
            err[pending] = 2 * gamma * nu * base[pending]
            _run_rows(kernel, rows, threads if pending.numel() > 1 else 1, args)
    return idx, coef


_triton_failed = False


def _triton_module() -> ModuleType | None:
    """:mod:`itda_core.mp_kernels` when its Triton kernels are usable, else None (torch loop on CUDA)."""
    global _triton_failed
    if os.environ.get("ITDA_MP_TRITON", "1") == "0" or _triton_failed:
        return None
    try:
        from itda_core import mp_kernels
    except Exception as exc:
        _triton_failed = True
        logger.warning("MP kernels unavailable (%s); using the torch Gram loop on CUDA", exc)
        return None
    if getattr(mp_kernels, "triton", None) is None:
        _triton_failed = True
        return None
    return mp_kernels


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
    return x.dtype == torch.float32 and x.device.type == "cpu" and _numba_kernel() is not None


def _gram_mp_paths(x: Tensor, atoms: Tensor, gram: Tensor | HalfGram, k: int, chunk_size: int | None,
                   stop: tuple[Tensor, Tensor] | None) -> tuple[Tensor, Tensor]:
    global _triton_failed
    m = atoms.shape[0]
    if isinstance(gram, HalfGram):
        screened = _screened_kernel() if x.dtype == torch.float32 and x.device.type == "cpu" else None
        if screened is not None:
            return _gram_mp_screened(x, atoms, gram, k, chunk_size or _default_chunk(m, x.device), screened, stop)
        gram = gram.float()  # no float16 kernel here: the float32 recurrence on the widened matrix
    if x.dtype == torch.float32 and x.device.type == "cpu":
        kernel = _numba_kernel()
        if kernel is not None:
            return _gram_mp_numba(x, atoms, gram, k, chunk_size or _default_chunk(m, x.device), kernel, stop)
    if x.dtype == torch.float32 and x.device.type == "cuda":
        kernels = _triton_module()
        if kernels is not None:
            try:
                return _gram_mp_triton(x, atoms, gram, k, chunk_size or _default_chunk(m, x.device), kernels)
            except Exception as exc:  # e.g. Triton cannot compile for this GPU: keep working, slower
                _triton_failed = True
                logger.warning("Triton MP kernel failed (%s); using the torch Gram loop", exc)
    return _gram_mp_torch(x, atoms, gram, k, chunk_size or _default_chunk(m, x.device, buffers=3))


_fallback_warned = False


def _log_fallback(m: int, budget: int) -> None:
    """Say (loudly once, then at INFO) that MP runs the slow textbook loop for lack of Gram memory."""
    global _fallback_warned
    level = logging.INFO if _fallback_warned else logging.WARNING
    _fallback_warned = True
    logger.log(level, "MP: the %d x %d Gram matrix exceeds the memory budget (%.1f GiB; ITDA_GRAM_MAX_BYTES "
               "changes it); using the chunked textbook loop -- much slower", m, m,
               budget / 2**30)


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


# --------------------------------------------------------------------------------------------------
# OMP (optional)
# --------------------------------------------------------------------------------------------------


def _omp_into(x: Tensor, atoms: Tensor, k: int, idx: Tensor, coef: Tensor) -> None:
    """OMP of ``x``: pick argmax |r @ D.T| among unchosen atoms, then refit all chosen by least squares."""
    r = x.clone()
    at = atoms.T
    xd = x.double()
    sol = torch.zeros((x.shape[0], 0), dtype=torch.float64, device=x.device)
    for s in range(k):
        mag = (r @ at).abs()
        if s:
            mag.scatter_(1, idx[:, :s], -1.0)  # never re-pick: the residual is orthogonal to them
        idx[:, s] = mag.argmax(dim=1)
        chosen = atoms[idx[:, : s + 1]].double()  # [n, s+1, d]
        sol = torch.linalg.lstsq(chosen.transpose(1, 2), xd[:, :, None]).solution[:, :, 0]
        r = (xd - torch.bmm(sol[:, None, :], chosen)[:, 0]).to(x.dtype)
    coef.copy_(sol.to(coef.dtype))


@torch.no_grad()
def orthogonal_matching_pursuit(x: Tensor, atoms: Tensor, k: int) -> tuple[Tensor, Tensor]:
    """Orthogonal MP: like MP but all coefficients are refitted by least squares after every step.

    Column t holds the atom chosen at step t and its final least-squares coefficient; atoms are
    never chosen twice, so k must be <= m. Slower than MP (a batched lstsq per step).
    """
    _validate(x, atoms, k)
    if k > atoms.shape[0]:
        raise ValueError(f"OMP picks distinct atoms, so k ({k}) must be <= the number of atoms "
                         f"({atoms.shape[0]})")
    cdt = _compute_dtype(x, atoms)
    xc, d = x.to(cdt), atoms.to(cdt)
    idx = torch.zeros((x.shape[0], k), dtype=torch.int64, device=x.device)
    coef = torch.zeros((x.shape[0], k), dtype=cdt, device=x.device)
    chunk = max(1, min(_default_chunk(atoms.shape[0], x.device), (32 << 20) // (8 * k * x.shape[1])))
    for lo in range(0, x.shape[0], chunk):
        hi = min(lo + chunk, x.shape[0])
        _omp_into(xc[lo:hi], d, k, idx[lo:hi], coef[lo:hi])
    return idx, coef.to(x.dtype)


# --------------------------------------------------------------------------------------------------
# Public entry points
# --------------------------------------------------------------------------------------------------


@torch.no_grad()
def matching_pursuit(x: Tensor, atoms: Tensor, k: int, *, gram: Tensor | HalfGram | None = None,
                     method: str = "auto", chunk_size: int | None = None,
                     stop_residual: float | Tensor | None = None) -> tuple[Tensor, Tensor]:
    """Encode raw activations ``x`` [n, d] with k steps of plain matching pursuit over ``atoms`` [m, d].

    ``atoms`` rows should be unit norm (the coefficient is the plain correlation). Returns
    ``(indices int64 [n, k], coefficients [n, k] in x's dtype)``: column t is step t's atom and its
    signed coefficient. An atom chosen at two steps appears twice, each with its own coefficient;
    :func:`reconstruct` sums them. Ties in ``|corr|`` go to the lowest index. k > m is allowed.

    ``method``: "auto" (a Gram path when ``gram`` is given, or when building G pays off and fits
    :func:`gram_budget_bytes`: in float32, else on CPU in float16 as a :class:`HalfGram`; else the
    chunked textbook loop), "gram" (always the float32 Gram recurrence, building G if needed, ignoring
    the budget), "textbook" (chunked textbook loop) or "omp" (:func:`orthogonal_matching_pursuit`).
    All MP methods agree with :func:`textbook_matching_pursuit` up to float rounding: where two atoms' |corr|
    are within rounding of each other, methods may pick different ones (and differ from there on). ``chunk_size``
    bounds the tokens processed at once (memory).

    ``stop_residual`` (not in the paper; default None = always k steps): stop a row once its residual
    energy |x|^2 - sum of coef^2 (= |r|^2 for unit atoms) is at most ``stop_residual * |x|^2`` (a float,
    or a tensor [n] with a value per row, negative = never); its remaining steps are (index 0,
    coefficient 0.0), and the steps before are unchanged. The CPU kernels (float32 and float16 Gram
    tiers) then skip those steps; other paths compute them and drop them. Not with OMP.
    """
    if method not in METHODS:
        raise ValueError(f"unknown MP method {method!r}; choose one of {', '.join(METHODS)}")
    _validate(x, atoms, k)
    if chunk_size is not None and chunk_size < 1:
        raise ValueError(f"chunk_size must be >= 1, got {chunk_size}")
    n, m = x.shape[0], atoms.shape[0]
    if gram is not None and tuple(gram.shape) != (m, m):
        raise ValueError(f"gram must be [{m}, {m}] for {m} atoms, got shape {tuple(gram.shape)}")
    if n == 0:
        return _empty_codes(x, k)
    if method == "omp":
        if stop_residual is not None:
            raise ValueError("stop_residual applies to plain MP only; OMP refits its coefficients")
        return orthogonal_matching_pursuit(x, atoms, k)
    stop = _stop_levels(x, stop_residual) if stop_residual is not None else None
    cdt = _compute_dtype(x, atoms)
    xc, d = x.to(cdt), atoms.to(cdt)
    if not all(bool(torch.isfinite(v)) for v in torch.aminmax(xc)):  # NaN propagates; ~25x isfinite().all()
        raise ValueError("x contains NaN or infinite values; matching pursuit needs finite activations")

    g: Tensor | HalfGram | None = None
    if method != "textbook":
        if isinstance(gram, HalfGram) and cdt != torch.float32:
            g = gram_matrix(d)  # float16 entries would throw away float64's accuracy
        elif isinstance(gram, HalfGram):
            g = HalfGram(gram.rows.to(x.device), gram.row_err.to(x.device))
        elif gram is not None:
            g = gram.to(device=x.device, dtype=cdt)
        elif method == "gram":
            g = gram_matrix(d)
        elif _gram_pays_off(n, m, k, x.device):
            g = auto_gram(d)
    if isinstance(g, HalfGram) and not bool(torch.isfinite(g.row_err).all()):
        logger.warning("MP: Gram entries overflow float16 (atoms far from unit norm); using the textbook loop")
        g = None
    if g is not None:
        idx, coef = _gram_mp(xc, d, g, k, chunk_size, stop)
    else:
        idx, coef = _textbook_chunked(xc, d, k, chunk_size or _default_chunk(m, x.device, buffers=2))
        if stop is not None:
            _apply_stop(idx, coef, stop)
    return idx, coef.to(x.dtype)


@torch.no_grad()
def reconstruct(indices: Tensor, coefficients: Tensor, atoms: Tensor) -> Tensor:
    """``x_hat`` [n, d] = sum over steps of coefficient * atom (repeated indices add up)."""
    if indices.shape != coefficients.shape or indices.dim() != 2:
        raise ValueError(f"indices {tuple(indices.shape)} and coefficients {tuple(coefficients.shape)} "
                         "must be the same [n, k] shape")
    dtype = torch.promote_types(coefficients.dtype, atoms.dtype)
    atoms = atoms.to(device=coefficients.device, dtype=dtype)
    coefficients = coefficients.to(dtype)
    if indices.shape[1] == 0 or indices.shape[0] == 0:
        return torch.zeros((indices.shape[0], atoms.shape[1]), dtype=dtype, device=coefficients.device)
    # One fused gather-and-weighted-sum per row, steps added in order (the same sums as a loop over steps);
    # ~15x faster on CPU than k separate gathers, and it never materialises the [n, k, d] atoms.
    return torch.nn.functional.embedding_bag(
        indices.to(device=coefficients.device, dtype=torch.long), atoms,
        per_sample_weights=coefficients, mode="sum",
    )
