"""What one dictionary has and another lacks: the atoms of A with no match in B, of B with none in A, and the
shared ones, grouped by source token.

The rules are the Jaccard index's (:mod:`itda_core.similarity.jaccard`, docs/similarity.md), reused, not
restated: the atoms that count (``JaccardOptions.atoms``: by default the evidence atoms; an identity repeated in
one dictionary counts once), the match (``method="auto"``: ``(doc_id, position)`` keys for one tokenizer,
character spans across tokenizers, :func:`~itda_core.similarity.pairs.matched_pairs`) and the refusal of pairs
that cannot be compared (other corpus or documents: the one-line :class:`ITDAError` the similarity page shows).
So ``len(shared) / (len(only_a) + len(only_b) + len(shared))`` is the pair's raw Jaccard.

Every atom of a dictionary gets one status: ``shared`` (matched in the other), ``only`` (counted, unmatched)
or ``not counted`` (an initial atom picked arbitrarily, when only evidence counts, or a repeat of an identity
the dictionary already holds). Groups are keyed by the atom's token text (its document slice) with surrounding
whitespace removed (**choice**: so `` Paris`` of a byte-level BPE and ``Paris`` of WordPiece fall in one group;
a whitespace-only token keeps its text).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import duckdb
import numpy as np
import pandas as pd

from itda_core.config.similarity import DEFAULT_OPTIONS, JaccardOptions
from itda_core.dictionary import ITDAConfig, evidence_mask
from itda_core.provenance import Provenance
from itda_core.similarity.atom_sets import AtomSet
from itda_core.similarity.comparable import dictionary_label
from itda_core.similarity.pairs import matched_pairs, pair_universe
from itda_core.store.connection import connect_readonly
from itda_core.store.diff_queries import atom_sources_of

__all__ = ["NOT_COUNTED", "ONLY", "SHARED", "DictionaryDiff", "DiffSource", "diff_dictionaries", "diff_sources",
           "token_group"]

SHARED, ONLY, NOT_COUNTED = "shared", "only", "not counted"
SIDES = ("a", "b")


def token_group(text: str) -> str:
    """The group of an atom's token text: without surrounding whitespace (a whitespace-only token as is)."""
    return text.strip() or text


@dataclass(frozen=True)
class DiffSource:
    """One dictionary's atoms without vectors (row i = atom i), as the store's reader gives them."""

    dict_id: int
    provenance: Provenance
    config: ITDAConfig
    token_text: np.ndarray
    init_count: np.ndarray

    def atom_set(self, atoms: str) -> AtomSet:
        """Its Jaccard atom set under ``atoms`` ("evidence" or "all"), built as the dashboard builds it."""
        select = evidence_mask(np.asarray(self.init_count)) if atoms == "evidence" else None
        return AtomSet.from_provenance(self.provenance, self.config, dictionary_label(self.config), select)


@dataclass
class DictionaryDiff:
    """Two dictionaries' atoms split into only-A, shared and only-B (see the module docstring).

    ``atoms`` has one row per atom of either dictionary: ``side`` ("a" / "b"), ``dict_id``, ``atom``,
    ``status``, ``match`` (the matched atom of the other dictionary, -1 when none), ``token`` (its text),
    ``group``, ``doc_id``, ``position``, ``char_start``, ``char_end``, ``init_count``."""

    dict_a: int
    dict_b: int
    label_a: str
    label_b: str
    method: str  # "keys" or "spans"
    options: JaccardOptions
    universe: int  # training tokens for the chance correction (0: unknown)
    atoms: pd.DataFrame
    _ids: dict[tuple[str, str], np.ndarray] = field(default_factory=dict, init=False, repr=False, compare=False)

    def ids(self, side: str, status: str) -> np.ndarray:
        """Atom ids of one side with one status, ascending (computed once; a read-only array)."""
        if side not in SIDES:
            raise ValueError(f"side must be 'a' or 'b', not {side!r}")
        found = self._ids.get((side, status))
        if found is None:
            rows = self.atoms[(self.atoms["side"] == side) & (self.atoms["status"] == status)]
            found = np.sort(rows["atom"].to_numpy(dtype=np.int64))
            found.flags.writeable = False
            self._ids[(side, status)] = found
        return found

    @property
    def only_a(self) -> np.ndarray:
        """Atoms of A that count and have no match in B."""
        return self.ids("a", ONLY)

    @property
    def only_b(self) -> np.ndarray:
        """Atoms of B that count and have no match in A."""
        return self.ids("b", ONLY)

    @property
    def shared_a(self) -> np.ndarray:
        """Atoms of A matched in B (one-to-one with :attr:`shared_b`)."""
        return self.ids("a", SHARED)

    @property
    def shared_b(self) -> np.ndarray:
        """Atoms of B matched in A."""
        return self.ids("b", SHARED)

    @property
    def n_a(self) -> int:
        """|A|: the atoms of A that count."""
        return len(self.only_a) + len(self.shared_a)

    @property
    def n_b(self) -> int:
        """|B|: the atoms of B that count."""
        return len(self.only_b) + len(self.shared_b)

    @property
    def shared(self) -> int:
        """|A ∩ B|: matched pairs."""
        return len(self.shared_a)

    @property
    def jaccard(self) -> float:
        """The pair's Jaccard under :attr:`options` (raw or corrected; nan under ``min_atoms``), from the counts
        as :func:`itda_core.similarity.jaccard.jaccard` computes it."""
        return float(self.options.value(self.shared, self.n_a, self.n_b, self.universe))

    @property
    def too_few(self) -> bool:
        """Whether a side counts fewer than ``options.min_atoms`` atoms (the Jaccard is then nan)."""
        return self.options.too_few(self.n_a, self.n_b)

    def groups(self, side: str, status: str = ONLY) -> pd.DataFrame:
        """Atoms of one side and status by token group: ``group``, ``count``, ``atoms`` (ids, ascending), most
        atoms first, then by group text."""
        rows = self.atoms[(self.atoms["side"] == side) & (self.atoms["status"] == status)]
        if rows.empty:
            return pd.DataFrame({"group": pd.Series(dtype=object), "count": pd.Series(dtype=np.int64),
                                 "atoms": pd.Series(dtype=object)})
        grouped = rows.sort_values("atom").groupby("group", sort=False)["atom"].agg(list).reset_index()
        grouped.insert(1, "count", [len(a) for a in grouped["atom"]])
        grouped = grouped.rename(columns={"atom": "atoms"})
        return grouped.sort_values(["count", "group"], ascending=[False, True], kind="stable").reset_index(drop=True)

    def token_table(self) -> pd.DataFrame:
        """One row per token group of either dictionary: atoms only in A, shared pairs (by A's token text, so the
        column adds up to :attr:`shared`), only in B; the largest difference first."""
        counted = self.atoms[(self.atoms["status"] != NOT_COUNTED)
                             & ~((self.atoms["side"] == "b") & (self.atoms["status"] == SHARED))]
        key = np.where(counted["status"] == SHARED, "shared", counted["side"].map({"a": "only_a", "b": "only_b"}))
        table = pd.crosstab(counted["group"], key).reindex(columns=["only_a", "shared", "only_b"], fill_value=0)
        out = pd.DataFrame({"group": table.index, **{c: table[c].to_numpy() for c in table.columns}})
        diff = (out["only_a"] - out["only_b"]).abs()
        return out.assign(_d=diff).sort_values(["_d", "group"], ascending=[False, True], kind="stable").drop(
            columns="_d").reset_index(drop=True)


