"""Cached store reads for the atom browser's pages: one atom's page (source, contexts coloured by coefficient,
quantile samples, histogram, the same source elsewhere), a dictionary's atom list, search, a few atoms'
source contexts (the live page) and nearest atoms by cosine. Shaping only: the SQL is the store's.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd
import streamlit as st

from itda_core.store import queries as Q
from itda_core.store.connection import connect_readonly
from itda_core.tokenize import token_pieces
from itda_dashboard.data import TTL, Version, short_name, store_key


def _clean(row: dict[str, Any]) -> dict[str, Any]:
    """NaN floats (e.g. the add-error of initial atoms) as None."""
    return {k: (None if isinstance(x, float) and math.isnan(x) else x) for k, x in row.items()}


@dataclass
class AtomPage:
    """Everything an atom page shows from the store, read on one connection."""

    atom: dict[str, Any]
    source: Context | None  # token window around the source token (no coefficients: a training document)
    histogram: pd.DataFrame
    scale: float  # where the colour scale saturates
    top: list[Context]
    quantiles: list[dict[str, Any]]
    shared: pd.DataFrame  # the same source token in other dictionaries


@st.cache_data(ttl=TTL, show_spinner=False, max_entries=256)
def _atom_page(path: str, v: Version, dict_id: int, atom_id: int, top_n: int, window: int) -> AtomPage | None:
    with connect_readonly(path) as con:
        found = Q.atom_page_row(con, dict_id, atom_id)
        if found is None:
            return None
        row = _clean(found)
        top_df = Q.top_hits(con, dict_id, atom_id, top_n)
        top = list(zip(top_df["doc_id"], top_df["position"], top_df["coef"], strict=True))
        quant = Q.quantile_hits(con, dict_id, atom_id)
        hits = [*top, *zip(quant["doc_id"], quant["position"], quant["coef"], strict=True)]
        source_hit = (int(row["doc_id"]), int(row["position"]), None)
        contexts = _contexts(con, dict_id, atom_id, [source_hit, *hits], window)
        histogram = Q.coefficient_histogram(con, dict_id, atom_id)
        stored_scale = Q.coefficient_scale(con, dict_id, atom_id, 0.98)
        shared = Q.shared_provenance(con, dict_id, atom_id)
    by_hit = {(c.doc_id, c.position): c for c in contexts}
    source = by_hit.get(source_hit[:2])
    if source is not None:  # a training document: no held-out coefficients to show
        source = Context(source.doc_id, source.position, None, [(*c[:3], None, c[4]) for c in source.cells])

    def ctx(d: Any, p: Any, coef: Any) -> Context | None:
        """The rendered window of a hit, with the hit's own coefficient."""
        found = by_hit.get((int(d), int(p)))
        return None if found is None else Context(found.doc_id, found.position, float(coef), found.cells)

    top_contexts = [c for c in (ctx(*h) for h in top) if c is not None]
    quantiles = []
    for b, part in quant.groupby("bin", sort=False):
        first = part.iloc[0]
        samples = [ctx(d, p, c) for d, p, c in zip(part["doc_id"], part["position"], part["coef"], strict=True)]
        quantiles.append(
            {
                "bin": int(b),
                "q_lo": float(first["q_lo"]),
                "q_hi": float(first["q_hi"]),
                "lo": float(first["bin_lo"]),
                "hi": float(first["bin_hi"]),
                "count": int(first["bin_count"]),
                "contexts": [c for c in samples if c is not None],
            }
        )
    scale = stored_scale or 0.0
    if not scale:
        scale = max(abs(row.get("max_coef") or 0.0), abs(row.get("min_coef") or 0.0)) or 1.0
    if not shared.empty:
        shared = shared.assign(model=[short_name(n) for n in shared["model_name"]])
    return AtomPage(row, source, histogram, scale, top_contexts, quantiles, shared)


def initial_note(init_count: Any) -> str | None:
    """What an atom's ``init_count`` says about it (None for an atom the error rule added)."""
    n = int(init_count)
    if n == 0:
        return None
    if n >= 2:
        return f"initial atom (its activation occurred {n:,} times in its batch)"
    if n == 1:
        return "initial atom, picked arbitrarily among rows seen once (not counted as evidence in Jaccard)"
    return "initial atom (count not recorded: older store)"


def atom_page(dict_id: int, atom_id: int, top_n: int = 20, window: int = 10) -> AtomPage | None:
    """The atom, its source context, histogram, colour scale (98th percentile of |coefficient| over its held-out
    codes, so one extreme token such as an attention sink does not wash out the rest), top contexts, quantile
    samples and the same source token in other dictionaries: one connection, cached per atom."""
    return _atom_page(*store_key(), int(dict_id), int(atom_id), int(top_n), int(window))


@st.cache_data(ttl=TTL, show_spinner=False, max_entries=64)
def _atom_table(path: str, v: Version, dict_id: int) -> pd.DataFrame:
    with connect_readonly(path) as con:
        return Q.atom_list(con, dict_id)


def atom_table(dict_id: int) -> pd.DataFrame:
    """All atoms of a dictionary: source token, document, position, add-error, init count (see
    :func:`initial_note`) and activity."""
    return _atom_table(*store_key(), int(dict_id))


