"""Activation-based similarity baselines the paper compares ITDA Jaccard against.

All take activations of the same n tokens, ``x`` [n, d1] and ``y`` [n, d2], and compute in float64 (float32
on MPS, which has no float64) on ``x``'s device, streaming over rows in chunks so that no [n, d] float64
copy is ever made. Formulas and readings are in docs/similarity.md.

* :func:`linear_cka`: Kornblith et al. 2019, ``||Xc^T Yc||_F^2 / (||Xc^T Xc||_F ||Yc^T Yc||_F)``.
* :func:`linear_cka_feature_normalised`: the ITDA authors' variant: every centred column divided by its norm.
* :func:`svcca`: top ``n_directions`` principal directions of each, then the mean canonical correlation.
* :func:`relative_similarity`: cosines to shared random anchor tokens, then the mean cosine of the two
  relative vectors of each token.
* :func:`linear_regression_r2`: R^2 of least-squares y ~ x W + b (asymmetric).

Each measure is split into a per-matrix ``prepare`` and a cheap ``pair`` step, so :func:`baseline_matrix`
prepares every layer once.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import pandas as pd
import torch
from torch import Tensor

from itda_core.errors import ITDAError

__all__ = [
    "MEASURES",
    "baseline_matrix",
    "collect_activations",
    "linear_cka",
    "linear_cka_feature_normalised",
    "linear_regression_r2",
    "relative_similarity",
    "svcca",
]

CHUNK_ROWS = 8192
_EPS = 1e-12


def _work_dtype(device: torch.device) -> torch.dtype:
    return torch.float32 if device.type == "mps" else torch.float64


def _check_pair(x: Tensor, y: Tensor) -> None:
    if x.ndim != 2 or y.ndim != 2:
        raise ITDAError(f"activations must be [n, d] matrices, got shapes {tuple(x.shape)} and "
                        f"{tuple(y.shape)}")
    if x.shape[0] != y.shape[0]:
        raise ITDAError(f"x has {x.shape[0]} rows but y has {y.shape[0]}; baselines need the same tokens "
                        "in both")
    if x.shape[0] < 2:
        raise ITDAError("baselines need at least 2 tokens")


@dataclass
class _Stats:
    """A matrix with its column means and column scales (1, or 1/norm for the feature-normalised CKA)."""

    x: Tensor
    mean: Tensor
    scale: Tensor
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def dtype(self) -> torch.dtype:
        return self.mean.dtype

    @property
    def device(self) -> torch.device:
        return self.mean.device

    def chunk(self, i: int, rows: int = CHUNK_ROWS, device: torch.device | None = None) -> Tensor:
        """Rows i..i+rows, centred and scaled, in the work dtype (on ``device``, default the stats' own)."""
        block = self.x[i : i + rows].to(device=self.device, dtype=self.dtype)
        out = (block - self.mean) * self.scale
        return out if device is None else out.to(device)


def _stats(x: Tensor, normalise_features: bool = False) -> _Stats:
    """Column means (and inverse column norms of the centred data when ``normalise_features``)."""
    dtype = _work_dtype(x.device)
    total = torch.zeros(x.shape[1], dtype=dtype, device=x.device)
    for i in range(0, x.shape[0], CHUNK_ROWS):
        total += x[i : i + CHUNK_ROWS].to(dtype).sum(0)
    mean = total / x.shape[0]
    scale = torch.ones_like(mean)
    st = _Stats(x, mean, scale)
    if normalise_features:
        ss = torch.zeros_like(mean)
        for i in range(0, x.shape[0], CHUNK_ROWS):
            ss += st.chunk(i).pow(2).sum(0)
        st.scale = 1.0 / (ss.sqrt() + _EPS)
    return st


def _cross_direct(a: _Stats, b: _Stats) -> Tensor:
    """``A^T B`` of the centred (scaled) matrices, [d1, d2], accumulated chunk by chunk on ``a``'s device."""
    out = torch.zeros((a.x.shape[1], b.x.shape[1]), dtype=a.dtype, device=a.device)
    for i in range(0, a.x.shape[0], CHUNK_ROWS):
        out += a.chunk(i).T @ b.chunk(i, device=a.device).to(a.dtype)
    return out


# Plain (centred, unscaled) cross products of the current pair, keyed by the two matrices' identities; None
# outside :func:`shared_cross_products`.
_CROSS_CACHE: dict[tuple[int, int], Tensor] | None = None


@contextmanager
def shared_cross_products() -> Iterator[None]:
    """Inside this block the centred ``A^T B`` of two activation matrices is computed once and reused by every
    measure that needs it (CKA, feature-normalised CKA = diag(s_a) C diag(s_b), R^2 both ways, as C^T).
    Keys are the tensors' identities: use it around one pair's measures, while both tensors are alive."""
    global _CROSS_CACHE
    previous, _CROSS_CACHE = _CROSS_CACHE, {}
    try:
        yield
    finally:
        _CROSS_CACHE = previous


def _cross(a: _Stats, b: _Stats) -> Tensor:
    """``A^T B`` of the centred (scaled) matrices; shared across measures inside :func:`shared_cross_products`."""
    cache = _CROSS_CACHE
    if cache is None or a.device != b.device or a.dtype != b.dtype:
        return _cross_direct(a, b)
    plain = cache.get((id(a.x), id(b.x)))
    if plain is None:
        flipped = cache.get((id(b.x), id(a.x)))
        if flipped is not None:
            plain = flipped.T
        else:
            ones_a, ones_b = torch.ones_like(a.mean), torch.ones_like(b.mean)
            plain = _cross_direct(_Stats(a.x, a.mean, ones_a), _Stats(b.x, b.mean, ones_b))
            cache[(id(a.x), id(b.x))] = plain
    return a.scale[:, None] * plain * b.scale[None, :]


# ---- linear CKA -------------------------------------------------------------------------------------------
def _prepare_cka(x: Tensor, normalise_features: bool = False) -> _Stats:
    st = _stats(x, normalise_features)
    st.extra["self"] = torch.linalg.matrix_norm(_cross(st, st))
    return st


def _pair_cka(a: _Stats, b: _Stats) -> float:
    denom = float(a.extra["self"]) * float(b.extra["self"])
    if denom <= 0:
        return float("nan")
    return float(_cross(a, b).pow(2).sum()) / denom


def linear_cka(x: Tensor, y: Tensor) -> float:
    """Linear CKA (Kornblith et al. 2019) of column-centred x and y: invariant to orthogonal transforms and
    isotropic scaling; symmetric; 1 for identical inputs."""
    _check_pair(x, y)
    return _pair_cka(_prepare_cka(x), _prepare_cka(y))


def linear_cka_feature_normalised(x: Tensor, y: Tensor) -> float:
    """Linear CKA after centring each column and dividing it by its norm (the ITDA authors' code), so every
    feature weighs the same; no longer invariant to orthogonal transforms."""
    _check_pair(x, y)
    return _pair_cka(_prepare_cka(x, True), _prepare_cka(y, True))


# ---- SVCCA ----------------------------------------------------------------------------------------------
def _prepare_svcca(x: Tensor, n_directions: int = 20) -> Tensor:
    """Whitened top principal components of x: [n, k] with orthonormal columns (k <= n_directions)."""
    if n_directions < 1:
        raise ITDAError(f"n_directions must be positive (got {n_directions})")
    st = _stats(x)
    cov = _cross(st, st)
    evals, evecs = torch.linalg.eigh(cov)  # ascending
    evals, evecs = evals.flip(0), evecs.flip(1)
    tol = evals[0].clamp_min(0) * max(cov.shape[0], 1) * torch.finfo(cov.dtype).eps * 10
    k = int(min(n_directions, int((evals > tol).sum())))
    if k == 0:
        return torch.zeros((x.shape[0], 0), dtype=st.dtype, device=st.device)
    proj = evecs[:, :k] / evals[:k].sqrt()
    return torch.cat([st.chunk(i) @ proj for i in range(0, x.shape[0], CHUNK_ROWS)])


def _pair_svcca(qx: Tensor, qy: Tensor) -> float:
    k = min(qx.shape[1], qy.shape[1])
    if k == 0:
        return float("nan")
    corr = torch.linalg.svdvals(qx.T @ qy.to(qx.device, qx.dtype)).clamp(0.0, 1.0)
    return float(corr[:k].mean())


def svcca(x: Tensor, y: Tensor, n_directions: int = 20) -> float:
    """SVCCA (Raghu et al. 2017): keep each input's top ``n_directions`` principal directions, then the mean
    of the canonical correlations between the two reduced sets. Symmetric; 1 for identical inputs."""
    _check_pair(x, y)
    return _pair_svcca(_prepare_svcca(x, n_directions), _prepare_svcca(y, n_directions))


# ---- relative representations ---------------------------------------------------------------------------
def anchor_indices(n: int, n_anchors: int = 300, seed: int = 0) -> Tensor:
    """The anchor rows: ``n_anchors`` distinct indices drawn from ``range(n)`` with ``seed`` (CPU generator,
    so the same on every device)."""
    if n_anchors < 1:
        raise ITDAError(f"n_anchors must be positive (got {n_anchors})")
    gen = torch.Generator().manual_seed(seed)
    return torch.randperm(n, generator=gen)[: min(n_anchors, n)]


def _prepare_relative(x: Tensor, anchors: Tensor) -> Tensor:
    """Unit-norm relative vectors: row i is cos(x_i, x_anchor) for every anchor, then normalised. [n, a]."""
    dtype = _work_dtype(x.device)
    a = torch.nn.functional.normalize(x[anchors.to(x.device)].to(dtype), dim=1)
    parts = []
    for i in range(0, x.shape[0], CHUNK_ROWS):
        block = torch.nn.functional.normalize(x[i : i + CHUNK_ROWS].to(dtype), dim=1)
        rel = block @ a.T
        parts.append(torch.nn.functional.normalize(rel, dim=1).float())
    return torch.cat(parts)


def _pair_relative(rx: Tensor, ry: Tensor) -> float:
    dtype = _work_dtype(rx.device)
    total = 0.0
    for i in range(0, rx.shape[0], CHUNK_ROWS):
        a = rx[i : i + CHUNK_ROWS].to(dtype)
        b = ry[i : i + CHUNK_ROWS].to(rx.device, dtype)
        total += float((a * b).sum())
    return total / rx.shape[0]


def relative_similarity(x: Tensor, y: Tensor, n_anchors: int = 300, seed: int = 0) -> float:
    """Relative representations (Moschella et al. 2023): each token as its cosines to the same random anchor
    tokens in both inputs, then the mean over tokens of the cosine between its two relative vectors."""
    _check_pair(x, y)
    anchors = anchor_indices(x.shape[0], n_anchors, seed)
    return _pair_relative(_prepare_relative(x, anchors), _prepare_relative(y, anchors))


# ---- linear regression ----------------------------------------------------------------------------------
def _prepare_r2(x: Tensor) -> _Stats:
    """Means, the pseudo-inverse of the centred Gram matrix (as predictor) and the total sum of squares
    (as target)."""
    st = _stats(x)
    gram = _cross(st, st)
    evals, evecs = torch.linalg.eigh(gram)
    tol = evals.max().clamp_min(0) * max(gram.shape[0], 1) * torch.finfo(gram.dtype).eps * 10
    keep = evals > tol
    inv = torch.zeros_like(evals)
    inv[keep] = 1.0 / evals[keep]
    st.extra["pinv"] = (evecs * inv) @ evecs.T
    st.extra["ss_tot"] = float(torch.diagonal(gram).sum())
    return st


def _pair_r2(a: _Stats, b: _Stats) -> float:
    """R^2 of predicting b from a (least squares with intercept), summed over all of b's dimensions."""
    ss_tot = b.extra["ss_tot"]
    if ss_tot <= 0:
        return float("nan")
    cxy = _cross(a, b)
    explained = float(((a.extra["pinv"] @ cxy) * cxy).sum())
    return explained / ss_tot


def linear_regression_r2(x: Tensor, y: Tensor) -> float:
    """R^2 = 1 - ||y - (x W + b)||^2 / ||y - mean(y)||^2 of the least-squares fit predicting y from x (all of
    y's dimensions pooled). Asymmetric: r2(x, y) != r2(y, x) in general; 1 when y is an affine map of x."""
    _check_pair(x, y)
    return _pair_r2(_prepare_r2(x), _prepare_r2(y))


# ---- matrices -------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Measure:
    """A baseline split into a per-matrix preparation and a pairwise score."""

    name: str
    prepare: Callable[..., Any]
    pair: Callable[[Any, Any], float]
    symmetric: bool


def _relative_prepare(x: Tensor, n_anchors: int = 300, seed: int = 0) -> Tensor:
    return _prepare_relative(x, anchor_indices(x.shape[0], n_anchors, seed))


MEASURES: dict[str, Measure] = {
    "cka": Measure("linear CKA", _prepare_cka, _pair_cka, True),
    "cka_normalised": Measure("linear CKA, feature-normalised", lambda x: _prepare_cka(x, True), _pair_cka,
                              True),
    "svcca": Measure("SVCCA", _prepare_svcca, _pair_svcca, True),
    "relative": Measure("relative representations", _relative_prepare, _pair_relative, True),
    "r2": Measure("linear regression R^2", _prepare_r2, _pair_r2, False),
}
_ALIASES = {"linear_cka": "cka", "linear_cka_feature_normalised": "cka_normalised",
            "cka_feature_normalised": "cka_normalised", "cka_normalized": "cka_normalised",
            "relative_similarity": "relative", "linear_regression_r2": "r2", "linreg_r2": "r2",
            "linreg": "r2"}


def _measure(name: str) -> Measure:
    key = _ALIASES.get(name.lower(), name.lower())
    if key not in MEASURES:
        raise ITDAError(f"unknown similarity measure {name!r}; use one of {', '.join(MEASURES)}")
    return MEASURES[key]


def baseline_matrix(acts_a: Mapping[int, Tensor], acts_b: Mapping[int, Tensor] | None = None,
                    measure: str = "cka", **options: Any) -> pd.DataFrame:
    """Layer x layer matrix of ``measure`` (cka, cka_normalised, svcca, relative, r2): rows are layers of
    ``acts_a``, columns of ``acts_b`` (``acts_a`` when None). For r2 a cell is R^2 of predicting the column
    layer from the row layer. ``options`` go to the measure (n_directions, n_anchors, seed)."""
    m = _measure(measure)
    layers_a = sorted(acts_a)
    b = acts_a if acts_b is None else acts_b
    layers_b = sorted(b)
    if not layers_a or not layers_b:
        raise ITDAError("no activations to compare")
    reference = acts_a[layers_a[0]]
    for t in [*(acts_a[la] for la in layers_a), *(b[lb] for lb in layers_b)]:
        _check_pair(reference, t)
    prepared_a = {layer: m.prepare(acts_a[layer], **options) for layer in layers_a}
    prepared_b = prepared_a if acts_b is None else {
        layer: m.prepare(b[layer], **options) for layer in layers_b}
    values = [[float("nan")] * len(layers_b) for _ in layers_a]
    for i, la in enumerate(layers_a):
        for j, lb in enumerate(layers_b):
            if acts_b is None and m.symmetric and j < i:
                values[i][j] = values[j][i]
                continue
            values[i][j] = m.pair(prepared_a[la], prepared_b[lb])
    df = pd.DataFrame(values, index=pd.Index(layers_a, name="layer_a"),
                      columns=pd.Index(layers_b, name="layer_b"))
    df.attrs.update({"measure": m.name, "values": measure})
    return df


# ---- activations ----------------------------------------------------------------------------------------
def collect_activations(model: Any, corpus: Any, layers: Sequence[int], n_tokens: int = 100_000, *,
                        seq_len: int = 128, batch_size: int = 32, skip_special_tokens: bool = False,
                        device: str | torch.device | None = "cpu", dtype: torch.dtype = torch.float32,
                        progress: bool = False) -> dict[int, Tensor]:
    """The first ``n_tokens`` activations of each layer in corpus order (the paper uses 100k), as
    ``{layer: [n, d_model]}`` on ``device`` (None: the model's). Memory: n_tokens x d_model x 4 bytes per
    layer in float32 (100k x 576 -> 230 MB); rows of every layer are the same tokens."""
    from itda_core.extraction import extract

    if n_tokens < 1:
        raise ITDAError(f"n_tokens must be positive (got {n_tokens})")
    target = torch.device(device) if device is not None else model.device
    chosen = sorted(set(layers))
    out = {layer: torch.empty((n_tokens, model.d_model), dtype=dtype, device=target) for layer in chosen}
    done = 0
    for batch in extract(model, corpus, chosen, seq_len=seq_len, batch_size=batch_size,
                         skip_special_tokens=skip_special_tokens, max_tokens=n_tokens, progress=progress):
        n = len(batch)
        for layer in chosen:
            out[layer][done : done + n] = batch.acts[layer].to(device=target, dtype=dtype)
        done += n
    if done == 0:
        raise ITDAError("the corpus gave no tokens")
    return {layer: t[:done] if done < n_tokens else t for layer, t in out.items()}