def _side_frame(side: str, source: DiffSource, aset: AtomSet, matched: np.ndarray, other: np.ndarray) -> pd.DataFrame:
    """The per-atom rows of one side: every atom not counted, then the set's rows only, then the matched ones."""
    n = len(source.token_text)
    status = np.full(n, NOT_COUNTED, dtype=object)
    status[aset.rows] = ONLY
    status[matched] = SHARED
    match = np.full(n, -1, dtype=np.int64)
    match[matched] = other
    prov = source.provenance
    tokens = [str(t) for t in source.token_text]
    return pd.DataFrame({
        "side": side, "dict_id": int(source.dict_id), "atom": np.arange(n, dtype=np.int64), "status": status,
        "match": match, "token": tokens, "group": [token_group(t) for t in tokens],
        "doc_id": prov.doc_id.numpy(), "position": prov.position.numpy(), "char_start": prov.char_start.numpy(),
        "char_end": prov.char_end.numpy(), "init_count": np.asarray(source.init_count, dtype=np.int64),
    })


def diff_sources(a: DiffSource, b: DiffSource, options: JaccardOptions = DEFAULT_OPTIONS, method: str = "auto",
                 sets: tuple[AtomSet, AtomSet] | None = None) -> DictionaryDiff:
    """The diff of two dictionaries' atom sources under ``options`` (which atoms count) and ``method`` ("auto",
    "keys" or "spans"); ``sets``: their atom sets when already built (e.g. the dashboard's cached ones, which
    must be of ``options.atoms``). Raises the Jaccard index's :class:`ITDAError` for a pair that cannot be
    compared."""
    sa, sb = sets if sets is not None else (a.atom_set(options.atoms), b.atom_set(options.atoms))
    rows_a, rows_b, used = matched_pairs(sa, sb, method)
    atoms = pd.concat([_side_frame("a", a, sa, rows_a, rows_b), _side_frame("b", b, sb, rows_b, rows_a)],
                      ignore_index=True)
    return DictionaryDiff(int(a.dict_id), int(b.dict_id), dictionary_label(a.config), dictionary_label(b.config),
                          used, options, pair_universe(sa, sb), atoms)


def read_sources(store: str | Path | duckdb.DuckDBPyConnection, dict_ids: Sequence[int]) -> list[DiffSource]:
    """The atom sources of ``dict_ids`` from a store (a path, read through a short read-only connection, or an
    open connection), in that order."""
    if isinstance(store, duckdb.DuckDBPyConnection):
        data = atom_sources_of(store, dict_ids)
    else:
        with connect_readonly(store) as con:
            data = atom_sources_of(con, dict_ids)
    return [DiffSource(int(d), data.provenance[int(d)], data.configs[int(d)], data.token_text[int(d)],
                       data.init_count[int(d)]) for d in dict_ids]


def diff_dictionaries(store: str | Path | duckdb.DuckDBPyConnection, dict_a: int, dict_b: int,
                      options: JaccardOptions = DEFAULT_OPTIONS, method: str = "auto") -> DictionaryDiff:
    """What stored dictionary ``dict_a`` has and ``dict_b`` lacks, and the reverse (see the module docstring):
    for two layers of one model (by position) or two models (by character span across tokenizers)."""
    a, b = read_sources(store, [dict_a, dict_b])
    return diff_sources(a, b, options, method)
