"""Atom maps: a 2-D UMAP (umap-learn) of a dictionary's atom vectors, or of several dictionaries together,
computed once and cached in the store's ``atom_umap`` table.

A map is a set of rows ``(dict_id, atom, x, y, umap_params)`` sharing one ``umap_params`` JSON string. That
string records the UMAP settings, when the map was made, and which dictionaries it covers, each with the
time it was written and its size: a dictionary that is replaced later (same ``dict_id``, new atoms) no
longer matches, so a stale map is never shown, and computing again replaces it. Writing goes through the
store's write connection in one transaction (:func:`itda_core.store.connection.connect_write`); reading
(:func:`read_atom_map`) takes any open connection, e.g. the dashboard's read-only one.

Entry points: :func:`compute_atom_maps` (``itda atom-map``; the demo build can call it after indexing),
:func:`store_atom_map` for one map, :func:`read_atom_map` and :func:`compute_map_frame` (in memory).
"""

from __future__ import annotations

import json
import time
import warnings
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import duckdb
import numpy as np
import pandas as pd
import pyarrow as pa

from itda_core.errors import ITDAError
from itda_core.extras import require

TABLE = "atom_umap"
TABLE_SQL = f"""CREATE TABLE IF NOT EXISTS {TABLE} (
    dict_id INTEGER,
    atom INTEGER,
    x FLOAT,
    y FLOAT,
    umap_params VARCHAR)"""
CONTEXT_CHARS = 40  # characters of source text shown each side of an atom's token on hover


@dataclass(frozen=True)
class UmapParams:
    """UMAP settings (cosine between unit atoms; a fixed seed makes maps reproducible)."""

    n_neighbors: int = 15
    min_dist: float = 0.1
    metric: str = "cosine"
    seed: int = 0


def ensure_table(con: duckdb.DuckDBPyConnection) -> None:
    """Create ``atom_umap`` when the store does not have it yet (needs a write connection)."""
    con.execute(TABLE_SQL)


def has_table(con: duckdb.DuckDBPyConnection) -> bool:
    """Whether the store has an ``atom_umap`` table."""
    rows = con.execute(
        "SELECT 1 FROM information_schema.tables WHERE table_schema = 'main' AND table_name = ?", [TABLE]
    ).fetchall()
    return bool(rows)


def fingerprint(con: duckdb.DuckDBPyConnection, dict_ids: Sequence[int]) -> list[list[Any]]:
    """``[[dict_id, written, n_atoms], ...]`` of the dictionaries, sorted: what a map was computed from."""
    ids = sorted({int(d) for d in dict_ids})
    if not ids:
        raise ITDAError("no dictionaries given for the atom map")
    rows = con.execute(
        f"SELECT dict_id, CAST(written AS VARCHAR), n_atoms FROM dictionaries "
        f"WHERE dict_id IN ({', '.join(map(str, ids))}) ORDER BY dict_id"
    ).fetchall()
    found = {int(r[0]) for r in rows}
    missing = [d for d in ids if d not in found]
    if missing:
        raise ITDAError(f"no dictionary {missing} in the store")
    return [[int(d), str(w), int(n)] for d, w, n in rows]


def embed(vectors: np.ndarray, params: UmapParams = UmapParams()) -> np.ndarray:
    """2-D coordinates [n, 2] of ``vectors`` [n, d]; tiny inputs (fewer than 4 rows) get a line."""
    n = len(vectors)
    if n < 4:
        return np.column_stack([np.arange(n, dtype=np.float32), np.zeros(n, dtype=np.float32)])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # umap-learn warns that a seed disables parallelism
        umap = require("umap", "viz", "an atom map")
        reducer = umap.UMAP(
            n_neighbors=max(2, min(params.n_neighbors, n - 1)),
            min_dist=params.min_dist,
            metric=params.metric,
            random_state=params.seed,
            init="spectral" if n > 64 else "random",
        )
        coords = reducer.fit_transform(np.asarray(vectors, dtype=np.float32))
    return np.asarray(coords, dtype=np.float32)


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


def describe(con: duckdb.DuckDBPyConnection, coords: pd.DataFrame) -> pd.DataFrame:
    """``coords`` (dict_id, atom, x, y) plus model, layer, source token, a context snippet and density."""
    if coords.empty:
        return coords.assign(model=[], layer=[], token_text=[], before=[], after=[], density=[])
    ids = ", ".join(str(int(d)) for d in sorted(set(coords["dict_id"])))
    info = con.execute(
        f"""
        SELECT a.dict_id, a.atom, d.model_name AS model, d.layer, a.token_text, a.char_start, a.char_end,
               a.doc_id, d.corpus_id, s.density
        FROM atoms a JOIN dictionaries d USING (dict_id)
        LEFT JOIN atom_stats s ON s.dict_id = a.dict_id AND s.atom = a.atom
        WHERE a.dict_id IN ({ids})"""
    ).df()
    docs = con.execute(
        f"""
        SELECT doc.corpus_id, doc.doc_id, doc.text FROM documents doc
        JOIN (SELECT DISTINCT d.corpus_id, a.doc_id FROM atoms a JOIN dictionaries d USING (dict_id)
              WHERE a.dict_id IN ({ids})) w
        ON w.corpus_id = doc.corpus_id AND w.doc_id = doc.doc_id"""
    ).fetchall()
    texts = {(c, int(d)): t for c, d, t in docs}
    before, after = [], []
    for corpus, doc_id, start, end in zip(
        info["corpus_id"], info["doc_id"], info["char_start"], info["char_end"], strict=True
    ):
        text = texts.get((corpus, int(doc_id)), "")
        start, end = int(start), int(end)
        before.append(text[max(0, start - CONTEXT_CHARS) : start])
        after.append(text[end : end + CONTEXT_CHARS])
    info["before"], info["after"] = before, after
    info = info.drop(columns=["char_start", "char_end", "doc_id", "corpus_id"])
    return coords.merge(info, on=["dict_id", "atom"], how="left")


