"""Cached dictionary diffs for the diff page: the library's :func:`itda_core.similarity.diff.diff_sources` over
the similarity page's cached atom sources and atom sets (so the two pages count the same atoms and show the
same Jaccard for a pair), the stored top contexts of a page of atoms, the pair an address names, and the lists
as CSV. Shaping only: the rules are the library's, the SQL the store's."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import pandas as pd
import streamlit as st

from itda_core.similarity.diff import DictionaryDiff, DiffSource, diff_sources
from itda_core.store import queries as Q
from itda_core.store.connection import connect_readonly
from itda_core.store.diff_queries import top_hits_of
from itda_dashboard import similarity_data
from itda_dashboard.data import TTL, Version, atom_url, store_key

MAX_CONTEXT_ATOMS = 500  # atoms whose top contexts one page shows at most


@st.cache_resource(show_spinner=False, max_entries=16)
def diff_cache(
    path: str, v: Version, dict_a: int, dict_b: int, atoms: str, index: str, min_atoms: int
) -> DictionaryDiff:
    """Two dictionaries' diff, kept per store version and options (cleared by ``data.clear_caches``)."""
    options = similarity_data.jaccard_options(atoms, index, min_atoms)
    base = similarity_data.atom_sources_cache(path, v)
    sets = similarity_data.sets_cache(path, v, options.atoms).sets
    a, b = (DiffSource(d, base.provenance[d], base.configs[d], base.token_text[d], base.init_count[d])
            for d in (dict_a, dict_b))  # fmt: skip
    return diff_sources(a, b, options, sets=(sets[dict_a], sets[dict_b]))


def diff(dict_a: int, dict_b: int, options: Any = None) -> DictionaryDiff:
    """The diff of two of the store's dictionaries under ``options`` (a JaccardOptions; default the similarity
    page's default), cached per store version; raises the Jaccard index's ITDAError for a pair that cannot be
    compared."""
    options = options or similarity_data.jaccard_options()
    return diff_cache(*store_key(), int(dict_a), int(dict_b), options.atoms, options.index, options.min_atoms)


@dataclass(frozen=True)
class Hit:
    """One stored top context of an atom: its coefficient, document and the text around the token."""

    coef: float
    doc_id: int
    before: str
    token: str
    after: str


@st.cache_data(ttl=TTL, show_spinner=False, max_entries=128)
def _top_contexts(path: str, v: Version, dict_id: int, atoms: tuple[int, ...], per_atom: int,
                  window: int) -> dict[int, list[Hit]]:  # fmt: skip
    with connect_readonly(path) as con:
        hits = top_hits_of(con, dict_id, list(atoms), per_atom)
        shown = Q.render_contexts(con, dict_id, hits, window)
    out: dict[int, list[Hit]] = {int(a): [] for a in atoms}
    for row in shown.itertuples(index=False):
        if row.target_index >= 0:
            out[int(row.atom)].append(Hit(float(row.coef), int(row.doc_id), row.before, row.token, row.after))
    return out


def top_contexts(dict_id: int, atoms: list[int], per_atom: int = 3, window: int = 6) -> dict[int, list[Hit]]:
    """The stored top contexts (best first, at most ``per_atom``) of each of a page of ``atoms`` (at most
    MAX_CONTEXT_ATOMS): what their atom pages show first; an atom never used on held-out text has none."""
    chosen = tuple(sorted({int(a) for a in atoms}))[:MAX_CONTEXT_ATOMS]
    return _top_contexts(*store_key(), int(dict_id), chosen, int(per_atom), int(window))


def resolve_id(value: str | None, dict_ids: set[int]) -> int | None:
    """A dictionary id from the address (``a=`` / ``b=``) when it is a number the store holds, else None."""
    if value is None:
        return None
    try:
        found = int(str(value).strip().lstrip("#"))
    except ValueError:
        return None
    return found if found in dict_ids else None


def default_pair(runs: dict[str, dict[int, int]]) -> tuple[tuple[str, int], tuple[str, int]]:
    """The pair shown first: two adjacent layers of the first model (the middle ones), or its only layer twice."""
    first = next(iter(runs))
    layers = sorted(runs[first])
    i = max(1, len(layers) // 2) if len(layers) > 1 else 0
    return (first, layers[max(0, i - 1)]), (first, layers[i])


def csv_bytes(found: DictionaryDiff, names: dict[int, str]) -> bytes:
    """Every atom of both dictionaries with its status (only, shared, not counted), match, token, group, source
    and atom-page address, as CSV (UTF-8)."""
    df = found.atoms.copy()
    df.insert(1, "dictionary", [names.get(int(d), str(d)) for d in df["dict_id"]])
    df["url"] = [atom_url(int(d), int(a)) for d, a in zip(df["dict_id"], df["atom"], strict=True)]
    return df.to_csv(index=False).encode("utf-8")


def page_of(frame: pd.DataFrame, page: int, size: int) -> pd.DataFrame:
    """Rows of page ``page`` (1-based, clamped to the pages there are) of ``size`` rows."""
    pages = max(1, -(-len(frame) // size))
    page = min(max(1, int(page)), pages)
    return frame.iloc[(page - 1) * size: page * size]
