"""Shared page furniture: the page registry, bounded address parameters, atom page addresses and links, the
"no store yet" message and tables of atoms that open an atom page when a row is selected."""

from __future__ import annotations

from typing import Any

import pandas as pd
import streamlit as st

from itda_core.layers import clip
from itda_dashboard import data
from itda_dashboard.render import label, md

# Page files relative to dashboard/app.py, with their URL paths (an atom page is atoms?dict=ID&atom=N).
PAGES = {
    "overview": ("views/overview.py", "Overview", ":material/dashboard:"),
    "atoms": ("views/atom_browser.py", "Atom browser", ":material/search:"),
    "live": ("views/live_decomposition.py", "Live decomposition", ":material/bolt:"),
    "similarity": ("views/similarity.py", "Similarity", ":material/grid_on:"),
    "map": ("views/atom_map.py", "Atom map", ":material/scatter_plot:"),
    "diff": ("views/diff.py", "Diff", ":material/difference:"),
}

# Bounds on the address bar: ids, model names and layer lists are far shorter; anything longer is ignored.
MAX_PARAM_CHARS = 200
MAX_PARAMS = 20

BUILD_HELP = """
Build one with

```bash
itda demo-build            # every layer of the embedded models, indexed (or: make demo)
itda train --model smollm2-135m --layers all --store {path}   # your own
itda index --store {path}  # top contexts, quantiles and densities for the atom pages
```

then refresh this page (new dictionaries show up as soon as they are written).
"""


def page(name: str) -> str:
    """The file of a page (for st.page_link / st.switch_page)."""
    return PAGES[name][0]


def url_params() -> dict[str, str]:
    """The page's query parameters, bounded: one whose name or value is over MAX_PARAM_CHARS characters, or past
    the first MAX_PARAMS, is dropped with a one-line warning, so a crafted link cannot make a page do unbounded
    work; the address bar loses it too."""
    params: dict[str, str] = {}
    dropped: list[str] = []
    for i, key in enumerate(st.query_params):
        value = str(st.query_params[key])
        if i >= MAX_PARAMS or len(key) > MAX_PARAM_CHARS or len(value) > MAX_PARAM_CHARS:
            dropped.append(key)
        else:
            params[key] = value
    for key in dropped:
        del st.query_params[key]
    if dropped:
        st.warning(
            f"Ignored {len(dropped)} address parameter(s) ({md(clip(', '.join(dropped), 60))}): at most "
            f"{MAX_PARAMS} parameters of at most {MAX_PARAM_CHARS} characters each are read."
        )
    return params


def quoted(value: object) -> str:
    """Untrusted text (a URL parameter, a name from the store) for a message: clipped, markdown-escaped."""
    return md(clip(str(value)))


def parse_id(value: Any) -> int | None:
    """An id as typed or linked (``17``, `` #17 ``) as an int, or None when it is not a number."""
    try:
        return int(str(value).strip().lstrip("#"))
    except (TypeError, ValueError):
        return None


def resolve_atom(params: dict[str, str], dicts: pd.DataFrame) -> tuple[int | None, int | None, list[str]]:
    """(dict_id, atom, problems) of an atom page address (``dict=ID&atom=N`` or ``model=NAME&layer=L&atom=N``)
    among the store's dictionaries ``dicts``; problems are shown, never raised."""
    problems: list[str] = []
    dict_id = None
    if "dict" in params:
        dict_id = parse_id(params["dict"])
        if dict_id is None or dict_id not in set(dicts["dict_id"]):
            problems.append(f"There is no dictionary {quoted(params['dict'])} in this store.")
            dict_id = None
    elif "model" in params:
        model, layer = str(params["model"]), parse_id(params.get("layer"))
        rows = dicts[(dicts["run"] == model) | (dicts["model"] == model) | (dicts["model_name"] == model)]
        if layer is not None:
            rows = rows[rows["layer"] == layer]
        if rows.empty:
            shown = f"{quoted(model)} layer {quoted(params.get('layer', '?'))}"
            problems.append(f"No dictionary for model {shown}.")
        else:
            dict_id = int(rows.iloc[0]["dict_id"])
    atom = None
    if "atom" in params and dict_id is not None:
        atom = parse_id(params["atom"])
        n_atoms = int(dicts.loc[dicts["dict_id"] == dict_id, "n_atoms"].iloc[0])
        if atom is None:
            problems.append(f"Atom id {quoted(params['atom'])} is not a number.")
        elif not 0 <= atom < n_atoms:
            problems.append(f"Dictionary {dict_id} has atoms 0 to {n_atoms - 1}; there is no atom {quoted(atom)}.")
            atom = None
    return dict_id, atom, problems


