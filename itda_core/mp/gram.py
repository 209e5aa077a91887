"""Gram matrices for matching pursuit: their storage tiers (float32, or :class:`HalfGram` in float16), the
memory budget that picks one (``ITDA_GRAM_MAX_BYTES``), and :class:`GramCache` for a growing dictionary."""

from __future__ import annotations

import logging
import math
import os
from dataclasses import dataclass

import torch
from torch import Tensor

from itda_core.mp import backends, hugepages

logger = logging.getLogger(__name__)

_CPU_GRAM_CAP = 4 << 30
_GRAM_BLOCK_BYTES = 256 << 20  # GramCache computes new rows in products of at most this size


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


def gram_budget_bytes(device: torch.device | str, freeable: int = 0) -> int:
    """Largest Gram matrix (bytes) the encoder will build on ``device`` before falling back.

    ``ITDA_GRAM_MAX_BYTES`` overrides; else min(4 GiB, 1/4 of available RAM) on CPU and half the
    free memory on CUDA. ``freeable``: bytes on ``device`` the caller holds and would free for it (a kept
    Gram matrix), counted as available.
    """
    env = os.environ.get("ITDA_GRAM_MAX_BYTES")
    if env:
        return int(float(env))
    device = torch.device(device)
    if device.type == "cuda":
        free, _total = torch.cuda.mem_get_info(device)
        return (free + freeable) // 2
    return min(_CPU_GRAM_CAP, (available_ram() + freeable) // 4)


def gram_matrix(atoms: Tensor) -> Tensor:
    """The Gram matrix ``atoms @ atoms.T`` [m, m] (its rows are what the fast MP path reads), on CPU in
    huge pages where the OS offers them (:mod:`itda_core.mp.hugepages`)."""
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
        """[m, m], like the float32 matrix it stands for."""
        return self.rows.shape

    def float(self) -> Tensor:
        """The float32 matrix (for the paths without a float16 kernel)."""
        return self.rows.float()


# Largest atom norm for which float16 Gram entries cannot overflow (|G_ij| <= norm^2 << 65504).
_HALF_MAX_NORM = 100.0


def _half_rows(rows: Tensor) -> tuple[Tensor, Tensor]:
    """float16 copy of float32 Gram rows and each row's largest rounding error (one fused pass on CPU)."""
    if rows.device.type == "cpu" and backends._screened_kernel() is not None:
        from itda_core.mp.screened_kernel import half_rows

        rows = rows.contiguous()
        half = torch.empty(rows.shape, dtype=torch.float16)
        err = torch.empty(rows.shape[0], dtype=torch.float32)
        src, dst, err_np = rows.numpy(), half.view(torch.uint16).numpy(), err.numpy()
        backends._run_rows(half_rows, rows.shape[0], max(1, torch.get_num_threads()),
                  lambda a, b: (src[a:b], dst[a:b], err_np[a:b]))
        return half, err
    half = rows.to(torch.float16)
    return half, (half.float() - rows).abs().amax(dim=1)


def _half_tier_available(device: torch.device, dtype: torch.dtype) -> bool:
    """Whether a float16 Gram matrix can be used: the screened kernel runs on CPU in float32."""
    return device.type == "cpu" and dtype == torch.float32 and backends._screened_kernel() is not None


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


_fallback_warned = False


def _log_fallback(m: int, budget: int) -> None:
    """Say (loudly once, then at INFO) that MP runs the slow textbook loop for lack of Gram memory."""
    global _fallback_warned
    level = logging.INFO if _fallback_warned else logging.WARNING
    _fallback_warned = True
    logger.log(level, "MP: the %d x %d Gram matrix exceeds the memory budget (%.1f GiB; ITDA_GRAM_MAX_BYTES "
               "changes it); using the chunked textbook loop -- much slower", m, m,
               budget / 2**30)
