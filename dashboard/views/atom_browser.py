"""Atom browser: pick a model and layer, search atoms by source token or id, and read an atom's page.

An atom page is ``atoms?dict=ID&atom=N`` (``atoms?model=NAME&layer=L&atom=N`` works too), so it can be
shared. It shows where the atom came from, its activity on held-out text (top contexts coloured by
coefficient, quantile samples, density and a histogram), its logit effect for causal LMs, its nearest
atoms, the same source token in other layers' and models' dictionaries, and steering with it (causal LMs).
"""

from __future__ import annotations

import math

import streamlit as st

from itda_dashboard import atom_data, data, figures, live, nav, steering_panel
from itda_dashboard.render import Cell, context_rows_html, highlight_html, label, legend_html, md, tokens_html

st.title("Atom browser")
nav.require_store()
dicts = data.dictionaries()


# ---- which dictionary and atom: from the URL, kept in sync with the widgets --------------------------------


params = nav.url_params()
dict_id, atom_id, problems = nav.resolve_atom(params, dicts)
for problem in problems:
    st.warning(problem)

# Widgets follow the URL whenever the URL changes (a link, a shared address, back/forward).
url_key = (params.get("dict"), params.get("model"), params.get("layer"), params.get("atom"))
navigated = st.session_state.get("_ab_url") != url_key
if navigated:
    st.session_state["_ab_url"] = url_key
    if dict_id is not None:
        row = dicts[dicts["dict_id"] == dict_id].iloc[0]
        st.session_state["ab_run"] = row["run"]
        st.session_state["ab_layer"] = int(row["layer"])


def _dict_for(run: str, layer: int) -> int:
    rows = dicts[(dicts["run"] == run) & (dicts["layer"] == layer)]
    return int(rows.iloc[0]["dict_id"])


def _on_pick() -> None:
    """Model or layer changed: show that dictionary (no atom)."""
    run = st.session_state["ab_run"]
    layers = sorted(int(x) for x in dicts.loc[dicts["run"] == run, "layer"])
    layer = st.session_state.get("ab_layer")
    if layer not in layers:
        layer = min(layers, key=lambda x: abs(x - (layer or 0)))
        st.session_state["ab_layer"] = layer
    new = _dict_for(run, layer)
    st.query_params.clear()
    st.query_params["dict"] = str(new)
    st.session_state["_ab_url"] = (str(new), None, None, None)


top = st.columns([2, 3, 3])
with top[0]:
    runs = list(dict.fromkeys(dicts["run"]))
    if st.session_state.get("ab_run") not in runs:
        st.session_state["ab_run"] = runs[0]
    run = st.selectbox("Model", runs, key="ab_run", on_change=_on_pick)
