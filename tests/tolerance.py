"""Float tolerances derived from the dtype's unit roundoff and the sizes involved, never bare constants.

The bounds follow Higham's standard error analysis: a length-n dot product or sum computed in floating
point is off by at most gamma_n = n u / (1 - n u) times the sum of the magnitudes of its terms, where u is
the unit roundoff (half the machine epsilon). Tests multiply these worst-case bounds by the magnitudes at
hand; they are loose for typical data (errors grow like sqrt(n) u) but never below rounding.
"""

from __future__ import annotations

import math

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


def mean_tol(n: int, dtype: torch.dtype = torch.float32, scale: float = 1.0) -> float:
    """Absolute error bound of the mean of n values of magnitude <= ``scale``: an n-term sum and a division."""
    return gamma(n + 1, dtype) * scale


def forward_tol(n_layers: int, d_model: int, d_ff: int, seq_len: int, dtype: torch.dtype = torch.float32) -> float:
    """Per-token relative (norm-wise) error bound of a transformer's hidden state after ``n_layers`` blocks:
    per block, products of length d_model, d_ff and an attention over seq_len, errors adding up the blocks."""
    return gamma(n_layers * (d_model + d_ff + seq_len), dtype)


def log_softmax_tol(v: int, dtype: torch.dtype = torch.float32, scale: float = 1.0) -> float:
    """Absolute error bound of a log-softmax over v logits of magnitude <= ``scale``: the shift and subtraction
    (2 u scale), the v-term sum of exponentials (gamma_{v+1}, absolute after the log) and the log (u log v)."""
    return gamma(v + 1, dtype) + unit_roundoff(dtype) * (2 * scale + math.log(v))


def similarity_tol(n: int, d: int, dtype: torch.dtype = torch.float64, cond: float = 1.0, offset: float = 0.0,
                   input_error: float = 0.0) -> float:
    """Absolute error bound of a linear CKA, R^2 or SVCCA of n x d data in ``dtype``: each centred n-row cross
    product is off by (3 gamma_{n+1} + 2 input_error) |X|_F |Y|_F <= sqrt(d) (1 + offset^2) times its own norm
    (offset: max |column mean| / std), the d x d sums/eigh/pinv add gamma_{d^2}; four products per measure, times
    the condition number ``cond`` a pseudo-inverse or whitening amplifies by."""
    eps = math.sqrt(d) * (1 + offset**2) * (3 * gamma(n + 1, dtype) + 2 * input_error) + gamma(d * d, dtype)
    return 4 * cond * eps


def at_maximum_tol(d: int, delta: float, cond: float = 1.0) -> float:
    """Drop of a similarity at its maximum 1 (CKA, canonical correlations, a cosine) when y carries a relative
    error ``delta``: the angle moves by <= 2 sqrt(d cond) delta and 1 - cos(angle) <= angle^2 / 2 (second order)."""
    return 2 * d * cond * delta**2
