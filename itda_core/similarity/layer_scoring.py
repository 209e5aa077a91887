"""Matching accuracy of layer x layer similarity matrices (Kornblith et al. 2019), scored as the ITDA paper does.

For an ordered pair of models (A, B) and a layer i of A, the prediction is ``argmax_j S(A_i, B_j)`` and it is
right when it equals i. ``authors`` (the released code) counts all M x M ordered pairs, each model against
itself included, over M * M * L predictions; ``cross`` only the M * (M - 1) pairs of different models. A tie
for the maximum goes to the lowest layer (numpy's argmax) with ``ties="lowest"`` and counts as wrong with
``ties="wrong"``; a row without any finite value is always wrong.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

from itda_core.config.similarity import TIE_RULES
from itda_core.errors import ITDAError

__all__ = ["argmax_layers", "matching_accuracy", "score_matrices"]


def argmax_layers(matrix: np.ndarray, ties: str = "lowest") -> np.ndarray:
    """Column index of each row's maximum (rows = layers of model A, columns = the same layers of model B), or
    -1 where undecided. NaN never wins; a row without any finite value is undecided. A tie for the maximum
    goes to the lowest column with ``ties="lowest"`` (numpy's argmax, as the authors' code) and is undecided
    with ``ties="wrong"``."""
    if ties not in TIE_RULES:
        raise ITDAError(f"ties must be one of {', '.join(TIE_RULES)} (got {ties!r})")
    m = np.asarray(matrix, dtype=np.float64)
    if m.ndim != 2 or m.shape[0] != m.shape[1] or m.shape[0] == 0:
        raise ITDAError(f"layer matching needs a square, non-empty matrix (got shape {m.shape})")
    filled = np.where(np.isnan(m), -np.inf, m)
    best = filled.max(axis=1, keepdims=True)
    is_best = filled == best
    pred = is_best.argmax(axis=1)  # first (lowest) column holding the maximum
    undecided = ~np.isfinite(best[:, 0])
    if ties == "wrong":
        undecided |= is_best.sum(axis=1) > 1
    return np.where(undecided, -1, pred)


def _tied(matrix: np.ndarray) -> int:
    """Rows whose (finite) maximum is held by more than one column."""
    filled = np.where(np.isnan(matrix), -np.inf, np.asarray(matrix, dtype=np.float64))
    best = filled.max(axis=1, keepdims=True)
    return int((((filled == best).sum(axis=1) > 1) & np.isfinite(best[:, 0])).sum())


def matching_accuracy(matrix: np.ndarray, ties: str = "lowest") -> float:
    """Fraction of rows i whose argmax over columns is i (see :func:`argmax_layers` for NaN and ties)."""
    pred = argmax_layers(matrix, ties)
    return float((pred == np.arange(len(pred))).mean())


def score_matrices(matrices: Mapping[tuple[int, int], np.ndarray], n_models: int, ties: str = "lowest",
                   ) -> dict[str, Any]:
    """Both scores of one measure from its layer x layer matrices of every ordered pair ``(a, b)`` of
    ``n_models`` models, self pairs ``(a, a)`` included (all M x M must be there; rows and columns are the
    scored layers only). Returns ``authors`` (right predictions / (M * M * L)), ``cross`` (right predictions of
    the pairs a != b / (M * (M - 1) * L)), ``per_pair`` accuracies, ``predictions`` (argmax index per row,
    -1 undecided) and ``ties`` (rows whose maximum is tied, over all M x M pairs)."""
    if n_models < 2:
        raise ITDAError("layer matching needs at least two models")
    missing = [(a, b) for a in range(n_models) for b in range(n_models) if (a, b) not in matrices]
    if missing:
        raise ITDAError(f"missing similarity matrices for pairs {missing[:4]}: the authors' score needs all "
                        "M x M ordered pairs, each model against itself included")
    sizes = {np.asarray(m).shape for m in matrices.values()}
    if len(sizes) != 1:
        raise ITDAError(f"matrices of different shapes {sorted(sizes)}")
    n_layers = next(iter(sizes))[0]
    right_all = right_cross = tied = 0
    per_pair: dict[tuple[int, int], float] = {}
    predictions: dict[tuple[int, int], np.ndarray] = {}
    for (a, b), m in matrices.items():
        pred = argmax_layers(m, ties)
        right = int((pred == np.arange(n_layers)).sum())
        predictions[(a, b)], per_pair[(a, b)] = pred, right / n_layers
        right_all += right
        right_cross += right if a != b else 0
        tied += _tied(m)
    return {
        "authors": right_all / (n_models * n_models * n_layers),
        "cross": right_cross / (n_models * (n_models - 1) * n_layers),
        "per_pair": per_pair,
        "predictions": predictions,
        "ties": tied,
    }
