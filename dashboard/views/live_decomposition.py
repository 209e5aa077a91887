"""Live decomposition: type a text, choose model, layer and k, and see every token's atoms.

Tokens are coloured by how well the dictionary reconstructs them (cosine of the activation with its MP
reconstruction) or, when an atom is chosen, by that atom's coefficient. Selecting a token lists its k atoms
with coefficients, each atom's source token and context and a link to its page, and a bar chart. Any atom
used can steer the model's continuation of a prompt (causal LMs; see dashboard/steering_panel.py).
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import plotly.graph_objects as go
import streamlit as st

from itda_core import decompose as D
from itda_dashboard import atom_data, data, live, nav, steering_panel
from itda_dashboard.render import Cell, escape, label, legend_html, md, quality_color, tokens_html

SAMPLE = (
    "The capital of France is Paris. Matching pursuit picks the atom with the largest correlation, "
    "then subtracts it, and the dictionary remembers where each atom came from."
)

st.title("Live decomposition")
nav.require_store()
dicts = data.dictionaries()

top = st.columns([2, 3, 1])
with top[0]:
    run = nav.select_run(dicts, key="live_run")
rows = dicts[dicts["run"] == run]
layers = sorted(int(x) for x in rows["layer"])
with top[1]:
    layer = nav.select_layer(layers, key="live_layer")
info = rows[rows["layer"] == layer].iloc[0].to_dict()
dict_id = int(info["dict_id"])
with top[2]:
    k = int(
        st.number_input(
            "k",
            min_value=1,
            max_value=max(256, int(info["k"])),
            value=int(info["k"]),
            key=f"live_k_{dict_id}",
            help="Matching-pursuit steps per token (the dictionary's own k by default).",
        )
    )

with st.form("live_form"):
    text = st.text_area(
        "Text",
        value=st.session_state.get("live_text", SAMPLE),
        height=120,
        key="live_input",
        help=f"At most {D.MAX_CHARS:,} characters and {D.MAX_TOKENS} tokens.",
    )
    submitted = st.form_submit_button("Decompose", type="primary", key="live_go")
    st.caption(
        f"Limit: {D.MAX_CHARS:,} characters and {D.MAX_TOKENS} tokens. Runs on "
        f"{live.device()}; the model is loaded once and kept for later runs."
    )
if submitted:
    st.session_state["live_text"] = text
text = st.session_state.get("live_text", "")
if not text:
    st.caption("Type a text and press Decompose.")
    st.stop()

problem = D.length_problem(text)
if problem:
    st.error(problem)
    st.stop()

model_name = str(info["model_name"])
if live.load_error(model_name):
    st.error(f"Could not load the model {md(model_name)}: {md(live.load_error(model_name) or '')}")
    if st.button("Try again"):
        live.forget_error(model_name)
        st.rerun()
    st.stop()


@st.cache_data(show_spinner=False, max_entries=32)
def run_decomposition(name: str, dict_id: int, version: object, text: str, k: int) -> D.Decomposition:
    """Decompose ``text`` (cached per model, dictionary version, text and k)."""
    return D.decompose(live.get_model(name), live.cached_dictionary(dict_id), text, k)


try:
    with st.spinner("Loading the model (first time only) and decomposing..."):
        dec = run_decomposition(model_name, dict_id, data.version(data.store_path()), text, k)
except Exception as err:  # the model cannot be loaded, too many tokens, another dictionary width...
    st.error(md(str(err).splitlines()[0]) if str(err) else type(err).__name__)
    st.stop()

stats = D.summary(dec)
m = st.columns(5)
m[0].metric("Tokens", f"{stats['tokens']}")
m[1].metric("Mean cosine", f"{stats['mean_cosine']:.3f}")
m[2].metric("Median cosine", f"{stats['median_cosine']:.3f}")
m[3].metric("Worst cosine", f"{stats['min_cosine']:.3f}")
m[4].metric(
    "Time",
    f"{dec.seconds.get('total', 0) * 1000:.0f} ms",
    help="Forward pass to the layer + matching "
    "pursuit, once the model is loaded (cached results show the first run's time).",
)

used = D.atoms_used(dec)
atom_texts = atom_data.atoms_info(dict_id, [int(a) for a in used["atom"].head(40)]) if len(used) else pd.DataFrame()


_names: dict[int, str] = {}


def atom_name(a: int) -> str:
    """'atom 17 “ Paris”' for select boxes and chart labels."""
    if a in atom_texts.index:
        return f"atom {a} {label(str(atom_texts.at[a, 'token_text']), markers=False)}"
    return _names.get(a, f"atom {a}")


colour_options = [-1, *[int(a) for a in used["atom"].head(40)]]
colour_by = st.selectbox(
    "Colour tokens by",
    colour_options,
    key=f"live_colour_{dict_id}",
    format_func=lambda a: "reconstruction quality (cosine)" if a < 0 else f"coefficient of {atom_name(a)}",
)

if colour_by < 0:
    values = dec.cosine
    cells = [
        Cell(
            piece,
            None,
            title=f"#{i} cosine {dec.cosine[i]:.3f}" if np.isfinite(dec.cosine[i]) else f"#{i}",
            special=special,
            gap=gap,
            color=quality_color(dec.cosine[i]),
        )
        for i, (gap, piece, special) in enumerate(zip(dec.gaps, dec.pieces, dec.special, strict=True))
    ]
    st.html(tokens_html(cells))
    st.caption("White: reconstructed well (cosine near 1); red: poorly (cosine 0.5 or less). Hover for values.")
else:
    values = D.atom_coefficients(dec, colour_by)
    scale = float(np.abs(values).max()) or 1.0
    cells = [
        Cell(
            piece,
            float(values[i]) or None,
            title=f"#{i} coefficient {values[i]:+.3f}",
            special=special,
            gap=gap,
        )
        for i, (gap, piece, special) in enumerate(zip(dec.gaps, dec.pieces, dec.special, strict=True))
    ]
    st.html(legend_html(scale, f"coefficient of {atom_name(colour_by)}"))
    st.html(tokens_html(cells, scale))
    nav.atom_link(dict_id, colour_by, f"Open the page of {atom_name(colour_by)}")


def token_name(i: int) -> str:
    """ "#3 “ Paris” (cos 0.91)" for the token select box."""
    piece = dec.token_strs[i] if dec.special[i] else dec.pieces[i]
    cos = f" (cos {dec.cosine[i]:.3f})" if np.isfinite(dec.cosine[i]) else " (not encoded)"
    return f"#{i} {label(piece, markers=dec.special[i])}{cos}"


st.subheader("A token's atoms")
default = stats["worst"][0] if stats["worst"] else 0
token_key = f"live_token_{hash((text, dict_id, k))}"
if token_key not in st.session_state:
    st.session_state[token_key] = default
token = int(
    st.selectbox(
        "Token",
        list(range(len(dec))),
        key=token_key,
        format_func=token_name,
        help="The worst-reconstructed token is chosen first.",
    )
)
atoms = D.token_atoms(dec, token)
if atoms.empty:
    st.caption("This token was not encoded (the dictionary skips special tokens).")
else:
    info_rows = atom_data.atoms_info(dict_id, [int(a) for a in atoms["atom"]])
    _names.update({int(a): f"atom {int(a)} {label(str(t), markers=False)}" for a, t in info_rows["token_text"].items()})
    left, right = st.columns([3, 2])
    with left:
        top_atom = int(atoms.iloc[0]["atom"])
        nav.atom_link(dict_id, top_atom, f"Open the largest atom's page: {atom_name(top_atom)}")
        scale = float(atoms["coef"].abs().max()) or 1.0
        lines = []
        for a, coef in zip(atoms["atom"], atoms["coef"], strict=True):
            a = int(a)
            ctx = info_rows.at[a, "context"] if a in info_rows.index else None
            if ctx is not None:
                context = tokens_html(
                    [
                        Cell(p, None, target=t, special=s, gap=g, color="#ffd54f" if t else None)
                        for g, p, s, _v, t in ctx.cells
                    ]
                )
            else:
                context = ""
            coef_cell = tokens_html([Cell(f"{coef:+.2f}", float(coef))], scale)
            lines.append(
                '<tr><td style="padding:2px 6px;white-space:nowrap">'
                f'<a href="{escape(data.atom_url(dict_id, a))}" '
                f'target="_blank">atom {a}</a></td><td style="padding:2px 6px">{coef_cell}</td>'
                f'<td style="padding:2px 6px">{context}</td></tr>'
            )
        st.html(
            '<table style="border-collapse:collapse;width:100%"><tr><th>atom</th><th>coefficient</th>'
            "<th>source context (its token outlined)</th></tr>" + "".join(lines) + "</table>"
        )
    with right:
        names = [atom_name(int(a)) for a in atoms["atom"]]
        fig = go.Figure(
            go.Bar(
                x=atoms["coef"],
                y=[f"{n}" for n in names],
                orientation="h",
                marker_color=["#d62728" if c > 0 else "#1f77b4" for c in atoms["coef"]],
                hovertemplate="%{y}: %{x:+.3f}<extra></extra>",
            )
        )
        fig.update_layout(
            height=max(240, 18 * len(atoms) + 60),
            margin={"l": 10, "r": 10, "t": 10, "b": 10},
            yaxis={"autorange": "reversed", "tickfont": {"size": 10}},
            xaxis_title="coefficient",
        )
        st.plotly_chart(fig, width="stretch", key=f"live_bar_{token_key}_{token}")

st.subheader("Worst-reconstructed tokens")
worst = pd.DataFrame(
    {
        "token #": stats["worst"],
        "token": [
            label(dec.token_strs[i] if dec.special[i] else dec.pieces[i], markers=dec.special[i])
            for i in stats["worst"]
        ],
        "cosine": [float(dec.cosine[i]) for i in stats["worst"]],
        "activation norm": [float(dec.norms[i]) for i in stats["worst"]],
    }
)
st.dataframe(
    worst,
    hide_index=True,
    width="stretch",
    column_config={
        "cosine": st.column_config.NumberColumn(format="%.3f"),
        "activation norm": st.column_config.NumberColumn(format="%.1f"),
    },
)

st.subheader("Steering")
steer_options = list(dict.fromkeys([*(int(a) for a in atoms["atom"]), *(int(a) for a in used["atom"].head(40))]))
if steer_options:
    steer_atom = int(st.selectbox("Atom to steer with", steer_options, key=f"live_steer_atom_{token_key}_{token}",
                                  format_func=atom_name, help="The chosen token's atoms first."))  # fmt: skip
    steering_panel.steering_panel(model_name=model_name, family=str(info.get("family")), layer=layer, dict_id=dict_id,
                                  atom=steer_atom, key="live_steer")  # fmt: skip
else:
    st.caption("No atom was used on this text: nothing to steer with.")
