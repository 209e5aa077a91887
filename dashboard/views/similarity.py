"""Similarity: layer x layer Jaccard heatmaps for one model or two (also across tokenizers), stored baseline
measures beside them, and the model x model matrix. Selecting a cell lists the atoms the two share.

Which atoms count and which index (``itda_core.similarity.jaccard.JaccardOptions``) are chosen above the tabs
and kept in the URL: ``similarity?atoms=evidence|all&index=raw|corrected``; the defaults are
``DEFAULT_OPTIONS`` (evidence atoms, raw index)."""

from __future__ import annotations

import numpy as np
import pandas as pd
import streamlit as st

from itda_core.similarity.jaccard import ATOM_CHOICES, DEFAULT_OPTIONS, INDEX_CHOICES
from itda_dashboard import data, figures, nav, similarity_data
from itda_dashboard.render import escape, label, md

ATOM_LABELS = {"evidence": "evidence atoms", "all": "all atoms"}
INDEX_LABELS = {"corrected": "chance-corrected", "raw": "raw"}

st.title("Dictionary similarity")
st.caption(
    "Jaccard index of two dictionaries' source tokens, where an atom is identified by its document and token "
    "position (as in the paper), or, between different tokenizers, by the characters its token covers. By "
    "default only the atoms that carry evidence count (not the initial atoms picked arbitrarily among "
    "activations seen once) and the index is the paper's |A ∩ B| / |A ∪ B|, the pair that matched layers "
    "best in the 5-seed benchmark. Optionally corrected for chance: (J − J0) / (Jmax − J0), where J0 is the "
    "raw Jaccard two random sets of these sizes would have and Jmax the largest they can have; 0 = chance, "
    "1 = the smaller set inside the larger. See docs/similarity.md."
)
nav.require_store()
dicts = data.dictionaries()
runs = {
    r: dict(zip(g["layer"].astype(int), g["dict_id"].astype(int), strict=True))
    for r, g in dicts.groupby("run", sort=False)
}
names = list(runs)

# ---- which Jaccard: from the URL (read when it changes), kept in sync with the two radios -----------------

CHOICES = {  # URL parameter -> (widget key, allowed values, default)
    "atoms": ("sim_atoms", ATOM_CHOICES, DEFAULT_OPTIONS.atoms),
    "index": ("sim_index", INDEX_CHOICES, DEFAULT_OPTIONS.index),
}
params = {k: st.query_params[k] for k in st.query_params}
url_key = tuple(params.get(name) for name in CHOICES)
saved = st.session_state.get("_sim_options", {})  # survives a visit to another page (widget state does not)
if st.session_state.get("_sim_url") != url_key:
    st.session_state["_sim_url"] = url_key
    for name, (key, allowed, default) in CHOICES.items():
        if name not in params:
            continue
        value = str(params[name])
        if value not in allowed:
            st.warning(
                f"Unknown {name}={md(value)} in the address; showing the default, {name}={default} "
                f"(one of {', '.join(allowed)})."
            )
            value = default
        st.session_state[key] = value
for name, (key, allowed, default) in CHOICES.items():
    if st.session_state.get(key) not in allowed:
        st.session_state[key] = saved.get(name, default)

opt_cols = st.columns([3, 3, 4])
atoms_choice = opt_cols[0].radio(
    "Atoms",
    list(ATOM_CHOICES),
    key="sim_atoms",
    horizontal=True,
    format_func=lambda c: ATOM_LABELS[c] + (" (default)" if c == DEFAULT_OPTIONS.atoms else ""),
    help="Evidence atoms: every atom but the initial atoms picked arbitrarily among activations seen once "
    "(or of unknown count, in older stores). All atoms: the paper's rule.",
)
index_choice = opt_cols[1].radio(
    "Index",
    list(INDEX_CHOICES),
    key="sim_index",
    horizontal=True,
    format_func=lambda c: INDEX_LABELS[c] + (" (default)" if c == DEFAULT_OPTIONS.index else ""),
    help="Chance-corrected: 0 = no more shared than two random sets of these sizes, 1 = the smaller set "
    "inside the larger, negative = fewer than chance. Raw: |A ∩ B| / |A ∪ B|, as in the paper.",
)
options = similarity_data.jaccard_options(atoms_choice, index_choice)
st.session_state["_sim_options"] = {"atoms": options.atoms, "index": options.index}
view_params = {"atoms": options.atoms, "index": options.index}
if params != view_params:
    st.query_params.from_dict(view_params)
    st.session_state["_sim_url"] = tuple(view_params[name] for name in CHOICES)
