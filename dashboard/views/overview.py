"""Overview: every model and dictionary in the store, their reconstruction quality on held-out text (table and
per-layer plot), and atoms per layer per model."""

from __future__ import annotations

import plotly.express as px
import streamlit as st

from itda_dashboard import data, figures, nav, quality_data
from itda_dashboard.render import code, escape

st.title("ITDA dictionaries")
st.caption(
    "Each atom of an ITDA dictionary is a real activation, kept with the document and token it came from. "
    "Browse atoms, decompose your own text, and compare dictionaries across layers and models."
)
state = nav.require_store()

dicts = data.dictionaries()
models = data.models()
info = data.summary()
counts = info["counts"]

cols = st.columns(5)
cols[0].metric("Models", len(models))
cols[1].metric("Dictionaries", len(dicts))
cols[2].metric("Atoms", f"{int(dicts['n_atoms'].sum()):,}")
cols[3].metric("Indexed", f"{int(dicts['indexed'].sum())} / {len(dicts)}")
cols[4].metric("Corpus tokens stored", f"{counts['tokens']:,}")
for corpus in info["corpora"]:
    split = (
        f", {corpus['held_out_fraction']:g} held out (seed {corpus['split_seed']})"
        if corpus.get("held_out_fraction") is not None
        else ""
    )
    st.caption(f"Corpus {code(str(corpus['corpus_id']))}: {corpus['n_documents']:,} documents{split}.")

st.subheader("Models")
model_view = models.rename(columns={"label": "model"})[
    [
        "model",
        "family",
        "architecture",
        "n_layers",
        "d_model",
        "n_dictionaries",
        "n_indexed",
        "n_atoms",
        "model_id",
    ]
]
st.dataframe(model_view, hide_index=True, width="stretch")

colors = figures.run_colors(dicts["run"])  # one colour per model on every plot of the page

# a container with a key: its CSS class st-key-ov_quality finds the section in a browser
with st.container(key="ov_quality"):
    st.subheader("Reconstruction quality (held-out)")
    quality, found = quality_data.table(dicts, quality_data.figures(), str(state.path))
    if not found:
        st.info(f"No quality figures stored yet: `itda index --store {state.path} --reindex` measures FVU and "
                f"cosine while indexing, `itda eval --store {state.path}` the CE loss score too.")
    else:
        styled = quality.style.format("{:.4f}", subset=[m.column for m in found], na_rep=quality_data.DASH)
        st.dataframe(styled, hide_index=True, width="stretch", key="ov_quality_table",
                     column_config={"to compute": st.column_config.TextColumn("to compute", width="large")})
        st.caption(
            "Held-out text the dictionaries never saw. FVU: sum ‖x − x̂‖² over the tokens / their total variance "
            "(lower is better); cosine: mean cos(x, x̂) per token; CE loss score: (H* − H₀) / (H − H₀), the share "
            "of the loss gap to zero-ablation the reconstruction closes (1 = as the clean model). Each column names "
            "the tokens its figures were computed on (special tokens excluded; `itda index` also leaves out each "
            "document's first position, an attention sink with a huge norm on models without BOS); FVU and cosine "
            "come with `itda index`, the CE loss score with `itda eval --store`, often on other tokens. "
            "FVU's denominator is the sample's own variance, which a few very large activations can dominate "
            "(Gemma's layers: index FVU 0.21 on 8,121 tokens, eval FVU 0.13 on 1,024, at equal MSE), so compare FVU "
            "across dictionaries on the same tokens. "
            f"{quality_data.DASH}: not computed; 'to compute' gives the command."
        )
        labels = {m.column: m for m in found}
        picked = st.radio("Metric by layer", list(labels), horizontal=True, key="ov_quality_metric")
        metric = labels[picked or next(iter(labels))]
        fig = figures.quality_by_layer(quality_data.by_layer(quality, metric), metric.column, metric.label, colors)
        st.plotly_chart(fig, width="stretch", key="ov_quality_plot")

st.subheader("Atoms per layer")
if len(dicts):
    chart = dicts.assign(depth=dicts["layer"] / (dicts["n_layers"].clip(lower=2) - 1),
                         run=[escape(str(r)) for r in dicts["run"]])  # plotly reads HTML in legends
    relative = st.toggle("Relative depth (compare models of different depth)", key="ov_relative")
    x = "depth" if relative else "layer"
    fig = px.line(
        chart,
        x=x,
        y="n_atoms",
        color="run",
        color_discrete_map={escape(run): c for run, c in colors.items()},
        markers=True,
        labels={"n_atoms": "atoms", "layer": "layer", "depth": "relative depth", "run": "model"},
        hover_data={"dict_id": True, "tokens_seen": True, "k": True},
    )
    fig.update_layout(height=360, margin={"l": 10, "r": 10, "t": 10, "b": 10}, legend_title_text="")
    st.plotly_chart(fig, width="stretch")
    st.caption(
        "Atoms are added when matching pursuit reconstructs an activation badly, so more atoms means the "
        "layer's activations were harder to explain with what the dictionary already held."
    )

density = data.density_by_layer()
if not density.empty:
    density = density.assign(model=[escape(data.short_name(n)) for n in density["model_name"]])
    fig = px.line(
        density,
        x="layer",
        y="median_density",
        color="model",
        markers=True,
        log_y=True,
        labels={"median_density": "median atom density (held-out)"},
        hover_data={"active_atoms": True, "n_atoms": True, "p90_density": ":.4f"},
    )
    fig.update_layout(height=300, margin={"l": 10, "r": 10, "t": 10, "b": 10}, legend_title_text="")
    with st.expander("Atom density by layer", expanded=False):
        st.plotly_chart(fig, width="stretch")

st.subheader("Dictionaries")
eval_cols = [c for c in dicts.columns if c.startswith("eval_")]
table = dicts[
    [
        "dict_id",
        "run",
        "layer",
        "n_atoms",
        "tokens_seen",
        "k",
        "threshold",
        "precision",
        "indexed",
        "index_tokens",
        *eval_cols,
        "train_corpus_id",
        "written",
    ]
].rename(columns={"run": "model", "n_atoms": "atoms", "index_tokens": "held-out tokens"})
table.insert(0, "browse", [f"atoms?dict={int(d)}" for d in table["dict_id"]])
config = {
    "browse": st.column_config.LinkColumn("browse", display_text="atoms ↗", width="small"),
    "threshold": st.column_config.NumberColumn(format="%.2e"),
    **{c: st.column_config.NumberColumn(c.removeprefix("eval_"), format="%.4f") for c in eval_cols},
}
st.dataframe(table, hide_index=True, width="stretch", column_config=config)
if not eval_cols:
    st.caption("No evaluation figures stored yet (FVU, cosine, CE loss score appear here once evaluated).")
if not dicts["indexed"].all():
    st.info(
        f"{int((~dicts['indexed'].astype(bool)).sum())} dictionaries are not indexed yet, so their atom "
        "pages "
        f"lack top contexts and densities: run `itda index --store {state.path}`."
    )
