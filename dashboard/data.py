"""Cached, read-only access to the store for the dashboard pages.

Every read opens a short-lived read-only connection (:func:`itda_core.store.connect_readonly`), so
training and indexing can write to the same store while the dashboard is open. Results are cached with
``st.cache_data`` (small frames) or ``st.cache_resource`` (atom matrices and provenance sets), keyed by
the store's path and its *version*: the modification time and size of the file and of its write-ahead
log. A refresh after a writer commits therefore shows the new dictionaries at once; until then every
repeated read is served from memory.
"""

from __future__ import annotations

import json
import math
import os
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import streamlit as st

from itda_core.errors import ITDAError
from itda_core.store import queries as Q
from itda_core.store.connection import DEFAULT_STORE, StoreBusy, StoreError, connect_readonly
from itda_core.store.schema import SchemaMismatch

ENV_STORE = "ITDA_STORE"
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


@st.cache_data(ttl=TTL, show_spinner=False, max_entries=8)
def _dictionaries(path: str, v: Version) -> pd.DataFrame:
    with connect_readonly(path) as con:
        df = Q.list_dictionaries(con)
        extra = con.execute(
            "SELECT d.dict_id, d.options_key, d.data_key, d.tokenizer_id, m.family, m.n_layers, m.architecture, "
            "m.added AS model_added "
            "FROM dictionaries d LEFT JOIN models m USING (model_id)"
        ).df()
        # Several rows per metric (other k, other corpus): the pivot below keeps the last, so order the rows
        # to put those at the dictionary's own k last, the most recent last among them.
        evals = con.execute(
            "SELECT e.dict_id, e.metric, e.value FROM evaluations e LEFT JOIN dictionaries d USING (dict_id) "
            "ORDER BY COALESCE(TRY_CAST(json_extract_string(e.details, '$.k') AS INTEGER) = d.k, false), e.created"
        ).df()
        has_umap = "atom_umap" in {
            r[0]
            for r in con.execute(
                "SELECT table_name FROM information_schema.tables WHERE table_schema = 'main'"
            ).fetchall()
        }
    df = df.merge(extra, on="dict_id", how="left")
    df["model"] = [short_name(n) for n in df["model_name"]]
    df["options"] = [_options_without_site(o) for o in df["options_key"]]
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
        wide = evals.pivot_table(index="dict_id", columns="metric", values="value", aggfunc="last")
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


# ---- atoms -------------------------------------------------------------------------------------------------


def _ints(values: Any) -> str:
    """A SQL list of integers (values are cast, so nothing but digits reaches the query)."""
    return ", ".join(str(int(v)) for v in values) or "NULL"


# An atom's init_count (never NULL in a v2 store; the fallback is the v1 -> v2 migration's rule).
_INIT_COUNT = "COALESCE(a.init_count, CASE WHEN a.add_error IS NULL OR isnan(a.add_error) THEN -1 ELSE 0 END)"