CORRECTED = options.index == "corrected"
INIT_HELP = (
    "0: added by the error rule; for an initial atom, how often its activation occurred in its batch (1: an "
    "arbitrary pick, not evidence; -1: not recorded, older store)"
)
JACCARD = options.label  # e.g. "Jaccard (raw, evidence atoms)"
opt_cols[2].caption(
    f"Showing **{JACCARD}**"
    + (
        ": 0 = chance, 1 = the smaller set inside the larger, below 0 = fewer shared than chance."
        if CORRECTED
        else ": |A ∩ B| / |A ∪ B|, 0 to 1."
    )
)


def colour_title(text: str) -> str:
    """A colour bar title: the measure, and for the corrected index where chance is."""
    chance = "<br>0 = chance" if CORRECTED and text == JACCARD else ""
    return text.replace(" (", "<br>(").replace(", ", ",<br>") + chance


def too_few_warning(result: dict) -> None:
    """Say why cells are empty when a dictionary has fewer atoms that count than ``min_atoms``."""
    if result["too_few"]:
        st.warning(
            f"{result['too_few']:,} pair(s) have no value (empty cells): one of the two dictionaries has fewer "
            f"than {result['min_atoms']} {ATOM_LABELS[result['atoms']]}, too few to say how alike they are. "
            "Train on more documents for a value there."
        )


def value_text(x: float) -> str:
    """A Jaccard value for hover and text ("–" where undefined or not comparable)."""
    return f"{x:.3f}" if np.isfinite(x) else "–"


def _compare(a: str, b: str) -> None:
    """Show the layer x layer matrix of two models (button callback)."""
    st.session_state["sim_a"], st.session_state["sim_b"] = a, b


tab_layers, tab_models = st.tabs(["Layer × layer", "Model × model"])

