"""The overview's quality figures: each dictionary's FVU, cosine (``itda index`` or ``itda eval``) and CE loss
score (``itda eval``, per CE rule) on held-out text, read from the store's ``evaluations`` table and cached like
:mod:`itda_dashboard.data`; shaped into a table whose column names say the metric and its tokens, and the
command that computes a missing figure.

One figure per dictionary and metric, chosen by the store
(:data:`itda_core.store.evaluations.FIGURE_CHOICE`): at the dictionary's own k, then ``itda index``'s, then the
one on the most tokens, then the newest. The overview's Dictionaries table shows the same figures.
"""

from __future__ import annotations

import shlex
from dataclasses import dataclass

import pandas as pd
import streamlit as st

from itda_dashboard.data import TTL, Version, store_key

RECONSTRUCTION = {"fvu": "FVU", "cosine": "cosine"}  # metric -> label, in table order
CE_PREFIX = "ce_loss_score:"  # then the CE rule
DASH = "—"


@dataclass(frozen=True)
class Metric:
    """One quality column: the stored metric, its label and the tokens its figures were computed on."""

    metric: str
    label: str
    min_tokens: int
    max_tokens: int

    @property
    def tokens(self) -> str:
        """'2,048 tok', or the range when the dictionaries' figures were computed on different counts."""
        if self.min_tokens == self.max_tokens:
            return f"{self.min_tokens:,} tok"
        return f"{self.min_tokens:,}–{self.max_tokens:,} tok"

    @property
    def column(self) -> str:
        """The table's column name: the metric and its tokens, e.g. 'FVU (4,010 tok)'."""
        return f"{self.label} ({self.tokens})"


def label_of(metric: str) -> str:
    """'FVU', 'cosine', 'CE loss score (saebench)'."""
    if metric.startswith(CE_PREFIX):
        return f"CE loss score ({metric.removeprefix(CE_PREFIX)})"
    return RECONSTRUCTION.get(metric, metric)


@st.cache_data(ttl=TTL, show_spinner=False, max_entries=8)
def _figures(path: str, v: Version) -> pd.DataFrame:
    from itda_core.store.connection import connect_readonly
    from itda_core.store.evaluations import quality_rows

    with connect_readonly(path) as con:  # one figure per dictionary and metric, chosen by the store's rule
        return quality_rows(con, list(RECONSTRUCTION), [CE_PREFIX])


def figures() -> pd.DataFrame:
    """One row per dictionary and metric (dict_id, metric, value, corpus_id, n_tokens, k, own_k, source)."""
    return _figures(*store_key())


def metrics(fig: pd.DataFrame) -> list[Metric]:
    """The quality columns present: FVU, cosine, then each CE rule's score."""
    if fig.empty:
        return []
    names = [m for m in RECONSTRUCTION if m in set(fig["metric"])]
    names += sorted(m for m in set(fig["metric"]) if m.startswith(CE_PREFIX))
    out = []
    for m in names:
        n = fig.loc[fig["metric"] == m, "n_tokens"]
        out.append(Metric(m, label_of(m), int(n.min()), int(n.max())))
    return out


def _command(row: pd.Series, have: set[str], store: str, ce_metrics: list[str]) -> str:
    """What computes the row's missing figures ('' when none is missing)."""
    todo = []
    quoted = shlex.quote(store)
    if not {"fvu", "cosine"} <= have:
        reindex = " --reindex" if bool(row["indexed"]) else ""
        todo.append(f"itda index --store {quoted} -m {shlex.quote(str(row['model_name']))}{reindex}")
    if row["family"] == "decoder" and not any(m in have for m in ce_metrics or [f"{CE_PREFIX}saebench"]):
        model = shlex.quote(str(row["model_name"]))
        todo.append(f"itda eval --store {quoted} -m {model} --layers {int(row['layer'])}")
    elif row["family"] != "decoder":
        todo.append("encoder: no CE loss score")
    return "; ".join(todo)


def table(dicts: pd.DataFrame, fig: pd.DataFrame, store: str) -> tuple[pd.DataFrame, list[Metric]]:
    """Per dictionary (in ``dicts``' order): model, layer, dictionary (its id), one column per metric (NaN when missing;
    named with its tokens), a tokens column for a metric computed on different counts, and 'to compute'."""
    found = metrics(fig)
    out = pd.DataFrame({"model": dicts["run"].astype(str), "layer": dicts["layer"].astype(int),
                        "dictionary": dicts["dict_id"].astype(int), "k": dicts["k"]})  # fmt: skip
    for m in found:
        rows = fig[fig["metric"] == m.metric].set_index("dict_id")
        out[m.column] = out["dictionary"].map(rows["value"]).astype(float)
        if m.min_tokens != m.max_tokens:
            out[f"{m.label} tokens"] = out["dictionary"].map(rows["n_tokens"]).astype("Int64")
    have = fig.groupby("dict_id")["metric"].agg(set).to_dict() if not fig.empty else {}
    ce = [m.metric for m in found if m.metric.startswith(CE_PREFIX)]
    out["to compute"] = [_command(r, have.get(int(r["dict_id"]), set()), store, ce) for _, r in dicts.iterrows()]
    return out.reset_index(drop=True), found


def by_layer(tab: pd.DataFrame, m: Metric) -> pd.DataFrame:
    """The per-layer plot's data for one metric: model, layer, value, dictionary (those with a figure)."""
    frame = tab[["model", "layer", "dictionary", m.column]].rename(columns={m.column: "value"})
    return frame.dropna(subset=["value"]).sort_values(["model", "layer"]).reset_index(drop=True)


__all__ = ["DASH", "Metric", "by_layer", "figures", "label_of", "metrics", "table"]