_ATOM_SQL = f"""
    SELECT a.dict_id, a.atom, a.doc_id, a.position, a.token_id, a.token_str, a.token_text, a.char_start,
           a.char_end, a.add_error, {_INIT_COUNT} AS init_count, d.model_id, d.model_name, d.layer, d.corpus_id,
           doc.source AS doc_source, doc.split AS doc_split, doc.text AS doc_text, s.n_active, s.density,
           s.mean_coef, s.min_coef, s.max_coef, s.mean_abs, s.n_negative
    FROM atoms a JOIN dictionaries d USING (dict_id)
    LEFT JOIN documents doc ON doc.corpus_id = d.corpus_id AND doc.doc_id = a.doc_id
    LEFT JOIN atom_stats s ON s.dict_id = a.dict_id AND s.atom = a.atom
    WHERE a.dict_id = ? AND a.atom = ?"""


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
        cur = con.execute(_ATOM_SQL, [dict_id, atom_id])
        names = [c[0] for c in cur.description]
        rows = cur.fetchall()
        if not rows:
            return None
        row = _clean(dict(zip(names, rows[0], strict=True)))
        top = con.execute(
            f"SELECT doc_id, position, coef FROM atom_top_contexts WHERE dict_id = ? AND atom = ? "
            f"ORDER BY rank LIMIT {int(top_n)}",
            [dict_id, atom_id],
        ).fetchall()
        quant = con.execute(
            "SELECT bin, q_lo, q_hi, bin_lo, bin_hi, bin_count, doc_id, position, coef FROM atom_quantiles "
            "WHERE dict_id = ? AND atom = ? ORDER BY bin DESC, coef DESC, doc_id, position",
            [dict_id, atom_id],
        ).df()
        hits = [*top, *zip(quant["doc_id"], quant["position"], quant["coef"], strict=True)]
        source_hit = (int(row["doc_id"]), int(row["position"]), None)
        contexts = _contexts(con, dict_id, atom_id, [source_hit, *hits], window)
        histogram = Q.coefficient_histogram(con, dict_id, atom_id)
        scale_rows = con.execute(
            "SELECT quantile_cont(abs(coef), 0.98) FROM codes WHERE dict_id = ? AND atom = ?", [dict_id, atom_id]
        ).fetchall()
        shared = Q.shared_provenance(con, dict_id, atom_id)
    by_hit = {(c.doc_id, c.position): c for c in contexts}
    source = by_hit.get(source_hit[:2])
    if source is not None:  # a training document: no held-out coefficients to show
        source = Context(source.doc_id, source.position, None, [(*c[:3], None, c[4]) for c in source.cells])

    def ctx(d: Any, p: Any, coef: Any) -> Context | None:
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
    scale = float(scale_rows[0][0]) if scale_rows and scale_rows[0][0] else 0.0
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
        return con.execute(
            "SELECT a.atom, a.token_text, a.token_str, a.doc_id, a.position, a.add_error, "
            f"{_INIT_COUNT} AS init_count, s.density, s.n_active, s.max_coef, s.mean_abs "
            "FROM atoms a LEFT JOIN atom_stats s ON s.dict_id = a.dict_id AND s.atom = a.atom "
            "WHERE a.dict_id = ? ORDER BY a.atom",
            [dict_id],
        ).df()


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
    from itda_dashboard.render import pieces

    if not hits:
        return []
    keys = con.execute(
        "SELECT corpus_id, tokenizer_id, seq_len FROM dictionaries WHERE dict_id = ?", [dict_id]
    ).fetchall()
    if not keys:
        return []
    doc_ids = sorted({int(d) for d, _, _ in hits})
    ids = _ints(doc_ids)
    texts, tokens = Q.documents_with_tokens(con, *keys[0], doc_ids)
    coefs: dict[tuple[int, int], float] = {}
    if atom_id is not None:
        for d, p, c in con.execute(
            f"SELECT doc_id, position, SUM(coef) FROM codes WHERE dict_id = ? AND atom = ? "
            f"AND doc_id IN ({ids}) GROUP BY ALL",
            [dict_id, atom_id],
        ).fetchall():
            coefs[(int(d), int(p))] = float(c)
    out = []
    for doc_id, pos, coef in hits:
        doc_id, pos = int(doc_id), int(pos)
        doc = tokens.get(doc_id, {})
        text = texts.get(doc_id, "")
        window_pos = [p for p in range(max(0, pos - window), pos + window + 1) if p in doc]
        if not window_pos:
            continue
        parts = pieces(text, [doc[p][1:] for p in window_pos], [doc[p][0] for p in window_pos])
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
        df = con.execute(
            f"SELECT a.atom, a.token_text, a.token_str, a.doc_id, a.position, s.density "
            f"FROM atoms a LEFT JOIN atom_stats s ON s.dict_id = a.dict_id AND s.atom = a.atom "
            f"WHERE a.dict_id = ? AND a.atom IN ({_ints(atoms)})",
            [dict_id],
        ).df()
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
def _unit_vectors(path: str, v: Version, dict_id: int) -> np.ndarray:
    with connect_readonly(path) as con:
        vectors = Q.atom_vectors(con, dict_id)
    norms = np.linalg.norm(vectors, axis=1, keepdims=True)
    return vectors / np.maximum(norms, 1e-12)