layers = sorted(int(x) for x in dicts.loc[dicts["run"] == run, "layer"])
with top[1]:
    if st.session_state.get("ab_layer") not in layers:
        st.session_state["ab_layer"] = layers[len(layers) // 2]
    if len(layers) > 1:
        layer = int(st.select_slider("Layer", options=layers, key="ab_layer", on_change=_on_pick))
    else:
        layer = layers[0]
        st.caption(f"Layer {layer} (the only one)")
current = _dict_for(run, layer)
if dict_id is None or dict_id != current:
    dict_id, atom_id = current, (atom_id if dict_id == current else None)
info = data.dictionary(dict_id)
assert info is not None
# The address bar always names what is shown (model/layer links and bad parameters are rewritten).
canonical = {"dict": str(dict_id), **({"atom": str(atom_id)} if atom_id is not None else {})}
if params != canonical:
    st.query_params.from_dict(canonical)
st.session_state["_ab_url"] = (canonical["dict"], None, None, canonical.get("atom"))
st.session_state["_ab_dict"] = (dict_id, int(info["n_atoms"]))


def _on_search() -> None:
    """An atom id typed in the search box opens that atom (and clears the box)."""
    text = str(st.session_state.get("ab_search", "")).strip()
    shown = st.session_state.get("_ab_dict")
    if not text.lstrip("#").isdigit() or shown is None or st.session_state.get("ab_everywhere"):
        return
    number = int(text.lstrip("#"))
    if 0 <= number < shown[1]:
        nav.set_atom_params(shown[0], number)
        st.session_state["ab_search"] = ""


with top[2]:
    query = st.text_input(
        "Search atoms",
        key="ab_search",
        on_change=_on_search,
        placeholder="source token text (e.g. Paris) or atom id (e.g. 17)",
        help="A number opens that atom of this dictionary; text finds atoms whose source token contains it.",
    )
    everywhere = st.checkbox("Search every layer and model", key="ab_everywhere")


# ---- search ------------------------------------------------------------------------------------------------


def show_search(text: str) -> None:
    """Results of the search box: an id opens the atom, text lists matching atoms."""
    text = text.strip()
    if not text:
        return
    number = nav.parse_id(text) if text.lstrip("#").isdigit() else None
    if number is not None and not everywhere:
        st.warning(f"{md(info['label'])} has atoms 0 to {int(info['n_atoms']) - 1}; there is no atom {number}.")
        return
    if len(text) > 200:
        st.warning("Search text is limited to 200 characters.")
        return
    found = atom_data.search_atoms(text, dict_id=None if everywhere else dict_id)
    st.caption(
        f"{len(found)}{'+' if len(found) >= 500 else ''} atoms whose source token contains “{md(text)}”"
        + ("" if everywhere else f" in {md(info['label'])}")
    )
    if not found.empty:
        found = found.assign(model=[data.short_name(n) for n in found["model_name"]])
        cols = [
            "dict_id",
            "model",
            "layer",
            "atom",
            "token_text",
            "density",
            "max_coef",
            "doc_id",
            "position",
        ]
        nav.atom_table(
            here=True, df=found[cols], key=f"ab_found_{dict_id}_{everywhere}_{text}", dict_col="dict_id", height=260
        )


show_search(query)


# ---- dictionary summary (no atom chosen) -----------------------------------------------------------------


def show_dictionary() -> None:
    """The chosen dictionary's figures and its atoms, densest first."""
    st.subheader(f"{md(info['label'])}: {int(info['n_atoms']):,} atoms")
    c = st.columns(5)
    c[0].metric("Tokens seen", f"{int(info['tokens_seen']):,}")
    c[1].metric("k (MP steps)", int(info["k"]))
    c[2].metric("Threshold", f"{float(info['threshold']):.2e}")
    c[3].metric("d_model", int(info["d_model"]))
    c[4].metric("Indexed on", f"{int(info['index_tokens']):,} tokens" if info.get("indexed") else "not indexed")
    table = atom_data.atom_table(dict_id)
    if table["density"].notna().any():
        table = table.sort_values(["density", "atom"], ascending=[False, True], na_position="last")
    st.caption("Select a row to open its atom page (or use the link column to open it in a new tab).")
    nav.atom_table(
        here=True,
        df=table[
            [
                "atom",
                "token_text",
                "density",
                "n_active",
                "max_coef",
                "mean_abs",
                "add_error",
                "init_count",
                "doc_id",
                "position",
            ]
        ],
        key=f"ab_atoms_{dict_id}",
        dict_col=dict_id,
        height=420,
        column_config={
            "density": st.column_config.NumberColumn(format="%.5f"),
            "init_count": st.column_config.NumberColumn(
                "init count",
                help="0: added by the error rule. An initial atom: how often its activation occurred in its batch "
                "(1: picked arbitrarily among rows seen once, not counted as evidence in Jaccard; -1: not recorded, "
                "older store).",
            ),
        },
    )
    n_initial = int((table["init_count"] != 0).sum())
    if n_initial:
        n_once = int(table["init_count"].isin([1, -1]).sum())
        st.caption(
            f"{n_initial:,} initial atoms (init count ≠ 0), {n_once:,} of them arbitrary picks among rows seen once "
            "or of unknown count: those do not count as evidence in the similarity page's default Jaccard."
        )


# ---- atom page -------------------------------------------------------------------------------------------


def show_logit_effect(model_name: str) -> None:
    """Top promoted / suppressed tokens through the final norm and unembedding (loads the model once)."""
    if info.get("family") != "decoder":
        st.caption("Logit effects are shown for causal language models; this is an encoder.")
        return
    failed = live.load_error(model_name)
    if failed:
        st.warning(f"Could not load {md(model_name)} for the logit effect: {md(failed)}")
        return
    if not live.model_loaded(model_name) and not st.toggle(
        "Load the model for the logit effect",
        value=True,
        key="ab_logits",
        help="The model is loaded once per server process and kept in memory.",
    ):
        return
    with st.spinner(f"Loading {md(model_name)} (once per server)..."):
        effect = live.safe_logit_effect(str(info["model_name"]), dict_id, atom_id)
    if effect is None:
        failed = live.load_error(str(info["model_name"]))
        if failed:
            st.warning(f"Could not load {md(model_name)} for the logit effect: {md(failed)}")
        else:
            st.caption("This model has no unembedding to read logits from.")
        return
    left, right = st.columns(2)
    for col, name, title in (
        (left, "promoted", "Promoted tokens"),
        (right, "suppressed", "Suppressed tokens"),
    ):
        frame = effect[name].assign(token=[label(t, markers=True) for t in effect[name]["token"]])
        col.markdown(f"**{title}**")
        col.dataframe(
            frame[["token", "logit"]],
            hide_index=True,
            width="stretch",
            column_config={"logit": st.column_config.NumberColumn(format="%+.2f")},
        )
    st.caption(
        "The atom's unit direction, scaled to norm sqrt(d_model), through the model's final norm and "
        "unembedding; logits are centred on their mean over the vocabulary."
    )


def show_atom() -> None:
    """The atom page."""
    page = atom_data.atom_page(dict_id, atom_id)
    if page is None:
        st.warning(f"Atom {atom_id} of dictionary {dict_id} is not in the store (it may have been replaced).")
        return
    atom = page.atom
    title = f"Atom {atom_id} · {info['run']} layer {int(info['layer'])}"
    st.header(md(title))
    st.markdown(
        f"Source token **{md(label(atom['token_text'] or '', markers=False))}**"
        f" (token id {atom['token_id']}, tokenizer string {md(label(atom['token_str'] or ''))})"
    )
    initial = atom_data.initial_note(atom.get("init_count"))
    if initial is not None:
        st.info(initial[0].upper() + initial[1:] + ".", icon=":material/flag:")
    nav_cols = st.columns([1, 1, 4])
    with nav_cols[0]:
        if atom_id > 0:
            st.button(f"← atom {atom_id - 1}", key="ab_prev", on_click=nav.set_atom_params,
                      args=(dict_id, atom_id - 1))  # fmt: skip
    with nav_cols[1]:
        if atom_id + 1 < int(info["n_atoms"]):
            st.button(f"atom {atom_id + 1} →", key="ab_next", on_click=nav.set_atom_params,
                      args=(dict_id, atom_id + 1))  # fmt: skip
    with nav_cols[2]:
        st.caption(f"Link to this page: `{data.atom_url(dict_id, atom_id)}` (relative to the dashboard)")

    indexed = bool(info.get("indexed"))
    m = st.columns(5)
    density = atom.get("density")
    m[0].metric(
        "Density",
        "–" if density is None else f"{density:.4%}",
        help="Fraction of held-out tokens whose MP code uses this atom.",
    )
    m[1].metric("Active on", "–" if atom.get("n_active") is None else f"{int(atom['n_active']):,} tokens")
    m[2].metric("Max coefficient", "–" if atom.get("max_coef") is None else f"{atom['max_coef']:+.3f}")
    m[3].metric("Mean |coefficient|", "–" if atom.get("mean_abs") is None else f"{atom['mean_abs']:.3f}")
    add_error = atom.get("add_error")
    m[4].metric(
        "Error when added",
        "initial atom" if add_error is None or math.isnan(add_error) else f"{add_error:.2e}",
        help="Reconstruction error of this activation when it became an atom.",
    )

    left, right = st.columns([3, 2])
    with left:
        st.subheader("Where it came from")
        st.caption(
            f"Document {atom['doc_id']} ({md(str(atom['doc_source'] or ''))}, {atom['doc_split']} split), token "
            f"position {atom['position']}, characters {atom['char_start']}–{atom['char_end']}."
        )
        if page.source is not None:
            cells = [
                Cell(p, None, target=t, special=s, gap=g, color="#ffd54f" if t else None)
                for g, p, s, _v, t in page.source.cells
            ]
            st.html(tokens_html(cells))
        with st.expander("Whole document"):
            text = str(atom["doc_text"] or "")
            st.html(highlight_html(text, int(atom["char_start"]), int(atom["char_end"]), title=f"atom {atom_id}"))
    with right:
        st.subheader("Activity on held-out text")
        hist = page.histogram
        if not indexed:
            st.info(f"This dictionary is not indexed yet: run `itda index --store {data.store_path()}`.")
        elif hist.empty:
            st.caption("Never used when encoding the held-out text.")
        else:
            st.plotly_chart(figures.histogram(hist), width="stretch", key=f"ab_hist_{dict_id}_{atom_id}")

    scale = page.scale
    tabs = st.tabs(["Top contexts", "Quantile samples", "Logit effect", "Nearest atoms", "Across dictionaries"])
    with tabs[0]:
        contexts = page.top
        if contexts:
            st.html(
                legend_html(scale, "tokens coloured by this atom's coefficient (saturating at the 98th percentile)")
            )
            st.html(context_rows_html(contexts, scale))
        else:
            st.caption("No held-out contexts (not indexed, or the atom was never used).")
    with tabs[1]:
        bins = page.quantiles
        if not bins:
            st.caption("No quantile samples.")
        for b in bins:
            st.markdown(
                f"**Quantile {b['q_lo']:.0%}–{b['q_hi']:.0%}**: coefficients "
                f"{b['lo']:+.3f} to {b['hi']:+.3f} "
                f"({b['count']:,} tokens)"
            )
            st.html(context_rows_html(b["contexts"], scale))
    with tabs[2]:
        show_logit_effect(str(info["model_name"]))
    with tabs[3]:
        near = atom_data.nearest_atoms(dict_id, atom_id, 12)
        st.caption("Atoms of the same dictionary whose vectors are closest by cosine.")
        nav.atom_table(
            here=True,
            df=near,
            key=f"ab_near_{dict_id}_{atom_id}",
            dict_col=dict_id,
            column_config={
                "cosine": st.column_config.NumberColumn(format="%.3f"),
                "density": st.column_config.NumberColumn(format="%.5f"),
            },
        )
    with tabs[4]:
        shared = page.shared
        if shared.empty:
            st.caption("No other dictionary has an atom from this source token.")
        else:
            layers_by_model = shared.groupby("model")["layer"].apply(lambda s: ", ".join(map(str, sorted(s))))
            st.markdown(
                "The same source token is also an atom in "
                + "; ".join(f"**{md(m)}** layer(s) {ls}" for m, ls in layers_by_model.items())
                + "."
            )
            view = shared[["dict_id", "model", "layer", "atom", "token_text", "match", "position"]]
            nav.atom_table(view, key=f"ab_shared_{dict_id}_{atom_id}", dict_col="dict_id", here=True)
    st.subheader("Steering")
    steering_panel.steering_panel(model_name=str(info["model_name"]), family=str(info.get("family")),
                                  layer=int(info["layer"]), dict_id=dict_id, atom=atom_id, key="ab_steer")


if atom_id is None:
    show_dictionary()
else:
    show_atom()
