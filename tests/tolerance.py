"""Float tolerances derived from the dtype's unit roundoff and the sizes involved, never bare constants.

The bounds follow Higham's standard error analysis: a length-n dot product or sum computed in floating
point is off by at most gamma_n = n u / (1 - n u) times the sum of the magnitudes of its terms, where u is
the unit roundoff (half the machine epsilon). Tests multiply these worst-case bounds by the magnitudes at
hand; they are loose for typical data (errors grow like sqrt(n) u) but never below rounding.
"""

from __future__ import annotations

import torch


def unit_roundoff(dtype: torch.dtype = torch.float32) -> float:
    """u = eps / 2: the largest relative error of one rounded operation in ``dtype``."""
    return torch.finfo(dtype).eps / 2


def gamma(n: int, dtype: torch.dtype = torch.float32) -> float:
    """Higham's gamma_n = n u / (1 - n u): the relative error bound of an n-term sum or dot product."""
    nu = max(int(n), 1) * unit_roundoff(dtype)
    if nu >= 1:
        raise ValueError(f"n = {n} is too large for a rounding bound in {dtype}")
    return nu / (1 - nu)


def dot_tol(d: int, dtype: torch.dtype = torch.float32, scale: float = 1.0) -> float:
    """Absolute error bound of a length-d dot product whose |terms| sum to at most ``scale``."""
    return gamma(d, dtype) * scale


def cosine_tol(d: int, dtype: torch.dtype = torch.float32) -> float:
    """Absolute error bound of cos(x, y) = x.y / (|x| |y|) computed in ``dtype`` (length-d vectors): one dot
    product, two norms (each a dot product and a square root) and a division."""
    return 3 * gamma(d + 2, dtype)


def mp_tol(d: int, k: int, dtype: torch.dtype = torch.float32, scale: float = 1.0) -> float:
    """Absolute error bound of a k-step MP coefficient or reconstruction over unit atoms of width d, for an
    input of norm ``scale``: every step's correlation is a length-d dot product with a residual of norm at most
    ``scale``, and each update can carry the earlier steps' errors forward, so the bound grows with k (d + 2)."""
    return gamma(k * (d + 2), dtype) * scale
