"""Atom maps: a 2-D UMAP (umap-learn) of a dictionary's atom vectors, or of several dictionaries together,
computed once and cached in the store's ``atom_umap`` table.

A map is a set of rows ``(dict_id, atom, x, y, umap_params)`` sharing one ``umap_params`` JSON string. That
string records the UMAP settings, when the map was made, and which dictionaries it covers, each with the
time it was written and its size: a dictionary that is replaced later (same ``dict_id``, new atoms) no
longer matches, so a stale map is never shown, and computing again replaces it. The table, writing and
reading maps are the store's (:mod:`itda_core.store.atom_maps`, re-exported here); this module computes them.

Entry points: :func:`compute_atom_maps` (``itda atom-map``; the demo build can call it after indexing),
:func:`choose_dictionaries` (the command's choice by model and layers), :func:`store_atom_map` for one map,
:func:`read_atom_map` and :func:`compute_map_frame` (in memory). The layout itself (exact neighbours, UMAP,
worker processes) is :mod:`itda_core.jobs.umap_layout`.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

import duckdb
import numpy as np
import pandas as pd

from itda_core.config.atom_maps import UmapParams
from itda_core.errors import ITDAError
from itda_core.jobs.umap_layout import default_workers, embed, embed_many
from itda_core.store.atom_maps import (
    CONTEXT_CHARS,
    TABLE,
    TABLE_SQL,
    describe,
    ensure_table,
    fingerprint,
    has_map,
    has_table,
    missing_maps,
    read_atom_map,
    write_atom_map,
)

__all__ = [
    "CONTEXT_CHARS",
    "DEFAULT_PARAMS",
    "TABLE",
    "TABLE_SQL",
    "UmapParams",
    "choose_dictionaries",
    "compute_atom_maps",
    "compute_map_frame",
    "describe",
    "embed",
    "ensure_table",
    "fingerprint",
    "has_map",
    "has_table",
    "missing_maps",
    "read_atom_map",
    "store_atom_map",
]

DEFAULT_PARAMS = UmapParams()  # frozen: one shared default for every entry point


def _vectors(con: duckdb.DuckDBPyConnection, dict_ids: Sequence[int]) -> tuple[np.ndarray, pd.DataFrame]:
    """Stacked vectors of the dictionaries and their (dict_id, atom) rows; widths must agree."""
    from itda_core.store.queries import atom_vectors

    parts, rows = [], []
    for dict_id in sorted({int(d) for d in dict_ids}):
        vectors = atom_vectors(con, dict_id)
        if vectors.size == 0:
            continue
        if parts and vectors.shape[1] != parts[0].shape[1]:
            raise ITDAError(
                "dictionaries of different widths cannot share one map (d_model "
                f"{parts[0].shape[1]} vs {vectors.shape[1]}); map each model's layers separately"
            )
        parts.append(vectors)
        rows.append(pd.DataFrame({"dict_id": dict_id, "atom": np.arange(len(vectors), dtype=np.int64)}))
    if not parts:
        return np.zeros((0, 0), dtype=np.float32), pd.DataFrame({"dict_id": [], "atom": []})
    return np.concatenate(parts), pd.concat(rows, ignore_index=True)


def compute_map_frame(
    con: duckdb.DuckDBPyConnection, dict_ids: Sequence[int], params: UmapParams = DEFAULT_PARAMS
) -> pd.DataFrame:
    """Compute (without storing) the map of ``dict_ids`` together, described as by :func:`describe`."""
    vectors, rows = _vectors(con, dict_ids)
    coords = embed(vectors, params) if len(rows) else np.zeros((0, 2), dtype=np.float32)
    frame = rows.assign(x=coords[:, 0], y=coords[:, 1])
    return describe(con, frame)


def _params_json(params: UmapParams, dicts: list[list[Any]]) -> str:
    """The ``umap_params`` key of a map: its settings, the dictionaries it covers and when it was made."""
    payload = {**asdict(params), "dicts": dicts, "created": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
    return json.dumps(payload, sort_keys=True)


def store_atom_map(
    store: str | Path, dict_ids: Sequence[int], params: UmapParams = DEFAULT_PARAMS, *, timeout: float = 600.0
) -> int:
    """Compute the map of ``dict_ids`` (together) and write it to the store, replacing older maps of the
    same dictionaries; returns the number of atoms mapped. Only the insert holds the write lock."""
    from itda_core.store.connection import connect_readonly

    with connect_readonly(store, timeout=timeout) as con:
        dicts = fingerprint(con, dict_ids)
        vectors, rows = _vectors(con, dict_ids)
    coords = embed(vectors, params) if len(rows) else np.zeros((0, 2), dtype=np.float32)
    write_atom_map(store, [d for d, _, _ in dicts], rows, coords, _params_json(params, dicts), timeout=timeout)
    return len(rows)


def compute_atom_maps(
    store: str | Path,
    dict_ids: Sequence[int] | None = None,
    params: UmapParams = DEFAULT_PARAMS,
    *,
    recompute: bool = False,
    workers: int = 0,
    log: Callable[[str], None] | None = None,
) -> list[int]:
    """A map for each dictionary (default: every dictionary in the store) that lacks an up-to-date one
    (all of them with ``recompute``); returns the dict_ids mapped. ``workers`` processes lay maps out at
    once (0: one per core for a large job, :func:`~itda_core.jobs.umap_layout.default_workers`); this
    process reads the vectors and writes each map as it is finished. The demo build calls this after
    indexing so that the dashboard's atom map opens at once."""
    from itda_core.store.catalog import dictionary_ids
    from itda_core.store.connection import connect_readonly

    if recompute:
        with connect_readonly(store) as con:
            todo = dictionary_ids(con, dict_ids)
    else:
        todo = missing_maps(store, dict_ids)
    if not todo:
        return []
    with connect_readonly(store) as con:
        sizes = {d: n for d, _, n in fingerprint(con, todo)}
    todo = sorted(todo, key=lambda d: -sizes[d])  # largest first: no big map left alone at the end
    if workers <= 0:
        workers = default_workers(len(todo), sum(sizes.values()))
    started: dict[int, float] = {}
    keys: dict[int, tuple[list[list[Any]], pd.DataFrame]] = {}

    def inputs() -> Iterator[tuple[int, np.ndarray]]:
        for dict_id in todo:
            with connect_readonly(store) as con:
                dicts = fingerprint(con, [dict_id])
                vectors, rows = _vectors(con, [dict_id])
            keys[dict_id] = (dicts, rows)
            started[dict_id] = time.perf_counter()
            yield dict_id, vectors

    for i, (dict_id, coords) in enumerate(embed_many(inputs(), params, workers), start=1):
        dicts, rows = keys.pop(dict_id)
        coords = coords if len(rows) else np.zeros((0, 2), dtype=np.float32)
        write_atom_map(store, [d for d, _, _ in dicts], rows, coords, _params_json(params, dicts))
        if log is not None:
            seconds = time.perf_counter() - started.pop(dict_id)
            log(f"[{i}/{len(todo)}] atom map of dictionary {dict_id}: {len(rows)} atoms in {seconds:.1f} s")
    return todo


