"""Cached similarity for the similarity page: Jaccard of dictionaries (layer x layer, model x model) under a
choice of atoms and index, the atoms two dictionaries share, and stored baseline measures. The atoms come
from the store's reader (:func:`itda_core.store.reader.read_atom_sources`), the values from
:mod:`itda_core.similarity.jaccard`; this module only caches and shapes.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd
import streamlit as st

from itda_core.errors import ITDAError
from itda_core.store import queries as Q
from itda_core.store.connection import connect_readonly
from itda_core.store.reader import AtomSources, read_atom_sources
from itda_dashboard.data import TTL, Version, short_name, store_key


def jaccard_options(atoms: str | None = None, index: str | None = None, min_atoms: int | None = None) -> Any:
    """``itda_core.similarity.jaccard.JaccardOptions`` (which atoms count, which index, the fewest atoms a
    value needs; None: the default); raises ITDAError for an unknown choice."""
    from itda_core.similarity.jaccard import DEFAULT_OPTIONS, JaccardOptions

    return JaccardOptions(atoms=atoms or DEFAULT_OPTIONS.atoms, index=index or DEFAULT_OPTIONS.index,
                          min_atoms=DEFAULT_OPTIONS.min_atoms if min_atoms is None else min_atoms)


def evidence_mask(init_count: np.ndarray) -> np.ndarray:
    """The atoms that carry evidence, by the library's rule (``itda_core.dictionary.evidence_mask``)."""
    from itda_core.dictionary import evidence_mask as rule

    return rule(np.asarray(init_count))


@dataclass
class Sets:
    """Provenance of every dictionary as Jaccard atom sets of one atom choice (``atoms``: "evidence" or
    "all"), with token texts to list shared atoms. An atom set's ``rows`` index the full provenance."""

    atoms: str
    sets: dict[int, Any]  # dict_id -> itda_core.similarity.jaccard.AtomSet
    provenance: dict[int, Any]  # dict_id -> Provenance (row i = atom i)
    configs: dict[int, Any]  # dict_id -> ITDAConfig
    token_text: dict[int, np.ndarray]  # dict_id -> token texts (row i = atom i)
    init_count: dict[int, np.ndarray]  # dict_id -> init_count (row i = atom i)


@st.cache_resource(show_spinner=False, max_entries=4)
def atom_sources_cache(path: str, v: Version) -> AtomSources:
    """Every dictionary's atom provenance, token texts, init counts and config, read once per store version."""
    with connect_readonly(path) as con:
        return read_atom_sources(con)


@st.cache_resource(show_spinner=False, max_entries=8)
def sets_cache(path: str, v: Version, atoms: str) -> Sets:
    """The Jaccard atom sets of one atom choice, built once per store version (see :func:`atom_sets`)."""
    from itda_core.similarity.jaccard import AtomSet

    jaccard_options(atoms)  # an unknown choice is an ITDAError, not a silent "all"
    base = atom_sources_cache(path, v)
    out = Sets(atoms, {}, base.provenance, base.configs, base.token_text, base.init_count)
    for dict_id, prov in base.provenance.items():
        config = base.configs[dict_id]
        select = evidence_mask(base.init_count[dict_id]) if atoms == "evidence" else None
        out.sets[dict_id] = AtomSet.from_provenance(
            prov, config, f"{short_name(config.model_name)} L{config.layer}", select
        )
    return out


def atom_sets(atoms: str = "evidence") -> Sets:
    """Every dictionary's Jaccard atom set (``atoms``: "evidence", the default, or "all"), built once per store
    version."""
    return sets_cache(*store_key(), atoms)


def _value(shared: int, n_a: int, n_b: int, sa: Any, sb: Any, options: Any) -> float:
    from itda_core.similarity.jaccard import pair_universe

    return float(options.value(shared, n_a, n_b, pair_universe(sa, sb)))


@st.cache_data(ttl=TTL, show_spinner=False, max_entries=64)
def _jaccard(
    path: str, v: Version, rows: tuple[int, ...], cols: tuple[int, ...], atoms: str, index: str, min_atoms: int
) -> dict[str, Any]:
    from itda_core.similarity.jaccard import shared_count

    options = jaccard_options(atoms, index, min_atoms)
    sets = sets_cache(path, v, options.atoms).sets
    values = np.full((len(rows), len(cols)), np.nan)
    shared = np.zeros((len(rows), len(cols)), dtype=np.int64)
    methods: set[str] = set()
    errors: list[str] = []
    too_few = 0
    for i, a in enumerate(rows):
        for j, b in enumerate(cols):
            try:
                n, n_a, n_b, how = shared_count(sets[a], sets[b])
            except Exception as err:  # not comparable (another corpus, other documents): leave empty, say why
                if str(err) not in errors:
                    errors.append(str(err))
                continue
            methods.add(how)
            values[i, j] = _value(n, n_a, n_b, sets[a], sets[b], options)
            shared[i, j] = n
            too_few += options.too_few(n_a, n_b)
    return {"values": values, "shared": shared, **_outcome(methods, errors, options, too_few)}


def _outcome(methods: set[str], errors: list[str], options: Any, too_few: int) -> dict[str, Any]:
    """What every Jaccard result carries besides its values: how pairs were matched, the first few reasons a
    pair could not be compared, how many pairs are empty for too few atoms (``min_atoms``), and which variant
    (label, atoms, index) the values are."""
    return {"methods": sorted(methods), "errors": errors[:3], "too_few": too_few, "min_atoms": options.min_atoms,
            "label": options.label, "atoms": options.atoms, "index": options.index}