def require_store() -> data.StoreState:
    """Stop the page with a helpful message unless the store exists and has dictionaries."""
    state = data.state()
    if state.ok:
        return state
    if state.problem in ("missing", "empty"):
        st.info(state.message)
        st.markdown(BUILD_HELP.format(path=state.path))
        st.caption("This page checks for the store every few seconds (e.g. while `itda demo` builds it).")
        _watch_store(data.version(state.path))
    elif state.problem in ("schema", "error"):
        st.error(state.message)
    else:
        st.warning(f"{state.message} The page retries on the next refresh.")
    st.stop()
    return state  # pragma: no cover - st.stop raises


@st.fragment(run_every=4)
def _watch_store(seen: data.Version | None) -> None:
    """Rerun the page once the store appears or changes (checked every few seconds, nothing shown)."""
    if data.version(data.store_path()) != seen and data.state().ok:
        st.rerun(scope="app")


def atom_link(dict_id: int, atom: int, text: str | None = None, *, key: str | None = None) -> None:
    """A link (same tab) to an atom page."""
    shown = text if text is not None else f"atom {atom}"
    st.page_link(page("atoms"), label=md(shown), query_params=data.atom_query(dict_id, atom), icon=None)


def generation() -> int:
    """A counter bumped on every navigation to an atom page; keys of selection widgets include it, so a
    selection that navigated away is not replayed when the user comes back."""
    return int(st.session_state.get("_nav_generation", 0))


def set_atom_params(dict_id: int, atom: int) -> None:
    """Show another atom on the atom browser itself (a button callback: the URL follows)."""
    st.session_state["_nav_generation"] = generation() + 1
    st.query_params.from_dict(data.atom_query(dict_id, atom))


def open_atom(dict_id: int, atom: int, *, here: bool = False) -> None:
    """Go to an atom page now: from another page with st.switch_page, on the atom browser itself by
    changing the query parameters (a switch to the same page would leave the address bar as it was)."""
    if here:
        set_atom_params(dict_id, atom)
        st.rerun()
    st.session_state["_nav_generation"] = generation() + 1
    st.switch_page(page("atoms"), query_params=data.atom_query(dict_id, atom))


def with_links(df: pd.DataFrame, dict_col: str | int, atom_col: str, link_col: str = "open") -> pd.DataFrame:
    """``df`` with a column of relative atom-page URLs (``dict_col`` is a column name or one dict_id)."""
    dict_ids = df[dict_col] if isinstance(dict_col, str) else [dict_col] * len(df)
    out = df.copy()
    out.insert(0, link_col, [data.atom_url(int(d), int(a)) for d, a in zip(dict_ids, df[atom_col], strict=True)])
    return out


def atom_table(
    df: pd.DataFrame,
    *,
    key: str,
    dict_col: str | int,
    atom_col: str = "atom",
    token_cols: tuple[str, ...] = ("token_text",),
    height: int | str = "auto",
    column_config: dict[str, Any] | None = None,
    here: bool = False,
) -> None:
    """A table of atoms: an "open" link column (new tab) and single-row selection that opens the atom
    page in this tab (``here``: the table is on the atom browser itself). Token columns show whitespace."""
    if df.empty:
        st.caption("None.")
        return
    shown = with_links(df, dict_col, atom_col)
    for col in token_cols:
        if col in shown:
            shown[col] = [label(str(t), markers=False) if t is not None else "" for t in shown[col]]
    config: dict[str, Any] = {
        "open": st.column_config.LinkColumn("open", display_text="open ↗", width="small"),
    }
    config.update(column_config or {})
    event = st.dataframe(
        shown,
        key=f"{key}_{generation()}",
        hide_index=True,
        width="stretch",
        height=height,
        column_config=config,
        on_select="rerun",
        selection_mode="single-row",
    )
    rows = getattr(getattr(event, "selection", None), "rows", None) or []
    if rows:
        row = df.iloc[int(rows[0])]
        dict_id = row[dict_col] if isinstance(dict_col, str) else dict_col
        open_atom(int(dict_id), int(row[atom_col]), here=here)


def select_run(dicts: pd.DataFrame, *, key: str, label_text: str = "Model", default: str | None = None) -> str:
    """A select box of the store's runs (one model with one set of training options)."""
    runs = list(dict.fromkeys(dicts["run"]))
    if key not in st.session_state or st.session_state[key] not in runs:
        st.session_state[key] = default if default in runs else runs[0]
    return st.selectbox(label_text, runs, key=key)


def select_layer(layers: list[int], *, key: str, label_text: str = "Layer", default: int | None = None) -> int:
    """A layer slider over the given layers (a plain caption when there is only one)."""
    if key not in st.session_state or st.session_state[key] not in layers:
        st.session_state[key] = default if default in layers else layers[len(layers) // 2]
    if len(layers) == 1:
        st.caption(f"{label_text}: {layers[0]} (the only one)")
        return layers[0]
    return int(st.select_slider(label_text, options=layers, key=key))
