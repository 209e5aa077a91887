"""Plotly figures the pages share: an atom's signed coefficient histogram, the clickable similarity
heatmap (with reading back which cell was clicked), the overview's quality plot and its colours per model."""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np
import pandas as pd
import plotly.colors
import plotly.graph_objects as go


def histogram(hist: pd.DataFrame) -> go.Figure:
    """An atom's signed coefficient histogram (bins lo, hi, count), bars coloured by sign."""
    centers = (hist["lo"] + hist["hi"]) / 2
    colors = ["#d62728" if c > 0 else "#1f77b4" for c in centers]
    fig = go.Figure(
        go.Bar(
            x=centers,
            y=hist["count"],
            width=(hist["hi"] - hist["lo"]) * 0.95,
            marker_color=colors,
            hovertemplate="coefficient %{x:.3f}<br>%{y} tokens<extra></extra>",
        )
    )
    fig.update_layout(
        height=220,
        margin={"l": 10, "r": 10, "t": 10, "b": 10},
        xaxis_title="coefficient",
        yaxis_title="tokens",
        bargap=0,
    )
    return fig


def heatmap(
    z: np.ndarray,
    x: list[str],
    y: list[str],
    customdata: np.ndarray,
    hover: str,
    *,
    hover_text: np.ndarray | None = None,
    title_x: str,
    title_y: str,
    zmax: float | None = None,
    colorbar: str = "Jaccard",
    diverging: bool = False,
) -> go.Figure:
    """A heatmap plus an invisible marker on every cell, so clicking a cell selects it (Streamlit's
    selection events do not report heatmap cells). ``diverging``: a red-blue scale centred at 0 (the
    chance-corrected Jaccard, which can be negative), saturating at +-1 or the largest |value| below 1;
    else Viridis from 0 to ``zmax`` (default: the largest value)."""
    xx, yy = np.meshgrid(np.arange(len(x)), np.arange(len(y)))
    finite = np.isfinite(z)
    if diverging:
        largest = float(np.abs(z[finite]).max()) if finite.any() else 0.0
        bound = min(1.0, largest) if largest > 0 else 1.0
        scale = {"colorscale": "RdBu", "reversescale": True, "zmin": -bound, "zmax": bound, "zmid": 0.0}
    else:
        top = zmax if zmax is not None else (float(np.nanmax(z)) if finite.any() else 1.0)
        scale = {"colorscale": "Viridis", "zmin": 0, "zmax": top}
    fig = go.Figure()
    fig.add_trace(
        go.Heatmap(
            z=z,
            x=list(range(len(x))),
            y=list(range(len(y))),
            **scale,
            colorbar={"title": {"text": colorbar}},
            hoverinfo="skip",
        )
    )
    n = max(len(x), len(y))
    fig.add_trace(
        go.Scatter(
            x=xx.ravel(),
            y=yy.ravel(),
            mode="markers",
            marker={"symbol": "square", "size": max(6, min(40, 520 // max(n, 1))), "color": "rgba(0,0,0,0)"},
            customdata=customdata.reshape(-1, customdata.shape[-1]),
            text=None if hover_text is None else np.asarray(hover_text).ravel().tolist(),
            hovertemplate=hover,
            showlegend=False,
            selected={"marker": {"color": "rgba(255,255,255,0.55)"}},
            unselected={"marker": {"opacity": 1}},
        )
    )
    fig.update_layout(
        height=max(360, min(720, 26 * len(y) + 140)),
        margin={"l": 10, "r": 10, "t": 10, "b": 10},
        xaxis={
            "title": title_x,
            "tickmode": "array",
            "tickvals": list(range(len(x))),
            "ticktext": x,
            "showgrid": False,
        },
        yaxis={
            "title": title_y,
            "tickmode": "array",
            "tickvals": list(range(len(y))),
            "ticktext": y,
            "autorange": "reversed",
            "showgrid": False,
        },
        clickmode="event+select",
        dragmode=False,
    )
    return fig


def selected_cell(event: object) -> tuple[int, int] | None:
    """(row, column) of the clicked cell, from a plotly selection event."""
    points = getattr(getattr(event, "selection", None), "points", None) or []
    for p in points:
        x, y = p.get("x"), p.get("y")
        if x is not None and y is not None:
            return round(float(y)), round(float(x))
    return None


def run_colors(runs: Iterable[str]) -> dict[str, str]:
    """One colour per model run, in the order given (the overview's), so that the page's plots agree on it even
    when one of them lacks a model."""
    palette = plotly.colors.qualitative.Plotly
    return {run: palette[i % len(palette)] for i, run in enumerate(dict.fromkeys(str(r) for r in runs))}


def quality_by_layer(frame: pd.DataFrame, y_title: str, hover_label: str, colors: dict[str, str]) -> go.Figure:
    """The overview's quality plot: one line per model (``model``, ``layer``, ``value``, ``dictionary``), x = layer,
    y = the metric (``y_title`` names it with its tokens), each model in its colour of :func:`run_colors`."""
    from itda_dashboard.render import escape

    fig = go.Figure()
    for model, part in frame.groupby("model", sort=False):
        color = colors.get(str(model))
        fig.add_trace(
            go.Scatter(
                x=part["layer"],
                y=part["value"],
                mode="lines+markers",
                line={"color": color},
                marker={"color": color},
                name=escape(str(model)),  # plotly reads HTML in legends
                customdata=part[["dictionary"]].to_numpy(),
                hovertemplate=f"layer %{{x}}<br>{escape(hover_label)} %{{y:.4f}}<br>dictionary %{{customdata[0]}}"
                "<extra></extra>",
            )
        )
    fig.update_layout(height=340, margin={"l": 10, "r": 10, "t": 10, "b": 10}, legend_title_text="",
                      xaxis_title="layer", yaxis_title=escape(y_title))  # fmt: skip
    return fig
