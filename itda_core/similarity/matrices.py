"""Jaccard matrices: layer x layer (one model, or two models) and model x model.

Each cell is one ``np.intersect1d`` of two sorted int64 arrays (see :mod:`itda_core.similarity.jaccard`),
whose per-dictionary arrays and per-pair counts are cached, so a 30 x 30 matrix of 50k-atom dictionaries
takes about a second the first time and milliseconds after.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
import pandas as pd

from itda_core.dictionary import ITDA
from itda_core.errors import ITDAError
from itda_core.similarity.jaccard import (
    DEFAULT_OPTIONS,
    AtomSet,
    JaccardOptions,
    atom_set,
    model_atom_set,
    pair_universe,
    shared_count,
)

__all__ = ["as_layer_dict", "jaccard_matrix", "labelled_matrix", "model_jaccard_matrix"]


def as_layer_dict(dicts: Mapping[int, ITDA] | Sequence[ITDA]) -> dict[int, ITDA]:
    """``{layer: ITDA}`` from a mapping or a list (keyed by each config's layer), sorted by layer."""
    if isinstance(dicts, Mapping):
        return {int(k): dicts[k] for k in sorted(dicts)}
    out: dict[int, ITDA] = {}
    for itda in dicts:
        if itda.config.layer in out:
            raise ITDAError(f"two dictionaries for layer {itda.config.layer} of {itda.config.model_name}; "
                            "pass a {layer: dictionary} mapping")
        out[itda.config.layer] = itda
    return dict(sorted(out.items()))


def _fill(rows: Sequence[AtomSet], cols: Sequence[AtomSet], symmetric: bool, method: str,
          options: JaccardOptions) -> tuple[np.ndarray, np.ndarray, set[str]]:
    values = np.full((len(rows), len(cols)), np.nan)
    shared = np.zeros((len(rows), len(cols)), dtype=np.int64)
    used: set[str] = set()
    for i, sa in enumerate(rows):
        for j, sb in enumerate(cols):
            if symmetric and j < i:
                values[i, j], shared[i, j] = values[j, i], shared[j, i]
                continue
            n, n_a, n_b, how = shared_count(sa, sb, method)
            used.add(how)
            values[i, j] = options.value(n, n_a, n_b, pair_universe(sa, sb))
            shared[i, j] = n
    return values, shared, used


def _frame(values: np.ndarray, index: list, columns: list, names: tuple[str, str],
           attrs: dict) -> pd.DataFrame:
    df = pd.DataFrame(values, index=pd.Index(index, name=names[0]), columns=pd.Index(columns, name=names[1]))
    df.attrs.update(attrs)
    return df


def _attrs(used: set[str], options: JaccardOptions, **extra: object) -> dict:
    return {**extra, "method": "/".join(sorted(used)), "values": "jaccard", "atoms": options.atoms,
            "index": options.index, "label": options.label}


def _result(values, shared, index, columns, names, attrs, return_shared):
    df = _frame(values, index, columns, names, attrs)
    if not return_shared:
        return df
    return df, _frame(shared, index, columns, names, {**attrs, "values": "shared atoms"})


def jaccard_matrix(dicts_a: Mapping[int, ITDA] | Sequence[ITDA],
                   dicts_b: Mapping[int, ITDA] | Sequence[ITDA] | None = None, *, method: str = "auto",
                   return_shared: bool = False, options: JaccardOptions = DEFAULT_OPTIONS,
                   ) -> pd.DataFrame | tuple[pd.DataFrame, pd.DataFrame]:
    """Layer x layer Jaccard: rows are layers of ``dicts_a``, columns layers of ``dicts_b`` (``dicts_a`` again
    when None: one model, symmetric, diagonal 1). Span-based automatically between different tokenizers.
    ``options``: which atoms count and which index. With ``return_shared`` also a second frame of shared-atom
    counts. ``attrs`` record models, methods and options."""
    a = as_layer_dict(dicts_a)
    b = a if dicts_b is None else as_layer_dict(dicts_b)
    if not a or not b:
        raise ITDAError("no dictionaries to compare")
    rows = [atom_set(d, options) for d in a.values()]
    cols = rows if dicts_b is None else [atom_set(d, options) for d in b.values()]
    values, shared, used = _fill(rows, cols, dicts_b is None, method, options)
    first_a, first_b = next(iter(a.values())).config, next(iter(b.values())).config
    attrs = _attrs(used, options, model_a=first_a.model_name, model_b=first_b.model_name)
    return _result(values, shared, list(a), list(b), ("layer_a", "layer_b"), attrs, return_shared)


def labelled_matrix(items: Mapping[str, ITDA], *, method: str = "auto", return_shared: bool = False,
                    options: JaccardOptions = DEFAULT_OPTIONS) -> pd.DataFrame | tuple[pd.DataFrame, pd.DataFrame]:
    """Symmetric Jaccard matrix of any labelled dictionaries (e.g. every layer of three models)."""
    if not items:
        raise ITDAError("no dictionaries to compare")
    sets = [atom_set(d, options) for d in items.values()]
    values, shared, used = _fill(sets, sets, True, method, options)
    labels = list(items)
    attrs = _attrs(used, options)
    return _result(values, shared, labels, labels, ("dictionary_a", "dictionary_b"), attrs, return_shared)


def model_jaccard_matrix(models: Mapping[str, Mapping[int, ITDA] | Sequence[ITDA]],
                         layers: Sequence[int] | None = None, *, method: str = "auto",
                         return_shared: bool = False, options: JaccardOptions = DEFAULT_OPTIONS,
                         ) -> pd.DataFrame | tuple[pd.DataFrame, pd.DataFrame]:
    """Model x model Jaccard of each model's union over ``layers`` (default 1..n-1 of each model)."""
    if not models:
        raise ITDAError("no models to compare")
    sets = [model_atom_set(as_layer_dict(d), layers, options) for d in models.values()]
    values, shared, used = _fill(sets, sets, True, method, options)
    labels = list(models)
    attrs = _attrs(used, options, layers="1..n-1" if layers is None else ",".join(map(str, sorted(set(layers)))))
    return _result(values, shared, labels, labels, ("model_a", "model_b"), attrs, return_shared)
