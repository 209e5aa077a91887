"""The reads a dictionary diff needs (:mod:`itda_core.similarity.diff`): the atom sources of a few dictionaries
(what :func:`itda_core.store.reader.read_atom_sources` reads for all of them) and the stored top contexts of
many atoms of one dictionary at once (the rows :func:`itda_core.store.queries.top_hits` reads for one)."""

from __future__ import annotations

import json
from collections.abc import Sequence

import duckdb
import numpy as np
import pandas as pd

from itda_core.dictionary import ITDAConfig
from itda_core.store.connection import StoreError
from itda_core.store.reader import AtomSources, _provenance
from itda_core.store.schema import INIT_COUNT_SQL

__all__ = ["MAX_ATOMS_PER_READ", "atom_sources_of", "top_hits_of"]

MAX_ATOMS_PER_READ = 10_000  # top contexts are read for a page of atoms, never a whole dictionary's


def _id_list(values: Sequence[int]) -> str:
    """A SQL list of integers (each cast, so nothing but digits reaches the query)."""
    return ", ".join(str(int(v)) for v in values) or "NULL"


def atom_sources_of(con: duckdb.DuckDBPyConnection, dict_ids: Sequence[int]) -> AtomSources:
    """Provenance, token texts, init counts and config of the dictionaries ``dict_ids`` (row i = atom i), as
    :func:`~itda_core.store.reader.read_atom_sources` reads them for every dictionary; a missing id is a
    :class:`StoreError`."""
    ids = sorted({int(d) for d in dict_ids})
    configs = {
        int(d): ITDAConfig.from_dict(json.loads(c))
        for d, c in con.execute(f"SELECT dict_id, config FROM dictionaries WHERE dict_id IN ({_id_list(ids)})")
        .fetchall()
    }
    missing = [d for d in ids if d not in configs]
    if missing:
        raise StoreError(f"no dictionary {', '.join(map(str, missing))} in the store; pick one the store holds")
    table = con.sql(
        "SELECT a.dict_id, a.doc_id, a.position, a.token_id, a.char_start, a.char_end, a.token_str, a.token_text, "
        f"{INIT_COUNT_SQL} AS init_count FROM atoms a WHERE a.dict_id IN ({_id_list(ids)}) ORDER BY a.dict_id, a.atom"
    ).to_arrow_table()
    out = AtomSources(configs=configs)
    dict_col = table.column("dict_id").to_numpy()
    texts = table.column("token_text").to_pylist()
    init_count = table.column("init_count").to_numpy()
    for dict_id in ids:
        rows = np.flatnonzero(dict_col == dict_id)
        lo, hi = (int(rows[0]), int(rows[-1]) + 1) if len(rows) else (0, 0)
        out.provenance[dict_id] = _provenance(table, lo, hi)
        out.token_text[dict_id] = np.asarray(texts[lo:hi], dtype=object)
        out.init_count[dict_id] = np.asarray(init_count[lo:hi], dtype=np.int64)
    return out


def top_hits_of(con: duckdb.DuckDBPyConnection, dict_id: int, atoms: Sequence[int], per_atom: int) -> pd.DataFrame:
    """The ``per_atom`` highest-coefficient held-out tokens of each of ``atoms`` (atom, rank, doc_id, position,
    coef), by atom then rank: what the atom pages show as top contexts (empty when not indexed)."""
    ids = sorted({int(a) for a in atoms})
    if len(ids) > MAX_ATOMS_PER_READ:
        raise StoreError(f"asked for the top contexts of {len(ids):,} atoms at once; read at most "
                         f"{MAX_ATOMS_PER_READ:,} (a page of them)")
    return con.execute(
        "SELECT atom, rank, doc_id, position, coef FROM atom_top_contexts WHERE dict_id = ? "
        f"AND atom IN ({_id_list(ids)}) AND rank <= ? ORDER BY atom, rank",
        [int(dict_id), int(per_atom)],
    ).df()
