"""What every matching-pursuit path shares: input validation, the compute dtype, empty codes, work-chunk sizes."""

from __future__ import annotations

import torch
from torch import Tensor

# Bytes per [chunk, m] work buffer: keeps the chunked loops' memory bounded whatever n is.
_CPU_WORK_BYTES = 128 << 20
_CUDA_WORK_BYTES = 512 << 20


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
    """All-zero codes (int64 indices, coefficients in x's dtype) [n, k] on x's device."""
    n = x.shape[0]
    return (torch.zeros((n, k), dtype=torch.int64, device=x.device),
            torch.zeros((n, k), dtype=x.dtype, device=x.device))


def _default_chunk(m: int, device: torch.device, buffers: int = 1) -> int:
    """Tokens per chunk so that ``buffers`` [chunk, m] float32 buffers stay within the work budget."""
    budget = _CUDA_WORK_BYTES if device.type == "cuda" else _CPU_WORK_BYTES
    return max(1, budget // (4 * m * buffers))
