"""Reading dictionaries back from the store: as :class:`ITDA` objects, as every dictionary's atom provenance
(what Jaccard atom sets need, without the vectors), and the lookups that find a stored dictionary by what
identifies it (before a write replaces it, or to name it).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import duckdb
import numpy as np
import pyarrow as pa
import torch

from itda_core.dictionary import ITDA, ITDAConfig
from itda_core.provenance import Provenance
from itda_core.store.connection import DEFAULT_STORE, StoreError, connect_readonly
from itda_core.store.identity import dictionary_data_key, options_key
from itda_core.store.schema import INIT_COUNT_SQL, first_row

_INT_COLUMNS = ("doc_id", "position", "token_id", "char_start", "char_end")


# ---- finding a stored dictionary -------------------------------------------------------------------------


@dataclass(frozen=True)
class StoredDictionary:
    """A dictionary already in the store: what a write would replace (or did replace)."""

    dict_id: int
    model_name: str
    layer: int
    n_atoms: int
    indexed: bool
    written: str

    def describe(self) -> str:
        """E.g. 'dictionary 3 (gpt2 layer 5: 1,234 atoms, indexed, written 2025-01-01 12:00:00)'."""
        index = "indexed" if self.indexed else "not indexed"
        return (f"dictionary {self.dict_id} ({self.model_name} layer {self.layer}: {self.n_atoms:,} atoms, "
                f"{index}, written {self.written})")




def find_dictionary(con: duckdb.DuckDBPyConnection, config: ITDAConfig) -> int | None:
    """dict_id of the stored dictionary with the same model, layer, training corpus, options and data, if any."""
    row = first_row(
        con,
        "SELECT dict_id FROM dictionaries WHERE model_id = ? AND layer = ? AND train_corpus_id = ? "
        "AND options_key = ? AND data_key = ?",
        [config.model_id, config.layer, config.corpus_id, options_key(config), dictionary_data_key(config)],
    )
    return None if row is None else int(row[0])


def stored_dictionary(con: duckdb.DuckDBPyConnection, dict_id: int) -> StoredDictionary:
    """Name, layer, size, index state and write time of a stored dictionary."""
    row = first_row(
        con,
        "SELECT model_name, layer, n_atoms, dict_id IN (SELECT dict_id FROM index_runs), CAST(written AS VARCHAR) "
        "FROM dictionaries WHERE dict_id = ?",
        [dict_id],
    )
    if row is None:
        raise StoreError(f"no dictionary {dict_id} in the store")
    return StoredDictionary(dict_id, str(row[0]), int(row[1]), int(row[2]), bool(row[3]), str(row[4])[:19])


def existing_dictionaries(
    store: str | Path, configs: list[ITDAConfig], timeout: float = 600.0
) -> list[StoredDictionary]:
    """The stored dictionaries that writing dictionaries with these configs would replace (a read-only look)."""
    store = Path(store)
    if not store.is_file():
        return []
    with connect_readonly(store, timeout=timeout) as con:
        ids = [find_dictionary(con, config) for config in configs]
        return [stored_dictionary(con, dict_id) for dict_id in ids if dict_id is not None]


# ---- dictionaries ----------------------------------------------------------------------------------------


def _provenance(table: pa.Table, lo: int = 0, hi: int | None = None) -> Provenance:
    """Rows ``lo:hi`` of an atoms table (doc_id, position, token_id, char_start, char_end, token_str) as
    :class:`Provenance`."""
    part = table.slice(lo, None if hi is None else hi - lo)
    ints = [torch.from_numpy(part.column(c).to_numpy().astype(np.int64)) for c in _INT_COLUMNS]
    return Provenance(*ints, token_str=part.column("token_str").to_pylist())


def read_dictionary(con: duckdb.DuckDBPyConnection, dict_id: int) -> ITDA:
    """The stored dictionary ``dict_id`` as an :class:`ITDA` (atoms, provenance, add-errors, config)."""
    row = first_row(con, "SELECT config FROM dictionaries WHERE dict_id = ?", [dict_id])
    if row is None:
        raise StoreError(f"no dictionary {dict_id} in the store")
    config = ITDAConfig.from_dict(json.loads(row[0]))
    table = con.sql(
        f"SELECT doc_id, position, token_id, char_start, char_end, token_str, add_error, vector, init_count FROM atoms "
        f"WHERE dict_id = {int(dict_id)} ORDER BY atom"
    ).to_arrow_table()
    m = table.num_rows
    flat = table.column("vector").combine_chunks().flatten().to_numpy(zero_copy_only=False)
    atoms = torch.from_numpy(np.array(flat, dtype=np.float32).reshape(m, config.d_model))
    add_error = torch.from_numpy(table.column("add_error").to_numpy(zero_copy_only=False).astype(np.float32))
    init_count = torch.from_numpy(table.column("init_count").to_numpy(zero_copy_only=False).astype(np.int32))
    return ITDA(atoms, _provenance(table), config, add_error, init_count)


def load_dictionary(store: str | Path, dict_id: int) -> ITDA:
    """:func:`read_dictionary` with its own short read-only connection."""
    with connect_readonly(store or DEFAULT_STORE) as con:
        return read_dictionary(con, dict_id)


# ---- every dictionary's atom sources ---------------------------------------------------------------------


@dataclass
class AtomSources:
    """Every stored dictionary's atoms without their vectors (row i = atom i): where each came from, its
    source token's text and init count, and the dictionary's config: what Jaccard atom sets are built from."""

    provenance: dict[int, Provenance] = field(default_factory=dict)
    configs: dict[int, ITDAConfig] = field(default_factory=dict)
    token_text: dict[int, np.ndarray] = field(default_factory=dict)
    init_count: dict[int, np.ndarray] = field(default_factory=dict)


def read_atom_sources(con: duckdb.DuckDBPyConnection, dict_ids: Sequence[int] | None = None) -> AtomSources:
    """Every dictionary's (or only ``dict_ids``') provenance, token texts, init counts and config, in two queries
    (no vectors); a missing id among ``dict_ids`` is a :class:`StoreError`."""
    ids = None if dict_ids is None else sorted({int(d) for d in dict_ids})
    where = "" if ids is None else f" WHERE dict_id IN ({', '.join(map(str, ids)) or 'NULL'})"
    configs = {
        int(d): ITDAConfig.from_dict(json.loads(c))
        for d, c in con.execute(f"SELECT dict_id, config FROM dictionaries{where}").fetchall()
    }
    missing = [d for d in ids or [] if d not in configs]
    if missing:
        raise StoreError(f"no dictionary {', '.join(map(str, missing))} in the store; pick one the store holds")
    table = con.sql(
        "SELECT a.dict_id, a.doc_id, a.position, a.token_id, a.char_start, a.char_end, a.token_str, "
        f"a.token_text, {INIT_COUNT_SQL} AS init_count FROM atoms a{where.replace('dict_id', 'a.dict_id')} "
        "ORDER BY a.dict_id, a.atom"
    ).to_arrow_table()
    out = AtomSources(configs=configs)
    dict_col = table.column("dict_id").to_numpy()
    texts = table.column("token_text").to_pylist()
    init_count = table.column("init_count").to_numpy()
    bounds = (np.flatnonzero(np.diff(dict_col)) + 1).tolist()
    for lo, hi in zip([0, *bounds], [*bounds, table.num_rows], strict=True):
        if hi <= lo:
            continue
        dict_id = int(dict_col[lo])
        out.provenance[dict_id] = _provenance(table, lo, hi)
        out.token_text[dict_id] = np.asarray(texts[lo:hi], dtype=object)
        out.init_count[dict_id] = np.asarray(init_count[lo:hi], dtype=np.int64)
    for dict_id in ids or []:  # an asked-for dictionary without atoms still has (empty) sources
        if dict_id not in out.provenance:
            out.provenance[dict_id] = _provenance(table, 0, 0)
            out.token_text[dict_id] = np.asarray([], dtype=object)
            out.init_count[dict_id] = np.asarray([], dtype=np.int64)
    return out
