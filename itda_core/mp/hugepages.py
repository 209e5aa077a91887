"""Large CPU buffers backed by transparent huge pages (2 MiB) where Linux offers them.

MP's fast path reads one random Gram row per step (64 KB in float32): with 4 KiB pages that is 16 TLB
misses per row, each a page walk (two-level in a VM) that also stops the hardware prefetcher at the page
boundary. Advising the kernel to back the Gram matrix with huge pages made MP 7-9% faster at
m = 16,384 on the 2-core CPU machine (docs/benchmarks.md). Elsewhere (other OSes, THP disabled, CUDA,
small buffers) this is a plain ``torch.empty``.
"""

from __future__ import annotations

import mmap
from pathlib import Path

import numpy as np
import torch

# Below this the TLB covers the buffer anyway, and one mmap per small buffer would only cost time.
MIN_BYTES = 8 << 20
_THP_SETTING = Path("/sys/kernel/mm/transparent_hugepage/enabled")
_NUMPY = {torch.float32: np.float32, torch.float16: np.float16, torch.float64: np.float64}


def huge_pages_available() -> bool:
    """Whether this OS honours ``madvise(MADV_HUGEPAGE)`` (Linux with THP set to "always" or "madvise")."""
    if not hasattr(mmap, "MADV_HUGEPAGE"):
        return False
    try:
        return "[never]" not in _THP_SETTING.read_text()
    except OSError:
        return False


def empty(shape: tuple[int, ...], dtype: torch.dtype, device: torch.device | str = "cpu") -> torch.Tensor:
    """An uninitialised tensor like ``torch.empty(shape, dtype=dtype, device=device)``; on CPU, when it is
    large and the OS allows, its memory is an anonymous mapping advised to use huge pages.

    The tensor keeps the mapping alive (tensor -> numpy array -> mmap); the memory is unmapped when the
    last of them is freed.
    """
    device = torch.device(device)
    count = int(np.prod(shape, dtype=np.int64))
    nbytes = count * dtype.itemsize
    if device.type != "cpu" or dtype not in _NUMPY or nbytes < MIN_BYTES or not huge_pages_available():
        return torch.empty(shape, dtype=dtype, device=device)
    try:
        region = mmap.mmap(-1, nbytes, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
        region.madvise(mmap.MADV_HUGEPAGE)
    except (OSError, ValueError):  # no memory for a mapping, or madvise refused: the ordinary allocator
        return torch.empty(shape, dtype=dtype)
    return torch.from_numpy(np.frombuffer(region, dtype=_NUMPY[dtype], count=count).reshape(shape))