def compute_map_frame(
    con: duckdb.DuckDBPyConnection, dict_ids: Sequence[int], params: UmapParams = UmapParams()
) -> pd.DataFrame:
    """Compute (without storing) the map of ``dict_ids`` together, described as by :func:`describe`."""
    vectors, rows = _vectors(con, dict_ids)
    coords = embed(vectors, params) if len(rows) else np.zeros((0, 2), dtype=np.float32)
    frame = rows.assign(x=coords[:, 0], y=coords[:, 1])
    return describe(con, frame)


def _params_json(params: UmapParams, dicts: list[list[Any]]) -> str:
    payload = {**asdict(params), "dicts": dicts, "created": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
    return json.dumps(payload, sort_keys=True)


def _matching_params(con: duckdb.DuckDBPyConnection, dict_ids: Sequence[int]) -> str | None:
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
    key = _matching_params(con, dict_ids)
    if key is None:
        return None
    coords = con.execute(
        f"SELECT dict_id, atom, x, y FROM {TABLE} WHERE umap_params = ? ORDER BY dict_id, atom", [key]
    ).df()
    frame = describe(con, coords)
    frame.attrs["umap_params"] = json.loads(key)
    return frame


def store_atom_map(
    store: str | Path, dict_ids: Sequence[int], params: UmapParams = UmapParams(), *, timeout: float = 600.0
) -> int:
    """Compute the map of ``dict_ids`` (together) and write it to the store, replacing older maps of the
    same dictionaries; returns the number of atoms mapped. Only the insert holds the write lock."""
    from itda_core.store.connection import connect_readonly, connect_write, transaction

    with connect_readonly(store, timeout=timeout) as con:
        dicts = fingerprint(con, dict_ids)
        vectors, rows = _vectors(con, dict_ids)
    coords = embed(vectors, params) if len(rows) else np.zeros((0, 2), dtype=np.float32)
    key = _params_json(params, dicts)
    ids = [d for d, _, _ in dicts]
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
            r[0]
            for r in con.execute(
                f"SELECT DISTINCT umap_params FROM {TABLE} WHERE dict_id IN ({', '.join(map(str, ids))})"
            ).fetchall()
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
    return len(rows)


def has_map(store: str | Path, dict_ids: Sequence[int]) -> bool:
    """Whether an up-to-date map of exactly ``dict_ids`` (together) is stored."""
    from itda_core.store.connection import connect_readonly

    with connect_readonly(store) as con:
        return _matching_params(con, dict_ids) is not None


def missing_maps(store: str | Path, dict_ids: Sequence[int] | None = None) -> list[int]:
    """Dictionaries (of ``dict_ids``, default all) without an up-to-date single-dictionary map."""
    from itda_core.store.connection import connect_readonly

    with connect_readonly(store) as con:
        ids = [int(r[0]) for r in con.execute("SELECT dict_id FROM dictionaries ORDER BY dict_id").fetchall()]
        if dict_ids is not None:
            wanted = {int(d) for d in dict_ids}
            ids = [d for d in ids if d in wanted]
        return [d for d in ids if _matching_params(con, [d]) is None]


def compute_atom_maps(
    store: str | Path,
    dict_ids: Sequence[int] | None = None,
    params: UmapParams = UmapParams(),
    *,
    recompute: bool = False,
    log: Callable[[str], None] | None = None,
) -> list[int]:
    """A map for each dictionary (default: every dictionary in the store) that lacks an up-to-date one
    (all of them with ``recompute``); returns the dict_ids mapped. The demo build calls this after
    indexing so that the dashboard's atom map opens at once."""
    from itda_core.store.connection import connect_readonly

    if recompute:
        with connect_readonly(store) as con:
            todo = [int(r[0]) for r in con.execute("SELECT dict_id FROM dictionaries ORDER BY dict_id").fetchall()]
        if dict_ids is not None:
            wanted = {int(d) for d in dict_ids}
            todo = [d for d in todo if d in wanted]
    else:
        todo = missing_maps(store, dict_ids)
    for i, dict_id in enumerate(todo, start=1):
        start = time.perf_counter()
        n = store_atom_map(store, [dict_id], params)
        if log is not None:
            log(f"[{i}/{len(todo)}] atom map of dictionary {dict_id}: {n} atoms in {time.perf_counter() - start:.1f} s")
    return todo
