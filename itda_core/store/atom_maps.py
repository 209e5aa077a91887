"""The ``atom_umap`` table: stored 2-D atom maps, written and read (the UMAP itself is the job's part,
:mod:`itda_core.jobs.atom_maps`).

A map is a set of rows ``(dict_id, atom, x, y, umap_params)`` sharing one ``umap_params`` JSON string, which
records the UMAP settings, when the map was made and which dictionaries it covers, each with the time it was
written and its size (:func:`fingerprint`): a dictionary replaced later (same ``dict_id``, new atoms) no
longer matches, so a stale map is never read. The table is created by the first stored map
(:data:`itda_core.store.schema.LAZY_TABLES`), so every reader checks for it first.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import duckdb
import numpy as np
import pandas as pd
import pyarrow as pa

from itda_core.errors import ITDAError
from itda_core.store import catalog
from itda_core.store.connection import connect_readonly, connect_write, transaction
from itda_core.store.schema import LAZY_TABLES

TABLE = "atom_umap"
TABLE_SQL = f"CREATE TABLE IF NOT EXISTS {TABLE} ({LAZY_TABLES[TABLE]})"
CONTEXT_CHARS = 40  # characters of source text shown each side of an atom's token on hover


def ensure_table(con: duckdb.DuckDBPyConnection) -> None:
    """Create ``atom_umap`` when the store does not have it yet (needs a write connection)."""
    con.execute(TABLE_SQL)


def has_table(con: duckdb.DuckDBPyConnection) -> bool:
    """Whether the store has an ``atom_umap`` table (a store without a stored map has none)."""
    return catalog.has_table(con, TABLE)


def _id_list(dict_ids: Sequence[int]) -> str:
    """The ids as a SQL list of integers (``1, 2, 3``), safe to inline."""
    return ", ".join(str(int(d)) for d in dict_ids)


def fingerprint(con: duckdb.DuckDBPyConnection, dict_ids: Sequence[int]) -> list[list[Any]]:
    """``[[dict_id, written, n_atoms], ...]`` of the dictionaries, sorted: what a map was computed from."""
    ids = sorted({int(d) for d in dict_ids})
    if not ids:
        raise ITDAError("no dictionaries given for the atom map")
    rows = con.execute(
        f"SELECT dict_id, CAST(written AS VARCHAR), n_atoms FROM dictionaries "
        f"WHERE dict_id IN ({_id_list(ids)}) ORDER BY dict_id"
    ).fetchall()
    found = {int(r[0]) for r in rows}
    missing = [d for d in ids if d not in found]
    if missing:
        raise ITDAError(f"no dictionary {missing} in the store")
    return [[int(d), str(w), int(n)] for d, w, n in rows]


def describe(con: duckdb.DuckDBPyConnection, coords: pd.DataFrame) -> pd.DataFrame:
    """``coords`` (dict_id, atom, x, y) plus model, layer, source token, a context snippet and density (the
    snippets cut in SQL: only :data:`CONTEXT_CHARS` each side leave DuckDB, not every source document)."""
    if coords.empty:
        return coords.assign(model=[], layer=[], token_text=[], before=[], after=[], density=[])
    ids = _id_list(sorted(set(coords["dict_id"])))
    n = int(CONTEXT_CHARS)
    info = con.execute(
        f"""
        SELECT a.dict_id, a.atom, d.model_name AS model, d.layer, a.token_text, s.density,
               COALESCE(substr(doc.text, greatest(a.char_start - {n}, 0) + 1,
                               a.char_start - greatest(a.char_start - {n}, 0)), '') AS before,
               COALESCE(substr(doc.text, a.char_end + 1, {n}), '') AS after
        FROM atoms a JOIN dictionaries d USING (dict_id)
        LEFT JOIN documents doc ON doc.corpus_id = d.corpus_id AND doc.doc_id = a.doc_id
        LEFT JOIN atom_stats s ON s.dict_id = a.dict_id AND s.atom = a.atom
        WHERE a.dict_id IN ({ids})"""
    ).df()
    return coords.merge(info, on=["dict_id", "atom"], how="left")


def matching_params(con: duckdb.DuckDBPyConnection, dict_ids: Sequence[int]) -> str | None:
    """The newest stored ``umap_params`` whose dictionaries are exactly these, unchanged since."""
    if not has_table(con):
        return None
    try:
        wanted = fingerprint(con, dict_ids)
    except ITDAError:
        return None
    first = wanted[0][0]
    candidates = [
        r[0] for r in con.execute(f"SELECT DISTINCT umap_params FROM {TABLE} WHERE dict_id = ?", [first]).fetchall()
    ]
    best, best_created = None, ""
    for text in candidates:
        try:
            payload = json.loads(text)
        except (TypeError, ValueError):
            continue
        if payload.get("dicts") == wanted and str(payload.get("created", "")) >= best_created:
            best, best_created = text, str(payload.get("created", ""))
    return best


def read_atom_map(con: duckdb.DuckDBPyConnection, dict_ids: Sequence[int]) -> pd.DataFrame | None:
    """The stored map of exactly ``dict_ids`` (one dictionary, or several embedded together), described as
    by :func:`describe`, with its ``umap_params`` in ``attrs``; None when none is stored or it is stale."""
    key = matching_params(con, dict_ids)
    if key is None:
        return None
    coords = con.execute(
        f"SELECT dict_id, atom, x, y FROM {TABLE} WHERE umap_params = ? ORDER BY dict_id, atom", [key]
    ).df()
    frame = describe(con, coords)
    frame.attrs["umap_params"] = json.loads(key)
    return frame


def has_map(store: str | Path, dict_ids: Sequence[int]) -> bool:
    """Whether an up-to-date map of exactly ``dict_ids`` (together) is stored."""
    with connect_readonly(store) as con:
        return matching_params(con, dict_ids) is not None


def missing_maps(store: str | Path, dict_ids: Sequence[int] | None = None) -> list[int]:
    """Dictionaries (of ``dict_ids``, default all) without an up-to-date single-dictionary map."""
    with connect_readonly(store) as con:
        ids = catalog.dictionary_ids(con, dict_ids)
        return [d for d in ids if matching_params(con, [d]) is None]


def write_atom_map(
    store: str | Path,
    dict_ids: Sequence[int],
    rows: pd.DataFrame,
    coords: np.ndarray,
    key: str,
    *,
    timeout: float = 600.0,
) -> None:
    """Store the map of ``dict_ids`` together (``rows``: dict_id, atom; ``coords`` [n, 2]; ``key``: its
    ``umap_params`` JSON, :func:`fingerprint` under ``dicts``) in one transaction, replacing older maps of
    exactly those dictionaries (and unreadable ones); creates the table on first use."""
    ids = sorted({int(d) for d in dict_ids})
    table = pa.table(
        {
            "dict_id": pa.array(rows["dict_id"].to_numpy().astype(np.int32)),
            "atom": pa.array(rows["atom"].to_numpy().astype(np.int32)),
            "x": pa.array(coords[:, 0].astype(np.float32)),
            "y": pa.array(coords[:, 1].astype(np.float32)),
            "umap_params": pa.array([key] * len(rows), pa.string()),
        }
    )
    with connect_write(store, timeout=timeout) as con, transaction(con):
        ensure_table(con)
        stale = [
            r[0] for r in con.execute(f"SELECT DISTINCT umap_params FROM {TABLE} WHERE dict_id IN ({_id_list(ids)})")
            .fetchall()
        ]
        for text in stale:
            try:
                covered = sorted(int(d[0]) for d in json.loads(text).get("dicts", []))
            except (TypeError, ValueError, AttributeError, IndexError):
                covered = []
            if covered == ids or not covered:  # the same dictionaries (or unreadable): replace
                con.execute(f"DELETE FROM {TABLE} WHERE umap_params = ?", [text])
        con.register("_umap_in", table)
        con.execute(f"INSERT INTO {TABLE} SELECT * FROM _umap_in")
        con.unregister("_umap_in")


__all__ = [
    "CONTEXT_CHARS",
    "TABLE",
    "TABLE_SQL",
    "describe",
    "ensure_table",
    "fingerprint",
    "has_map",
    "has_table",
    "matching_params",
    "missing_maps",
    "read_atom_map",
    "write_atom_map",
]
