"""Cached, read-only access to the store for the dashboard pages: which store, its state, names and links,
the overview's models and dictionaries, and atom maps (atom pages: :mod:`itda_dashboard.atom_data`;
similarity: :mod:`itda_dashboard.similarity_data`).

Every read opens a short-lived read-only connection (:func:`itda_core.store.connect_readonly`), so
training and indexing can write to the same store while the dashboard is open; the SQL is the store's
(:mod:`itda_core.store.queries`), the dashboard only caches and shapes. Results are cached with
``st.cache_data`` (small frames) or ``st.cache_resource`` (atom matrices and provenance sets), keyed by
the store's path and its *version*: the modification time and size of the file and of its write-ahead
log. A refresh after a writer commits therefore shows the new dictionaries at once; until then every
repeated read is served from memory.
"""

from __future__ import annotations

import json
import os
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd
import streamlit as st

from itda_core.store import queries as Q
from itda_core.store.connection import DEFAULT_STORE, ENV_STORE, StoreBusy, StoreError, connect_readonly
from itda_core.store.schema import SchemaMismatch

TTL = 600  # seconds; the version key already invalidates on every write
Version = tuple[int, int, int, int]


# ---- which store -----------------------------------------------------------------------------------------


def store_path() -> Path:
    """The store to show: ``--store PATH`` after ``--`` on the streamlit command line, else $ITDA_STORE,
    else data/itda.duckdb."""
    argv = sys.argv[1:]
    for i, arg in enumerate(argv):
        if arg == "--store" and i + 1 < len(argv):
            return Path(argv[i + 1]).expanduser()
        if arg.startswith("--store="):
            return Path(arg.split("=", 1)[1]).expanduser()
    env = os.environ.get(ENV_STORE)
    return Path(env).expanduser() if env else DEFAULT_STORE


def version(path: Path) -> Version | None:
    """(mtime_ns, size) of the store file and of its write-ahead log; None when the file is missing."""
    try:
        main = path.stat()
    except FileNotFoundError:
        return None
    try:
        wal = path.with_name(path.name + ".wal").stat()
        wal_key = (wal.st_mtime_ns, wal.st_size)
    except FileNotFoundError:
        wal_key = (0, 0)
    return (main.st_mtime_ns, main.st_size, *wal_key)


def store_key() -> tuple[str, Version]:
    """(path, version) of the store: the first two arguments of every cached read."""
    path = store_path()
    v = version(path)
    if v is None:
        raise StoreError(f"no store at {path}")
    return str(path), v


# ---- names -------------------------------------------------------------------------------------------------


def short_name(name: str) -> str:
    """A model's display name: the last part of a local path or .gguf file, a hub id or alias as is."""
    if name.startswith(("/", "./", "../", "~")) or name.endswith(".gguf"):
        base = Path(name).name
        return base[: -len(".gguf")] if base.endswith(".gguf") else base
    return name


def atom_query(dict_id: int, atom: int) -> dict[str, str]:
    """Query parameters of an atom page."""
    return {"dict": str(int(dict_id)), "atom": str(int(atom))}


def atom_url(dict_id: int, atom: int) -> str:
    """Relative URL of an atom page (works under any base path, opens from any page)."""
    return f"atoms?dict={int(dict_id)}&atom={int(atom)}"


# ---- overview ----------------------------------------------------------------------------------------------


@dataclass
class StoreState:
    """Whether the dashboard has something to show, and if not, why."""

    path: Path
    ok: bool
    problem: str = ""  # "missing", "empty", "schema", "busy", "error"
    message: str = ""
    n_dictionaries: int = 0


@st.cache_data(ttl=TTL, show_spinner=False, max_entries=8)
def _summary(path: str, v: Version) -> dict[str, Any]:
    with connect_readonly(path) as con:
        return Q.store_summary(con)


def state() -> StoreState:
    """Check the store once per page: missing, not a store, busy, empty, or ready."""
    path = store_path()
    v = version(path)
    if v is None:
        return StoreState(path, False, "missing", f"There is no store at `{path}` yet.")
    try:
        info = _summary(str(path), v)
    except SchemaMismatch as err:
        return StoreState(path, False, "schema", str(err))
    except StoreBusy as err:
        return StoreState(path, False, "busy", str(err))
    except StoreError as err:  # damaged, or another DuckDB failure: its one line, not a traceback
        return StoreState(path, False, "error", str(err))
    n = int(info["counts"]["dictionaries"])
    if n == 0:
        return StoreState(path, False, "empty", f"The store `{path}` holds no dictionaries yet.")
    return StoreState(path, True, n_dictionaries=n)


def summary() -> dict[str, Any]:
    """``store_summary``: corpora, models and row counts."""
    return _summary(*store_key())


@st.cache_data(ttl=TTL, show_spinner=False, max_entries=8)
def _models(path: str, v: Version) -> pd.DataFrame:
    with connect_readonly(path) as con:
        df = Q.list_models(con)
    df["label"] = [short_name(n) for n in df["name"]]
    return df


def models() -> pd.DataFrame:
    """Models with their dictionary counts, plus a display ``label``."""
    return _models(*store_key())


def _options_without_site(options_key: Any) -> str:
    """A dictionary's training options minus the site (which names the layer), as canonical JSON."""
    try:
        opts = json.loads(options_key)
    except (TypeError, ValueError):
        return str(options_key)
    if isinstance(opts, dict):
        opts.pop("site", None)
    return json.dumps(opts, sort_keys=True)


