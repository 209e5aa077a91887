"""Which kernels this process can run, loaded lazily: numba on CPU (float32 recurrence, float16-screened),
Triton on CUDA; ``ITDA_MP_NUMBA=0`` / ``ITDA_MP_TRITON=0`` turn them off. Also the MP thread pool.

A kernel that fails to import or compile is reported once and never tried again; the callers then take the
torch Gram loop.
"""

from __future__ import annotations

import itertools
import logging
import os
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from types import ModuleType

logger = logging.getLogger(__name__)

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
                    from itda_core.mp.cpu_kernels import gram_mp_rows

                    _kernel = gram_mp_rows
                except Exception as exc:  # numba missing or unable to compile here
                    _kernel_failed = True
                    logger.warning("numba MP kernel unavailable (%s); using the torch Gram loop", exc)
    return _kernel


def _thread_pool(threads: int) -> ThreadPoolExecutor:
    """The shared pool of ``threads`` MP worker threads (rebuilt when the count changes)."""
    global _pool, _pool_size
    with _lock:
        if _pool is None or _pool_size != threads:
            if _pool is not None:
                _pool.shutdown(wait=False)
            _pool = ThreadPoolExecutor(max_workers=threads, thread_name_prefix="itda-mp")
            _pool_size = threads
        return _pool


_screened: Callable[..., None] | None = None


def _screened_kernel() -> Callable[..., None] | None:
    """The float16-screened CPU kernel, or None where numba is disabled or unusable."""
    global _screened
    if _numba_kernel() is None:
        return None
    if _screened is None:
        from itda_core.mp.screened_kernel import screened_mp_rows

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


_triton_failed = False


def _triton_module() -> ModuleType | None:
    """:mod:`itda_core.mp.cuda_kernels` when its Triton kernels are usable, else None (torch loop on CUDA)."""
    global _triton_failed
    if os.environ.get("ITDA_MP_TRITON", "1") == "0" or _triton_failed:
        return None
    try:
        from itda_core.mp import cuda_kernels
    except Exception as exc:
        _triton_failed = True
        logger.warning("MP kernels unavailable (%s); using the torch Gram loop on CUDA", exc)
        return None
    if getattr(cuda_kernels, "triton", None) is None:
        _triton_failed = True
        return None
    return cuda_kernels


def _disable_triton() -> None:
    """Stop using the Triton kernels in this process (one failed to compile or run here)."""
    global _triton_failed
    _triton_failed = True
