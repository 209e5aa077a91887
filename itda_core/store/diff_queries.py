"""The reads a dictionary diff needs (:mod:`itda_core.similarity.diff`): the atom sources of a few dictionaries
(what :func:`itda_core.store.reader.read_atom_sources` reads for all of them) and the stored top contexts of
many atoms of one dictionary at once (the rows :func:`itda_core.store.queries.top_hits` reads for one)."""

from __future__ import annotations

from collections.abc import Sequence

import duckdb
import pandas as pd

from itda_core.store.connection import StoreError
from itda_core.store.reader import AtomSources, read_atom_sources

__all__ = ["MAX_ATOMS_PER_READ", "atom_sources_of", "top_hits_of"]

MAX_ATOMS_PER_READ = 10_000  # top contexts are read for a page of atoms, never a whole dictionary's


def _id_list(values: Sequence[int]) -> str:
    """A SQL list of integers (each cast, so nothing but digits reaches the query)."""
    return ", ".join(str(int(v)) for v in values) or "NULL"


def atom_sources_of(con: duckdb.DuckDBPyConnection, dict_ids: Sequence[int]) -> AtomSources:
    """Provenance, token texts, init counts and config of the dictionaries ``dict_ids`` (row i = atom i), as
    :func:`~itda_core.store.reader.read_atom_sources` reads them; a missing id is a :class:`StoreError`."""
    return read_atom_sources(con, dict_ids)


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