def jaccard(rows: list[int], cols: list[int], options: Any = None) -> dict[str, Any]:
    """Jaccard of dictionaries ``rows`` x ``cols`` (by keys, or character spans across tokenizers) under
    ``options`` (a JaccardOptions; default ``DEFAULT_OPTIONS``: evidence atoms, raw): ``values``, ``shared``
    counts, ``methods`` used, the first few distinct ``errors``, ``too_few`` (pairs left empty under
    ``min_atoms``) and the variant's ``label``."""
    from itda_core.similarity.jaccard import DEFAULT_OPTIONS

    options = options or DEFAULT_OPTIONS
    return _jaccard(
        *store_key(), tuple(int(r) for r in rows), tuple(int(c) for c in cols), options.atoms, options.index,
        options.min_atoms,
    )


@st.cache_data(ttl=TTL, show_spinner=False, max_entries=16)
def _model_matrix(
    path: str, v: Version, runs: tuple[tuple[str, tuple[int, ...]], ...], atoms: str, index: str, min_atoms: int
) -> dict[str, Any]:
    from itda_core.provenance import Provenance
    from itda_core.similarity.jaccard import AtomSet, shared_count

    options = jaccard_options(atoms, index, min_atoms)
    data = atom_sources_cache(path, v)
    unions = []
    for label_text, ids in runs:
        chosen = [i for i in ids if data.configs[i].layer != 0] or list(ids)
        prov = Provenance.concat([data.provenance[i] for i in chosen])
        select = (
            np.concatenate([evidence_mask(data.init_count[i]) for i in chosen]) if options.atoms == "evidence" else None
        )
        unions.append(AtomSet.from_provenance(prov, data.configs[chosen[0]], label_text, select))
    n = len(unions)
    values = np.full((n, n), np.nan)
    shared = np.zeros((n, n), dtype=np.int64)
    methods: set[str] = set()
    errors: list[str] = []
    too_few = 0
    for i in range(n):
        for j in range(i, n):
            try:
                s, n_a, n_b, how = shared_count(unions[i], unions[j])
            except Exception as err:  # not comparable: leave empty, say why
                if str(err) not in errors:
                    errors.append(str(err))
                continue
            methods.add(how)
            values[i, j] = values[j, i] = _value(s, n_a, n_b, unions[i], unions[j], options)
            shared[i, j] = shared[j, i] = s
            too_few += options.too_few(n_a, n_b)
    return {"labels": [r[0] for r in runs], "values": values, "shared": shared,
            **_outcome(methods, errors, options, too_few)}


def model_matrix(runs: dict[str, list[int]], options: Any = None) -> dict[str, Any]:
    """Model x model Jaccard (under ``options``, default ``DEFAULT_OPTIONS``) of each run's union of layers
    1..n-1 (all layers when it has only layer 0), the union of the atoms that count under the same choice."""
    from itda_core.similarity.jaccard import DEFAULT_OPTIONS

    options = options or DEFAULT_OPTIONS
    key = tuple((label_text, tuple(int(i) for i in ids)) for label_text, ids in runs.items())
    return _model_matrix(*store_key(), key, options.atoms, options.index, options.min_atoms)


def shared_pairs(dict_a: int, dict_b: int, options: Any = None) -> pd.DataFrame:
    """The atoms two dictionaries share among those that count under ``options`` (the same rule as their
    Jaccard cell): atom ids, token texts, document and the atoms' init counts."""
    from itda_core.similarity.jaccard import DEFAULT_OPTIONS, matched_pairs

    options = options or DEFAULT_OPTIONS
    data = atom_sets(options.atoms)
    if dict_a not in data.sets or dict_b not in data.sets:
        return pd.DataFrame(columns=["atom_a", "token_a", "atom_b", "token_b", "doc_id", "init_a", "init_b"])
    try:
        rows_a, rows_b, method = matched_pairs(data.sets[dict_a], data.sets[dict_b])
    except ITDAError as err:  # not comparable (another corpus, other documents): nothing shared, say why
        empty = pd.DataFrame(columns=["atom_a", "token_a", "atom_b", "token_b", "doc_id", "init_a", "init_b"])
        empty.attrs["error"] = str(err)
        return empty
    prov = data.provenance[dict_a]
    df = pd.DataFrame(
        {
            "atom_a": rows_a.astype(int),
            "token_a": data.token_text[dict_a][rows_a] if len(rows_a) else [],
            "atom_b": rows_b.astype(int),
            "token_b": data.token_text[dict_b][rows_b] if len(rows_b) else [],
            "doc_id": prov.doc_id.numpy()[rows_a] if len(rows_a) else [],
            "init_a": data.init_count[dict_a][rows_a] if len(rows_a) else [],
            "init_b": data.init_count[dict_b][rows_b] if len(rows_b) else [],
        }
    )
    df.attrs["method"] = method
    df.attrs["atoms"] = options.atoms
    return df


@st.cache_data(ttl=TTL, show_spinner=False, max_entries=8)
def _stored_similarities(path: str, v: Version) -> pd.DataFrame:
    with connect_readonly(path) as con:
        return Q.stored_similarities(con)


def stored_similarities() -> pd.DataFrame:
    """Baseline measures (CKA, SVCCA, relative, R^2...) stored between dictionaries' layers, if any."""
    return _stored_similarities(*store_key())


def baseline(method: str, rows: list[int], cols: list[int]) -> np.ndarray:
    """A stored baseline as a rows x cols matrix (NaN where not computed; symmetric lookups allowed)."""
    df = stored_similarities()
    df = df[df["method"] == method]
    lookup = {(int(a), int(b)): float(x) for a, b, x in zip(df["dict_a"], df["dict_b"], df["value"], strict=True)}
    out = np.full((len(rows), len(cols)), np.nan)
    for i, a in enumerate(rows):
        for j, b in enumerate(cols):
            value = lookup.get((a, b), lookup.get((b, a)))
            if value is not None:
                out[i, j] = value
    return out
