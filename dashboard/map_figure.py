"""The atom map figure: a UMAP scatter whose axes follow a robust range, so that a few far-away atoms do not
squash the map into a corner; those atoms are drawn at the border with their own marker, and their hover
gives their true coordinates."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd
import plotly.graph_objects as go

from itda_dashboard.render import escape, visible

COLOURS = ["layer", "density", "source token"]
PERCENTILES = (1.0, 99.0)  # the bulk of the map on each axis
PAD = 0.25  # of the percentile span, added each side before a point counts as outside
MARGIN = 0.03  # of the shown span, so that the markers at the border are drawn whole
INSIDE, OUTSIDE = "circle", "x"  # marker symbols (both drawn by WebGL scatter)


@dataclass(frozen=True)
class AxisRange:
    """One axis: the shown range ``[lo, hi]`` (margin included) and the clip bounds ``[clip_lo, clip_hi]``."""

    lo: float
    hi: float
    clip_lo: float
    clip_hi: float


def robust_range(values: np.ndarray) -> AxisRange:
    """The 1st-99th percentile of ``values`` padded by a quarter of its span each side and cut to the data's
    own extent (no outliers: the full extent), plus a small margin; points beyond the clip bounds are drawn
    on them."""
    v = np.asarray(values, dtype=np.float64)
    v = v[np.isfinite(v)]
    if v.size == 0:
        return AxisRange(-1.0, 1.0, -1.0, 1.0)
    p_lo, p_hi = np.percentile(v, PERCENTILES)
    pad = PAD * (p_hi - p_lo)
    clip_lo, clip_hi = max(float(v.min()), p_lo - pad), min(float(v.max()), p_hi + pad)
    span = clip_hi - clip_lo
    margin = MARGIN * span if span > 0 else 1.0
    return AxisRange(clip_lo - margin, clip_hi + margin, clip_lo, clip_hi)


def clip_points(frame: pd.DataFrame) -> tuple[pd.DataFrame, AxisRange, AxisRange]:
    """``frame`` with the drawn coordinates ``px, py`` (clipped to the robust ranges) and ``outside`` (a
    point beyond either range), and the two ranges; ``x, y`` keep the true coordinates."""
    rx, ry = robust_range(frame["x"].to_numpy()), robust_range(frame["y"].to_numpy())
    x, y = frame["x"].to_numpy(dtype=np.float64), frame["y"].to_numpy(dtype=np.float64)
    outside = (x < rx.clip_lo) | (x > rx.clip_hi) | (y < ry.clip_lo) | (y > ry.clip_hi)
    out = frame.assign(px=np.clip(x, rx.clip_lo, rx.clip_hi), py=np.clip(y, ry.clip_lo, ry.clip_hi), outside=outside)
    return out, rx, ry


def hover_text(df: pd.DataFrame) -> list[str]:
    """Escaped hover labels: the source token (bold) inside its context, and for a point drawn at the border
    its true coordinates."""
    out = []
    for before, token, after, layer, atom, density, x, y, outside in zip(
        df["before"], df["token_text"], df["after"], df["layer"], df["atom"], df["density"], df["x"], df["y"],
        df["outside"], strict=True,
    ):  # fmt: skip
        dens = "" if density is None or not np.isfinite(density) else f" · density {density:.4f}"
        context = (
            f"{escape(visible(str(before or '')[-30:]))}<b>{escape(visible(str(token or '')))}</b>"
            f"{escape(visible(str(after or '')[:30]))}"
        )
        edge = f"<br>outside the shown range, drawn at its edge: true position ({x:.2f}, {y:.2f})" if outside else ""
        out.append(f"L{int(layer)} atom {int(atom)}{dens}<br>…{context}…{edge}")
    return out


def _marker(part: pd.DataFrame, size: int, opacity: float, **colour: object) -> dict:
    """Markers of ``part``: a circle inside the range, a larger cross at the border for a clipped point."""
    outside = part["outside"].to_numpy()
    return {
        "size": np.where(outside, size + 4, size).tolist(),
        "symbol": np.where(outside, OUTSIDE, INSIDE).tolist(),
        "opacity": opacity,
        **colour,
    }


def _trace(part: pd.DataFrame, marker: dict, **extra: object) -> go.Scattergl:
    """One clickable WebGL scatter trace of ``part`` at its drawn coordinates (customdata: dict_id, atom)."""
    return go.Scattergl(
        x=part["px"],
        y=part["py"],
        mode="markers",
        marker=marker,
        customdata=np.column_stack([part["dict_id"].to_numpy(), part["atom"].to_numpy()]),
        hovertext=part["hover"],
        hoverinfo="text",
        **extra,
    )


def atom_map_figure(frame: pd.DataFrame, colour: str) -> tuple[go.Figure, int]:
    """The map of ``frame`` (dict_id, atom, x, y, layer, density, token_text, before, after) coloured by
    ``colour`` (one of :data:`COLOURS`), and how many atoms are drawn at the border."""
    frame, rx, ry = clip_points(frame.reset_index(drop=True))
    if frame["layer"].nunique() > 1:  # draw layers interleaved, not the last one on top of all others
        frame = frame.sample(frac=1.0, random_state=0).reset_index(drop=True)
    size, opacity = (5, 0.9) if len(frame) < 3000 else (4, 0.7)
    frame["hover"] = hover_text(frame)
    fig = go.Figure()
    if colour in ("layer", "density"):
        if colour == "layer":
            many = frame["layer"].nunique() > 1
            spec = {"color": frame["layer"], "colorscale": "Turbo" if many else "Viridis", "showscale": many,
                    "colorbar": {"title": "layer"}}  # fmt: skip
        else:
            density = frame["density"].fillna(0).to_numpy(dtype=float)
            spec = {"color": np.log10(np.maximum(density, 1e-6)), "colorscale": "Viridis", "showscale": True,
                    "colorbar": {"title": "log10 density"}}  # fmt: skip
        fig.add_trace(_trace(frame, _marker(frame, size, opacity, **spec)))
    else:
        tokens = frame["token_text"].fillna("").map(lambda t: visible(str(t)).strip().lower() or visible(str(t)))
        common = tokens.value_counts().head(12).index.tolist()
        frame["group"] = [t if t in common else "other" for t in tokens]
        for name in [*common, "other"]:
            part = frame[frame["group"] == name]
            if part.empty:
                continue
            grey = {"color": "lightgrey"} if name == "other" else {}
            label = escape(f"“{name}”") if name != "other" else "other"
            fig.add_trace(_trace(part, _marker(part, size, opacity, **grey), name=label))
    fig.update_layout(
        height=640,
        margin={"l": 10, "r": 10, "t": 10, "b": 10},
        dragmode="pan",
        xaxis={"showticklabels": False, "title": "", "range": [rx.lo, rx.hi]},
        yaxis={"showticklabels": False, "title": "", "range": [ry.lo, ry.hi]},
        clickmode="event+select",
    )
    return fig, int(frame["outside"].sum())