def choose_dictionaries(
    store: str | Path, models: Sequence[str] | None = None, layers: str | None = None
) -> dict[str, list[int]]:
    """The store's dict_ids grouped by model id (models by name and layers in order), of ``models`` (each a
    name, folder name or model id; default all) at ``layers`` (a spec such as '10-12' read against each
    model's depth; default all): what ``itda atom-map`` maps, one map per dictionary or per model."""
    from itda_core.layers import parse_layers
    from itda_core.store.catalog import dictionary_layers
    from itda_core.store.connection import connect_readonly

    with connect_readonly(store) as con:
        rows = dictionary_layers(con)
    rows.sort(key=lambda r: (r["model_name"] is None, r["model_name"] or "", r["layer"], r["dict_id"]))  # as SQL
    if models:
        wanted = set(models)
        rows = [r for r in rows if {r["model_id"], r["model_name"], Path(r["model_name"]).name.removesuffix(".gguf")}
                & wanted]
        if not rows:
            raise ITDAError(f"no dictionaries of {', '.join(models)} in {store}")
    groups: dict[str, list[int]] = {}
    for r in rows:
        layer = int(r["layer"])
        if layers is not None and layer not in parse_layers(layers, int(r["n_layers"] or layer + 1)):
            continue
        groups.setdefault(r["model_id"], []).append(int(r["dict_id"]))
    if not groups:
        raise ITDAError(f"no dictionaries match in {store}")
    return groups
