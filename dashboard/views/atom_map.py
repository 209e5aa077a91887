"""Atom map: a UMAP of a dictionary's atoms (or of several layers together), coloured by layer, density or
source token. Hover shows the source token in context; selecting a point opens its atom page. Maps are
computed once (``itda atom-map``) and read from the store."""

from __future__ import annotations

import shlex

import pandas as pd
import streamlit as st

from itda_dashboard import data, nav
from itda_dashboard.map_figure import COLOURS, atom_map_figure
from itda_dashboard.render import code, md

st.title("Atom map")
state = nav.require_store()
dicts = data.dictionaries()

# A map view has a URL too: map?model=NAME&layers=10-12&colour=density (read when the URL changes).
params = nav.url_params()
url_key = (params.get("model"), params.get("layers"), params.get("colour"))
if st.session_state.get("_map_url") != url_key:
    st.session_state["_map_url"] = url_key
    runs = list(dict.fromkeys(dicts["run"]))
    if params.get("model") in runs:
        st.session_state["map_run"] = params["model"]
    if params.get("colour") in COLOURS:
        st.session_state["map_colour"] = params["colour"]
    if params.get("layers") and st.session_state.get("map_run") in runs:
        from itda_core.errors import ITDAError
        from itda_core.layers import parse_layers

        have = sorted(int(x) for x in dicts.loc[dicts["run"] == st.session_state["map_run"], "layer"])
        try:
            wanted = [la for la in parse_layers(str(params["layers"]), max(have) + 1) if la in have]
        except ITDAError as err:
            st.warning(f"Cannot read layers {nav.quoted(params['layers'])}: {md(str(err))}")
            wanted = []
        if wanted:
            st.session_state[f"map_layers_{st.session_state['map_run']}"] = wanted

c = st.columns([2, 4, 2])
with c[0]:
    run = nav.select_run(dicts, key="map_run")
rows = dicts[dicts["run"] == run]
layers = sorted(int(x) for x in rows["layer"])
with c[1]:
    key = f"map_layers_{run}"
    if key not in st.session_state:
        st.session_state[key] = [layers[len(layers) // 2]]
    chosen = st.multiselect("Layers (several: one joint map)", layers, key=key)
with c[2]:
    colour = st.radio("Colour by", COLOURS, key="map_colour", horizontal=False)
if not chosen:
    st.caption("Choose at least one layer.")
    st.stop()
ids = [int(rows.loc[rows["layer"] == la, "dict_id"].iloc[0]) for la in sorted(chosen)]
view = {"model": run, "layers": ",".join(map(str, sorted(chosen))), "colour": colour}
if params != view:
    st.query_params.from_dict(view)
    st.session_state["_map_url"] = (view["model"], view["layers"], view["colour"])

frame = data.atom_map(ids)
if frame is None:
    layers_arg = ",".join(map(str, sorted(chosen)))
    joint = " --joint" if len(ids) > 1 else ""
    command = (
        f"itda atom-map --store {shlex.quote(str(state.path))} --model {shlex.quote(str(rows.iloc[0]['model_name']))} "
        f"--layers {layers_arg}{joint}"
    )
    st.info("This map has not been computed yet. Compute and store it once with\n\n" + code(command))
    computed_key = f"map_compute_{tuple(ids)}"
    if st.button("Compute it now (kept in memory until the server stops, not saved)", key="map_compute_btn"):
        st.session_state[computed_key] = True
    if not st.session_state.get(computed_key):
        st.stop()
    with st.spinner("Running UMAP (the first run in a server also compiles UMAP's kernels)..."):
        frame = data.compute_atom_map(ids)
if frame.empty:
    st.caption("No atoms to map.")
    st.stop()


fig, n_edge = atom_map_figure(frame, colour)

# The key changes after each navigation, so coming back does not re-open the last selection.
event = st.plotly_chart(
    fig,
    width="stretch",
    on_select="rerun",
    selection_mode=("points", "box", "lasso"),
    key=f"map_chart_{nav.generation()}_{tuple(ids)}_{colour}",
)
params = frame.attrs.get("umap_params")
st.caption(
    f"{len(frame):,} atoms. Click a point to open its atom page; drag a box or lasso to list several."
    + (
        f" {n_edge:,} far-away atom{'s' if n_edge != 1 else ''} drawn at the edge as crosses (hover: true position)."
        if n_edge
        else ""
    )
    + (
        f" UMAP: {params.get('n_neighbors')} neighbours, min_dist {params.get('min_dist')}, "
        f"{params.get('metric')}, computed {params.get('created', '?')}."
        if params
        else " Computed in memory."
    )
)

points = getattr(getattr(event, "selection", None), "points", None) or []
picked = []
for p in points:
    cd = p.get("customdata")
    if isinstance(cd, dict):  # Streamlit reports a point's customdata list as {"0": ..., "1": ...}
        cd = [cd.get(str(i), cd.get(i)) for i in range(len(cd))]
    if cd is not None and len(cd) >= 2 and cd[0] is not None and cd[1] is not None:
        picked.append((int(cd[0]), int(cd[1])))
if len(picked) == 1:
    nav.open_atom(*picked[0])
elif picked:
    sel = pd.DataFrame(picked, columns=["dict_id", "atom"]).merge(
        frame[["dict_id", "atom", "layer", "token_text", "density"]], on=["dict_id", "atom"], how="left"
    )
    st.markdown(f"**{len(sel)} atoms selected**")
    nav.atom_table(sel, key=f"map_sel_{tuple(ids)}", dict_col="dict_id", height=300)