def precision_label(activation: Any, cache: Any) -> str:
    """How a dictionary's activations were computed (and cached), for tables: ``float32``, ``bfloat16, cached as
    float16``; ``not recorded`` for dictionaries trained before itda kept it."""
    model = activation if isinstance(activation, str) and activation else "not recorded"
    return f"{model}, cached as {cache}" if isinstance(cache, str) and cache else model


@st.cache_data(ttl=TTL, show_spinner=False, max_entries=8)
def _dictionaries(path: str, v: Version) -> pd.DataFrame:
    with connect_readonly(path) as con:
        df = Q.list_dictionaries(con)
        extra = Q.dictionary_details(con)
        evals = Q.evaluation_values(con)  # one figure per metric: the quality table's
        has_umap = Q.has_table(con, "atom_umap")
    df = df.merge(extra, on="dict_id", how="left")
    df["model"] = [short_name(n) for n in df["model_name"]]
    df["options"] = [_options_without_site(o) for o in df["options_key"]]
    df["precision"] = [precision_label(a, c) for a, c in zip(df["activation_dtype"], df["cache_dtype"], strict=True)]
    # One "run" per model, training corpus, options and data (tokens and documents seen): the dictionaries a
    # layer x layer matrix compares.
    run_cols = ["model_id", "train_corpus_id", "options", "data_key"]
    runs = df[run_cols].drop_duplicates().reset_index(drop=True)
    per_model = runs.groupby("model_id").cumcount()
    counts = runs.groupby("model_id")["model_id"].transform("count")
    runs["run"] = [
        short_name(str(df.loc[df["model_id"] == mid, "model_name"].iloc[0])) + (f" #{i + 1}" if n > 1 else "")
        for mid, i, n in zip(runs["model_id"], per_model, counts, strict=True)
    ]
    df = df.merge(runs, on=run_cols, how="left")
    dup = df.duplicated(["run", "layer"], keep=False)
    df["label"] = [
        f"{r} L{layer}" + (f" (#{d})" if is_dup else "")
        for r, layer, d, is_dup in zip(df["run"], df["layer"], df["dict_id"], dup, strict=True)
    ]
    if not evals.empty:
        wide = evals.pivot(index="dict_id", columns="metric", values="value")
        wide.columns = [f"eval_{c}" for c in wide.columns]
        df = df.merge(wide.reset_index(), on="dict_id", how="left")
    df.attrs["has_umap"] = has_umap
    # Models in the order they entered the store (the demo's first model first), then layers.
    df = df.sort_values(["model_added", "run", "layer", "dict_id"], na_position="last")
    return df.drop(columns=["model_added"]).reset_index(drop=True)


def dictionaries() -> pd.DataFrame:
    """Every dictionary with model, layer, sizes, options, ``family``, ``run`` and ``label`` and, when the
    store has evaluations, one ``eval_<metric>`` column per metric."""
    return _dictionaries(*store_key())


def dictionary(dict_id: int) -> dict[str, Any] | None:
    """One row of :func:`dictionaries` as a dict (None when there is no such dictionary)."""
    df = dictionaries()
    rows = df[df["dict_id"] == int(dict_id)]
    return None if rows.empty else rows.iloc[0].to_dict()


@st.cache_data(ttl=TTL, show_spinner=False, max_entries=8)
def _density(path: str, v: Version) -> pd.DataFrame:
    with connect_readonly(path) as con:
        return Q.density_by_layer(con)


def density_by_layer() -> pd.DataFrame:
    """Per indexed dictionary: atoms, atoms active on held-out text, density quartiles."""
    return _density(*store_key())


# ---- atom map ----------------------------------------------------------------------------------------------


@st.cache_data(ttl=TTL, show_spinner=False, max_entries=32)
def _atom_map(path: str, v: Version, dict_ids: tuple[int, ...]) -> pd.DataFrame | None:
    from itda_core.store.atom_maps import read_atom_map

    with connect_readonly(path) as con:
        return read_atom_map(con, list(dict_ids))


def atom_map(dict_ids: list[int]) -> pd.DataFrame | None:
    """The stored UMAP of these dictionaries (one per dictionary, or a joint map of several), with source
    token, context snippet, density and layer per atom; None when it has not been computed."""
    return _atom_map(*store_key(), tuple(sorted(int(d) for d in dict_ids)))


@st.cache_resource(show_spinner=False, max_entries=8)
def _computed_map(path: str, v: Version, dict_ids: tuple[int, ...]) -> pd.DataFrame:
    from itda_core.jobs.atom_maps import compute_map_frame

    with connect_readonly(path) as con:
        return compute_map_frame(con, list(dict_ids))


def compute_atom_map(dict_ids: list[int]) -> pd.DataFrame:
    """A UMAP computed here and kept in this process only (the store is never written by the dashboard)."""
    return _computed_map(*store_key(), tuple(sorted(int(d) for d in dict_ids)))


def clear_caches() -> None:
    """Drop every cached store read (the refresh button); loaded models stay in memory."""
    from itda_dashboard import atom_data, diff_data, similarity_data

    st.cache_data.clear()
    for cached in (atom_data.unit_vector_cache, similarity_data.atom_sources_cache, similarity_data.sets_cache,
                   diff_data.diff_cache, _computed_map):  # fmt: skip
        cached.clear()