with tab_layers:
    c = st.columns([2, 2, 2])
    for key in ("sim_a", "sim_b"):
        if st.session_state.get(key) not in names:
            st.session_state[key] = st.session_state.get("sim_a", names[0]) if key == "sim_b" else names[0]
    run_a = c[0].selectbox("Rows: model", names, key="sim_a")
    run_b = c[1].selectbox("Columns: model", names, key="sim_b")
    layers_a, layers_b = sorted(runs[run_a]), sorted(runs[run_b])
    ids_a, ids_b = [runs[run_a][la] for la in layers_a], [runs[run_b][lb] for lb in layers_b]
    baselines = similarity_data.stored_similarities()
    wanted = set(ids_a) | set(ids_b)
    methods = (
        sorted(set(baselines.loc[baselines["dict_a"].isin(wanted) & baselines["dict_b"].isin(wanted), "method"]))
        if not baselines.empty
        else []
    )
    measure = c[2].selectbox(
        "Measure",
        ["Jaccard", *methods],
        key="sim_measure",
        help="Baselines (CKA, SVCCA, relative representations...) appear here once they "
        "are computed and stored for these layers.",
    )
    if not methods:
        c[2].caption("No baseline measures stored for these layers.")
    result = similarity_data.jaccard(ids_a, ids_b, options)
    if result["errors"]:
        st.warning("Some pairs cannot be compared (their cells are empty): " + md(result["errors"][0]))
    too_few_warning(result)
    is_jaccard = measure == "Jaccard"
    if is_jaccard:
        z, zmax, bar = result["values"], None, colour_title(JACCARD)
    else:
        z, zmax, bar = similarity_data.baseline(measure, ids_a, ids_b), None, measure
    shared = result["shared"]
    custom = np.stack(
        [
            np.broadcast_to(np.asarray(ids_a)[:, None], z.shape),
            np.broadcast_to(np.asarray(ids_b)[None, :], z.shape),
            shared,
            np.broadcast_to(np.asarray(layers_a)[:, None], z.shape),
            np.broadcast_to(np.asarray(layers_b)[None, :], z.shape),
        ],
        axis=-1,
    )
    texts = np.vectorize(value_text, otypes=[object])(result["values"])
    hover = (
        f"{escape(run_a)} L%{{customdata[3]}} × {escape(run_b)} L%{{customdata[4]}}<br>"
        f"{escape(JACCARD)} %{{text}}<br>%{{customdata[2]}} shared atoms<extra></extra>"
    )
    fig = figures.heatmap(
        z,
        [str(x) for x in layers_b],
        [str(y) for y in layers_a],
        custom,
        hover,
        hover_text=texts,
        title_x=f"{escape(run_b)} layer",
        title_y=f"{escape(run_a)} layer",
        zmax=zmax,
        colorbar=bar,
        diverging=is_jaccard and CORRECTED,
    )
    st.markdown(f"**{JACCARD}**" if is_jaccard else f"**{md(measure)}** (hover: {JACCARD})")
    event = st.plotly_chart(
        fig,
        width="stretch",
        on_select="rerun",
        selection_mode="points",
        key=f"sim_heat_{run_a}_{run_b}_{measure}_{options.atoms}_{options.index}",
    )
    how = "/".join(result["methods"]) or "–"
    st.caption(
        f"Atoms matched by {how}"
        + (" · colour: red above chance, blue below, white = chance (0)" if is_jaccard and CORRECTED else "")
        + ". Click a cell (or pick the layers below) to list the atoms both share."
    )

    cell = figures.selected_cell(event)
    pick_key = f"sim_pick_{run_a}_{run_b}"
    if cell is not None and st.session_state.get(pick_key + "_last") != cell:
        st.session_state[pick_key + "_last"] = cell
        st.session_state[pick_key + "_row"] = layers_a[min(cell[0], len(layers_a) - 1)]
        st.session_state[pick_key + "_col"] = layers_b[min(cell[1], len(layers_b) - 1)]
    if st.session_state.get(pick_key + "_row") not in layers_a:
        st.session_state[pick_key + "_row"] = layers_a[len(layers_a) // 2]
    if st.session_state.get(pick_key + "_col") not in layers_b:
        default_col = (
            layers_b[min(len(layers_b) - 1, layers_b.index(st.session_state[pick_key + "_row"]) + 1)]
            if run_a == run_b and st.session_state[pick_key + "_row"] in layers_b
            else layers_b[len(layers_b) // 2]
        )
        st.session_state[pick_key + "_col"] = default_col
    p = st.columns(2)
    row_layer = p[0].selectbox(f"{md(run_a)} layer", layers_a, key=pick_key + "_row")
    col_layer = p[1].selectbox(f"{md(run_b)} layer", layers_b, key=pick_key + "_col")
    dict_a, dict_b = runs[run_a][row_layer], runs[run_b][col_layer]
    pairs = similarity_data.shared_pairs(dict_a, dict_b, options)
    i, j = layers_a.index(row_layer), layers_b.index(col_layer)
    value = result["values"][i, j]
    st.markdown(
        f"**{md(run_a)} layer {row_layer} × {md(run_b)} layer {col_layer}**: Jaccard {value_text(value)} "
        f"({options.index}, {ATOM_LABELS[options.atoms]}), {len(pairs):,} shared atoms"
        + (f" (matched by {pairs.attrs.get('method')})" if len(pairs) else "")
    )
    st.page_link(nav.page("diff"), label="What each has that the other lacks (diff)", icon=":material/difference:",
                 query_params={"a": str(dict_a), "b": str(dict_b), "atoms": options.atoms, "index": options.index})
    if pairs.attrs.get("error"):
        st.caption("Not comparable: " + md(str(pairs.attrs["error"])))
    if len(pairs):
        view = pairs.head(500).copy()
        view.insert(0, "atom A", [data.atom_url(dict_a, int(a)) for a in view["atom_a"]])
        view.insert(1, "atom B", [data.atom_url(dict_b, int(b)) for b in view["atom_b"]])
        view["token_a"] = [label(str(t), markers=False) for t in view["token_a"]]
        view["token_b"] = [label(str(t), markers=False) for t in view["token_b"]]
        shown = ["atom A", "token_a", "atom B", "token_b", "doc_id"]
        if (view["init_a"] != 0).any() or (view["init_b"] != 0).any():  # initial atoms among the shared ones
            shown += ["init_a", "init_b"]
        st.dataframe(
            view[shown],
            hide_index=True,
            width="stretch",
            height=320,
            column_config={
                "atom A": st.column_config.LinkColumn(f"{run_a} L{row_layer}", display_text=r"atom=(\d+)$"),
                "atom B": st.column_config.LinkColumn(f"{run_b} L{col_layer}", display_text=r"atom=(\d+)$"),
                "init_a": st.column_config.NumberColumn("init count A", help=INIT_HELP),
                "init_b": st.column_config.NumberColumn("init count B", help=INIT_HELP),
            },
        )
        if len(pairs) > 500:
            st.caption(f"First 500 of {len(pairs):,}.")
        first = pairs.iloc[0]
        nav.atom_link(
            dict_a,
            int(first["atom_a"]),
            f"Open the first shared atom ({run_a} L{row_layer} atom {int(first['atom_a'])})",
        )

with tab_models:
    st.caption(
        "Each model's dictionaries for layers 1..n-1 pooled into one set (as in the paper; only the atoms that "
        "count under the choice above), then compared pairwise; across tokenizers atoms are matched by characters."
    )
    mm = similarity_data.model_matrix({r: [runs[r][la] for la in sorted(runs[r])] for r in names}, options)
    if mm["errors"]:
        st.warning("Some pairs cannot be compared (their cells are empty): " + md(mm["errors"][0]))
    too_few_warning(mm)
    n = len(names)
    idx = np.arange(n)
    custom = np.stack(
        [
            np.broadcast_to(idx[:, None], (n, n)),
            np.broadcast_to(idx[None, :], (n, n)),
            mm["shared"],
        ],
        axis=-1,
    )
    st.markdown(f"**{JACCARD}**, model × model")
    fig = figures.heatmap(
        mm["values"],
        [escape(n) for n in names],  # tick labels: plotly reads HTML in them
        [escape(n) for n in names],
        custom,
        f"{escape(JACCARD)} %{{text}}<br>%{{customdata[2]}} shared source tokens<extra></extra>",
        hover_text=np.vectorize(value_text, otypes=[object])(mm["values"]),
        title_x="",
        title_y="",
        zmax=1.0,
        colorbar=colour_title(JACCARD),
        diverging=CORRECTED,
    )
    event = st.plotly_chart(
        fig,
        width="stretch",
        on_select="rerun",
        selection_mode="points",
        key=f"sim_models_{options.atoms}_{options.index}",
    )
    table = pd.DataFrame(mm["values"], index=pd.Index(names, name="model"), columns=names).round(4)
    st.dataframe(table, width="stretch")
    st.caption(f"{JACCARD}; empty: not comparable or undefined.")
    cell = figures.selected_cell(event)
    if cell is not None:
        a, b = names[cell[0]], names[cell[1]]
        st.markdown(f"**{md(a)} × {md(b)}**: {int(mm['shared'][cell[0], cell[1]]):,} shared source tokens.")
        st.button(f"Compare {md(a)} and {md(b)} layer by layer", key="sim_models_go", on_click=_compare, args=(a, b))
