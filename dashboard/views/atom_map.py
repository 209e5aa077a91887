"""Atom map: a UMAP of a dictionary's atoms (or of several layers together), coloured by layer, density or
source token. Hover shows the source token in context; selecting a point opens its atom page. Maps are
computed once (``itda atom-map``) and read from the store."""

from __future__ import annotations

import shlex

import numpy as np
import pandas as pd
import plotly.graph_objects as go
import streamlit as st

from itda_dashboard import data, nav
from itda_dashboard.render import code, escape, md, visible

COLOURS = ["layer", "density", "source token"]

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


def hover_text(df: pd.DataFrame) -> list[str]:
    """Escaped hover labels: the source token (bold) inside its context."""
    out = []
    for before, token, after, layer, atom, density in zip(
        df["before"], df["token_text"], df["after"], df["layer"], df["atom"], df["density"], strict=True
    ):
        dens = "" if density is None or not np.isfinite(density) else f" · density {density:.4f}"
        context = (
            f"{escape(visible(str(before or '')[-30:]))}<b>{escape(visible(str(token or '')))}</b>"
            f"{escape(visible(str(after or '')[:30]))}"
        )
        out.append(f"L{int(layer)} atom {int(atom)}{dens}<br>…{context}…")
    return out


frame = frame.reset_index(drop=True)
if frame["layer"].nunique() > 1:  # draw layers interleaved, not the last one on top of all others
    frame = frame.sample(frac=1.0, random_state=0).reset_index(drop=True)
size, opacity = (5, 0.9) if len(frame) < 3000 else (4, 0.7)
frame["hover"] = hover_text(frame)
custom = np.column_stack([frame["dict_id"].to_numpy(), frame["atom"].to_numpy()])
fig = go.Figure()
if colour in ("layer", "density"):
    if colour == "layer":
        many = frame["layer"].nunique() > 1
        colour_spec = {"color": frame["layer"], "colorscale": "Turbo" if many else "Viridis", "showscale": many,
                       "colorbar": {"title": "layer"}}
    else:
        density = frame["density"].fillna(0).to_numpy(dtype=float)
        colour_spec = {"color": np.log10(np.maximum(density, 1e-6)), "colorscale": "Viridis", "showscale": True,
                       "colorbar": {"title": "log10 density"}}
    fig.add_trace(
        go.Scattergl(
            x=frame["x"],
            y=frame["y"],
            mode="markers",
            marker={"size": size, "opacity": opacity, **colour_spec},
            customdata=custom,
            hovertext=frame["hover"],
            hoverinfo="text",
        )
    )
else:
    tokens = frame["token_text"].fillna("").map(lambda t: visible(str(t)).strip().lower() or visible(str(t)))
    common = tokens.value_counts().head(12).index.tolist()
    groups = [t if t in common else "other" for t in tokens]
    frame["group"] = groups
    for name in [*common, "other"]:
        part = frame[frame["group"] == name]
        if part.empty:
            continue
        fig.add_trace(
            go.Scattergl(
                x=part["x"],
                y=part["y"],
                mode="markers",
                name=escape(f"“{name}”") if name != "other" else "other",
                marker={"size": size, "opacity": opacity, **({"color": "lightgrey"} if name == "other" else {})},
                customdata=np.column_stack([part["dict_id"].to_numpy(), part["atom"].to_numpy()]),
                hovertext=part["hover"],
                hoverinfo="text",
            )
        )
fig.update_layout(
    height=640,
    margin={"l": 10, "r": 10, "t": 10, "b": 10},
    dragmode="pan",
    xaxis={"showticklabels": False, "title": ""},
    yaxis={"showticklabels": False, "title": ""},
    clickmode="event+select",
)

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