def search_atoms(text: str, dict_id: int | None = None, model_id: str | None = None) -> pd.DataFrame:
    """Atoms whose source token contains ``text`` (case-insensitive), in one dictionary or a model's."""
    return _search(*store_key(), text, dict_id, model_id)


@st.cache_data(ttl=TTL, show_spinner=False, max_entries=256)
def _search(path: str, v: Version, text: str, dict_id: int | None, model_id: str | None) -> pd.DataFrame:
    with connect_readonly(path) as con:
        return Q.atoms_by_token(con, text, dict_id=dict_id, model_id=model_id, limit=500)


@dataclass
class Context:
    """A window of tokens around one position, ready for :func:`itda_dashboard.render.tokens_html`."""

    doc_id: int
    position: int
    coef: float | None
    cells: list[tuple[str, str, bool, float | None, bool]]  # (gap, text, special, value, is target)


def _contexts(
    con: Any, dict_id: int, atom_id: int | None, hits: list[tuple[int, int, float | None]], window: int
) -> list[Context]:
    """Render ``hits`` (doc_id, position, coef) as token windows, each token coloured by the atom's
    coefficient there when the store kept the sparse codes (else only the target is coloured)."""
    if not hits:
        return []
    keys = Q.dictionary_keys(con, dict_id)
    if keys is None:
        return []
    doc_ids = sorted({int(d) for d, _, _ in hits})
    texts, tokens = Q.documents_with_tokens(con, *keys, doc_ids)
    coefs = Q.codes_at(con, dict_id, atom_id, doc_ids) if atom_id is not None else {}
    out = []
    for doc_id, pos, coef in hits:
        doc_id, pos = int(doc_id), int(pos)
        doc = tokens.get(doc_id, {})
        text = texts.get(doc_id, "")
        window_pos = [p for p in range(max(0, pos - window), pos + window + 1) if p in doc]
        if not window_pos:
            continue
        parts = token_pieces(text, [doc[p][1:] for p in window_pos], [doc[p][0] for p in window_pos])
        cells = []
        for p, (gap, piece, special) in zip(window_pos, parts, strict=True):
            value = coefs.get((doc_id, p))
            if p == pos and value is None:
                value = coef
            cells.append((gap, piece, special, value, p == pos))
        out.append(Context(doc_id, pos, None if coef is None else float(coef), cells))
    return out


@st.cache_data(ttl=TTL, show_spinner=False, max_entries=128)
def _atoms_info(path: str, v: Version, dict_id: int, atoms: tuple[int, ...], window: int) -> pd.DataFrame:
    with connect_readonly(path) as con:
        df = Q.atoms_brief(con, dict_id, list(atoms))
        ctx = _contexts(
            con, dict_id, None, list(zip(df["doc_id"], df["position"], [None] * len(df), strict=True)), window
        )
    by_hit = {(c.doc_id, c.position): c for c in ctx}
    df["context"] = [by_hit.get((int(d), int(p))) for d, p in zip(df["doc_id"], df["position"], strict=True)]
    return df.set_index("atom")


def atoms_info(dict_id: int, atoms: list[int], window: int = 6) -> pd.DataFrame:
    """Source token, document, density and a short source context for a few atoms (indexed by atom)."""
    return _atoms_info(*store_key(), int(dict_id), tuple(sorted({int(a) for a in atoms})), int(window))


# ---- atom vectors: nearest atoms ---------------------------------------------------------------------------


@st.cache_resource(show_spinner=False, max_entries=8)
def unit_vector_cache(path: str, v: Version, dict_id: int) -> np.ndarray:
    """The dictionary's atoms as unit rows, kept in memory per store version (see :func:`unit_vectors`)."""
    with connect_readonly(path) as con:
        vectors = Q.atom_vectors(con, dict_id)
    norms = np.linalg.norm(vectors, axis=1, keepdims=True)
    return vectors / np.maximum(norms, 1e-12)


def unit_vectors(dict_id: int) -> np.ndarray:
    """The dictionary's atoms as unit rows [n_atoms, d] (row i is atom i), cached in memory."""
    return unit_vector_cache(*store_key(), int(dict_id))


def nearest_atoms(dict_id: int, atom_id: int, n: int = 10) -> pd.DataFrame:
    """The ``n`` atoms of the same dictionary with the highest cosine to this one (itself excluded)."""
    vectors = unit_vectors(dict_id)
    if not 0 <= atom_id < len(vectors) or len(vectors) < 2:
        return pd.DataFrame(columns=["atom", "cosine", "token_text", "density"])
    cos = vectors @ vectors[atom_id]
    cos[atom_id] = -np.inf
    n = min(n, len(vectors) - 1)
    top = np.argpartition(-cos, n - 1)[:n]
    top = top[np.argsort(-cos[top])]
    table = atom_table(dict_id).set_index("atom")
    return pd.DataFrame(
        {
            "atom": top.astype(int),
            "cosine": cos[top].astype(float),
            "token_text": [table.at[int(a), "token_text"] if int(a) in table.index else "" for a in top],
            "density": [table.at[int(a), "density"] if int(a) in table.index else None for a in top],
        }
    )


def atom_vector(dict_id: int, atom_id: int) -> np.ndarray:
    """One atom's unit vector."""
    return unit_vectors(dict_id)[int(atom_id)]
