"""Every measure's layer x layer matrices over the layer-matching benchmark's runs, self pairs included.

The linear measures (CKA textbook and feature-normalised, R^2 with and without intercept) come from block
cross-products of all layers at once; the other baselines go cell by cell through
:mod:`itda_core.similarity.baselines`; Jaccard through :func:`itda_core.similarity.matrices.jaccard_matrix`
with the config's ``jaccard_options`` (:func:`jaccard_matrices` is the one place they are used).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch
from torch import Tensor

from itda_core.config.similarity import LayerMatchingConfig
from itda_core.errors import ITDAError
from itda_core.similarity.layer_runs import ModelRun

__all__ = ["LINEAR", "baseline_matrices", "jaccard_call_options", "jaccard_matrices", "linear_matrices"]


LINEAR = ("cka", "cka_normalised", "r2", "r2_no_intercept")  # built on cross-products, done blockwise below
CHUNK_ROWS = 8192
# Blockwise variants: how columns are shifted and scaled before the cross-products, and what uses them.
_VARIANTS = {
    "centred": ("cka", "r2"),  # centred columns
    "normalised": ("cka_normalised",),  # centred, each column divided by its norm (the authors' CKA)
    "raw": ("r2_no_intercept",),  # neither centred nor scaled (the authors' regression, no intercept)
}


def _column_stats(run: ModelRun, layers: list[int], variant: str) -> tuple[Tensor, Tensor, Tensor]:
    """(shift, scale, mean) of the columns of all of ``run``'s layers side by side ([L*d] each): rows become
    ``(x - shift) * scale``. Shift is the column mean (0 for ``raw``), scale 1 or 1/norm of the centred column
    for ``normalised`` (as in ``baselines``)."""
    dtype = torch.float64 if run.activations[layers[0]].device.type != "mps" else torch.float32
    x0 = run.activations[layers[0]]
    total = torch.zeros(len(layers) * x0.shape[1], dtype=dtype, device=x0.device)
    sq = torch.zeros_like(total)
    n = x0.shape[0]
    for i in range(0, n, CHUNK_ROWS):
        block = torch.cat([run.activations[la][i : i + CHUNK_ROWS] for la in layers], dim=1).to(dtype)
        total += block.sum(0)
    mean = total / n
    if variant == "raw":
        return torch.zeros_like(mean), torch.ones_like(mean), mean
    if variant == "centred":
        return mean, torch.ones_like(mean), mean
    for i in range(0, n, CHUNK_ROWS):
        block = torch.cat([run.activations[la][i : i + CHUNK_ROWS] for la in layers], dim=1).to(dtype) - mean
        sq += block.pow(2).sum(0)
    return mean, 1.0 / (sq.sqrt() + 1e-12), mean


def _cross_all(a: ModelRun, b: ModelRun, layers: list[int], stats_a: tuple[Tensor, ...],
               stats_b: tuple[Tensor, ...]) -> Tensor:
    """``A^T B`` of the shifted (scaled) activations of all layers side by side: [L*d_a, L*d_b], one big
    product per row chunk (every layer pair at once, no per-cell re-centring)."""
    (ma, sa, _), (mb, sb, _) = stats_a, stats_b
    n = a.activations[layers[0]].shape[0]
    out = torch.zeros((ma.shape[0], mb.shape[0]), dtype=ma.dtype, device=ma.device)
    for i in range(0, n, CHUNK_ROWS):
        xa = (torch.cat([a.activations[la][i : i + CHUNK_ROWS] for la in layers], dim=1).to(ma.dtype) - ma) * sa
        xb = (torch.cat([b.activations[la][i : i + CHUNK_ROWS] for la in layers], dim=1).to(ma.device, ma.dtype)
              - mb.to(ma.device)) * sb.to(ma.device)
        out += xa.T @ xb
    return out


def linear_matrices(runs: Sequence[ModelRun], layers: list[int], measures: Sequence[str],
                    ) -> dict[str, dict[tuple[int, int], np.ndarray]]:
    """CKA (textbook and feature-normalised) and R^2 (with and without intercept) for every ordered pair,
    self pairs included, from block cross-products: the same formulas as
    :mod:`itda_core.similarity.baselines` (tests check the values agree; R^2 without intercept is
    ``1 - ||Y - X pinv(X) Y||^2 / ||Y - mean(Y)||^2`` as in the authors' code), computed as one [L*d, L*d]
    product per model pair instead of L^2 separate cells."""
    n_layers = len(layers)
    out: dict[str, dict[tuple[int, int], np.ndarray]] = {m: {} for m in measures}
    for variant, names in _VARIANTS.items():
        wanted = [m for m in measures if m in names]
        if not wanted:
            continue
        stats = [_column_stats(r, layers, variant) for r in runs]
        d = [r.activations[layers[0]].shape[1] for r in runs]
        n_rows = runs[0].activations[layers[0]].shape[0]
        grams = [_cross_all(r, r, layers, stats[k], stats[k]) for k, r in enumerate(runs)]
        blocks = [g.view(n_layers, d[k], n_layers, d[k]).diagonal(dim1=0, dim2=2).permute(2, 0, 1)
                  for k, g in enumerate(grams)]  # [L, d, d]: each layer's own Gram
        cka_key = next((m for m in wanted if m.startswith("cka")), None)
        r2_key = next((m for m in wanted if m.startswith("r2")), None)
        self_norm = [torch.linalg.matrix_norm(bl) for bl in blocks] if cka_key else []  # [L]
        pinv = [torch.linalg.pinv(bl, hermitian=True) for bl in blocks] if r2_key else []
        sq_sum = [bl.diagonal(dim1=1, dim2=2).sum(1) for bl in blocks]  # [L]: ||Y - shift||^2 per layer
        # total sum of squares about the mean (for "centred" that is sq_sum itself)
        ss_tot = [s - n_rows * stats[k][2].view(n_layers, d[k]).pow(2).sum(1) if variant == "raw" else s
                  for k, s in enumerate(sq_sum)]
        for a in range(len(runs)):
            for b in range(a, len(runs)):
                cross = grams[a] if a == b else _cross_all(runs[a], runs[b], layers, stats[a], stats[b])
                cb = cross.view(n_layers, d[a], n_layers, d[b]).permute(0, 2, 1, 3)  # [La, Lb, da, db]
                if cka_key:
                    denom = self_norm[a][:, None] * self_norm[b][None, :].to(self_norm[a].device)
                    cka = (cb.pow(2).sum((2, 3)) / denom).cpu().numpy()
                    out[cka_key][(a, b)], out[cka_key][(b, a)] = cka, cka.T
                if r2_key:
                    directions = ((a, b, cb),) if a == b else ((a, b, cb), (b, a, cb.permute(1, 0, 3, 2)))
                    for x, y, c in directions:  # x predicts y
                        explained = (torch.einsum("ipq,ijqr->ijpr", pinv[x].to(c.device), c) * c).sum((2, 3))
                        tot = ss_tot[y].to(c.device)[None, :]
                        if variant == "raw":  # residual = ||Y||^2 - explained (no intercept)
                            r2 = 1.0 - (sq_sum[y].to(c.device)[None, :] - explained) / tot
                        else:
                            r2 = explained / tot
                        out[r2_key][(x, y)] = r2.cpu().numpy()
    return out


def baseline_matrices(runs: Sequence[ModelRun], layers: list[int], measure: str,
                      config: LayerMatchingConfig) -> dict[tuple[int, int], np.ndarray]:
    """Every ordered pair's layer x layer matrix (self pairs included) of one baseline; each (model, layer)
    is prepared once."""
    from itda_core.similarity.baselines import MEASURES

    m = MEASURES[measure]
    options: dict[str, Any] = {}
    if measure == "svcca":
        options["n_directions"] = config.n_directions
    if measure == "relative":
        options.update(n_anchors=config.n_anchors, seed=config.anchor_seed)
    prepared = [{layer: m.prepare(run.activations[layer], **options) for layer in layers} for run in runs]
    out = {}
    for a in range(len(runs)):
        for b in range(len(runs)):
            if m.symmetric and (b, a) in out:
                out[(a, b)] = out[(b, a)].T
                continue
            out[(a, b)] = np.array([[m.pair(prepared[a][i], prepared[b][j]) for j in layers] for i in layers])
    return out


def jaccard_call_options(options: Mapping[str, Any] | None) -> dict[str, Any]:
    """Keyword arguments for ``jaccard_matrix`` from the config's ``jaccard_options``: ``atoms``, ``index`` and
    ``min_atoms`` (JSON-friendly) become a :class:`JaccardOptions`; anything else (``method``, ``options``)
    goes as is."""
    from itda_core.similarity.jaccard import JaccardOptions

    opts = dict(options or {})
    fields = {k: opts.pop(k) for k in ("atoms", "index", "min_atoms") if k in opts}
    if fields:
        if "options" in opts:
            raise ITDAError("jaccard_options: give either 'options' or 'atoms'/'index'/'min_atoms', not both")
        opts["options"] = JaccardOptions(**fields)
    return opts


def jaccard_matrices(runs: Sequence[ModelRun], layers: list[int], options: Mapping[str, Any] | None = None,
                     ) -> tuple[dict[tuple[int, int], np.ndarray], str]:
    """Every ordered pair's layer x layer Jaccard matrix, self pairs included, and the variant's label.
    ``options`` (the config's ``jaccard_options``, see :func:`jaccard_call_options`) go to every
    ``jaccard_matrix`` call: the one place where Jaccard variants (which atoms count, chance correction, ...)
    plug into the benchmark. A pair (b, a) is taken as the transpose of (a, b), so the options must keep the
    index symmetric."""
    from itda_core.similarity.matrices import jaccard_matrix

    opts = jaccard_call_options(options)
    out = {}
    label = ""
    for a in range(len(runs)):
        for b in range(len(runs)):
            if (b, a) in out:
                out[(a, b)] = out[(b, a)].T
                continue
            da = {layer: runs[a].dictionaries[layer] for layer in layers}
            db = {layer: runs[b].dictionaries[layer] for layer in layers}
            frame = jaccard_matrix(da, db, **opts)
            label = str(frame.attrs.get("label", "")) or label
            out[(a, b)] = np.asarray(frame.to_numpy(), dtype=np.float64)
    return out, label