def unit_vectors(dict_id: int) -> np.ndarray:
    """The dictionary's atoms as unit rows [n_atoms, d] (row i is atom i), cached in memory."""
    return _unit_vectors(*store_key(), int(dict_id))


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


# ---- similarity --------------------------------------------------------------------------------------------


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
class StoreAtoms:
    """Every dictionary's provenance, as read from ``atoms`` (row i = atom i), for the Jaccard atom sets."""

    provenance: dict[int, Any]  # dict_id -> Provenance
    configs: dict[int, Any]  # dict_id -> ITDAConfig
    token_text: dict[int, np.ndarray]  # dict_id -> token texts
    init_count: dict[int, np.ndarray]  # dict_id -> init_count (see itda_core.dictionary.ITDA)


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
def _store_atoms(path: str, v: Version) -> StoreAtoms:
    import torch

    from itda_core.dictionary import ITDAConfig
    from itda_core.provenance import Provenance

    with connect_readonly(path) as con:
        configs = {
            int(d): ITDAConfig.from_dict(json.loads(c))
            for d, c in con.execute("SELECT dict_id, config FROM dictionaries").fetchall()
        }
        table = con.sql(
            "SELECT a.dict_id, a.doc_id, a.position, a.token_id, a.char_start, a.char_end, a.token_str, "
            f"a.token_text, {_INIT_COUNT} AS init_count FROM atoms a ORDER BY a.dict_id, a.atom"
        ).to_arrow_table()
    cols = {
        name: table.column(name).to_numpy()
        for name in ("dict_id", "doc_id", "position", "token_id", "char_start", "char_end", "init_count")
    }
    strs = table.column("token_str").to_pylist()
    texts = table.column("token_text").to_pylist()
    out = StoreAtoms({}, configs, {}, {})
    bounds = np.flatnonzero(np.diff(cols["dict_id"])) + 1
    for lo, hi in zip([0, *bounds.tolist()], [*bounds.tolist(), len(strs)], strict=True):
        if hi <= lo:
            continue
        dict_id = int(cols["dict_id"][lo])
        out.provenance[dict_id] = Provenance(
            *(
                torch.from_numpy(np.asarray(cols[c][lo:hi], dtype=np.int64))
                for c in ("doc_id", "position", "token_id", "char_start", "char_end")
            ),
            token_str=strs[lo:hi],
        )
        out.token_text[dict_id] = np.asarray(texts[lo:hi], dtype=object)
        out.init_count[dict_id] = np.asarray(cols["init_count"][lo:hi], dtype=np.int64)
    return out


@st.cache_resource(show_spinner=False, max_entries=8)
def _sets(path: str, v: Version, atoms: str) -> Sets:
    from itda_core.similarity.jaccard import AtomSet

    jaccard_options(atoms)  # an unknown choice is an ITDAError, not a silent "all"
    base = _store_atoms(path, v)
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
    return _sets(*store_key(), atoms)


def _value(shared: int, n_a: int, n_b: int, sa: Any, sb: Any, options: Any) -> float:
    from itda_core.similarity.jaccard import pair_universe

    return float(options.value(shared, n_a, n_b, pair_universe(sa, sb)))


@st.cache_data(ttl=TTL, show_spinner=False, max_entries=64)
def _jaccard(
    path: str, v: Version, rows: tuple[int, ...], cols: tuple[int, ...], atoms: str, index: str, min_atoms: int
) -> dict[str, Any]:
    from itda_core.similarity.jaccard import shared_count

    options = jaccard_options(atoms, index, min_atoms)
    sets = _sets(path, v, options.atoms).sets
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
    data = _store_atoms(path, v)
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
        return con.execute(
            "SELECT dict_a, dict_b, method, value FROM similarities WHERE lower(method) <> 'jaccard'"
        ).df()


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


# ---- atom map ----------------------------------------------------------------------------------------------


@st.cache_data(ttl=TTL, show_spinner=False, max_entries=32)
def _atom_map(path: str, v: Version, dict_ids: tuple[int, ...]) -> pd.DataFrame | None:
    from itda_core.jobs.atom_maps import read_atom_map

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
    st.cache_data.clear()
    for cached in (_unit_vectors, _store_atoms, _sets, _computed_map):
        cached.clear()
