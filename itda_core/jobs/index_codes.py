"""The parts of ``itda index`` its two engines share (:mod:`itda_core.jobs.index` in this process,
:mod:`itda_core.jobs.index_ray` on Ray Data): MP codes as sparse rows, the spill folder beside the store, and one
dictionary's index written from its Parquet codes (one file or a list of shards)."""

from __future__ import annotations

import shutil
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import torch

from itda_core.config.index import IndexConfig
from itda_core.leftovers import INDEX_PREFIX, owned_folder
from itda_core.store.held_out import IndexRun, write_index


@contextmanager
def spill_folder(store: Path) -> Iterator[Path]:
    """A folder beside ``store`` for activation spills, named after this process (so that a later run can
    tell that a killed run's folder is stale) and removed on every exit that Python sees."""
    tmp = owned_folder(store.parent, INDEX_PREFIX)
    try:
        yield tmp
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def sparse_codes(indices: torch.Tensor, coefficients: torch.Tensor, n_atoms: int) -> tuple[np.ndarray, ...]:
    """(row, atom, coef) of MP codes with an atom's coefficients summed per row and zero sums dropped."""
    n, k = indices.shape
    rows = np.repeat(np.arange(n, dtype=np.int64), k)
    atoms = indices.reshape(-1).cpu().numpy().astype(np.int64)
    coefs = coefficients.reshape(-1).detach().cpu().numpy().astype(np.float64)
    keys = rows * n_atoms + atoms
    uniq, inverse = np.unique(keys, return_inverse=True)
    sums = np.zeros(len(uniq), dtype=np.float64)
    np.add.at(sums, inverse, coefs)
    keep = sums != 0
    uniq, sums = uniq[keep], sums[keep]
    return (uniq // n_atoms).astype(np.int64), (uniq % n_atoms).astype(np.int32), sums.astype(np.float32)


def write_target_index(store: Path, target: Any, codes_path: Path | Sequence[Path], corpus_id: str, n_docs: int,
                       n_tokens: int, config: IndexConfig, seconds: float) -> str:
    """Store one dictionary's index (``target``: dict_id, k, written; :func:`itda_core.store.held_out.write_index`);
    a reason when skipped, else ''."""
    run = IndexRun(target.dict_id, corpus_id, n_docs, n_tokens, target.k, config.top_n, config.n_quantiles,
                   config.per_quantile, config.hist_bins, config.keep_codes, seconds, target.written)  # fmt: skip
    return write_index(store, run, codes_path, timeout=config.timeout)
