"""Sweep k (L0) x dictionary size, and plot the paper's "CE loss score vs L0" figure."""

from __future__ import annotations

import logging
import os
import shutil
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from itda_core.config.evaluation import (  # declared with the options
    DEFAULT_BATCH_SIZE,
    DEFAULT_CE_RULE,
    DEFAULT_KS,
    DEFAULT_MAX_TOKENS,
)
from itda_core.corpus import Corpus, Document
from itda_core.dictionary import ITDA
from itda_core.errors import ITDAError
from itda_core.evaluation.run import evaluate_many
from itda_core.extras import require
from itda_core.models import LoadedModel

if TYPE_CHECKING:
    import pandas as pd
    import plotly.graph_objects as go

log = logging.getLogger(__name__)


def default_sizes(n_atoms: int) -> list[int]:
    """A quarter, a half and all of the dictionary (duplicates and sizes below 1 dropped)."""
    return sorted({s for s in (n_atoms // 4, n_atoms // 2, n_atoms) if s >= 1})


def sweep(
    model: LoadedModel,
    itda: ITDA,
    corpus: Corpus | Sequence[Document],
    ks: Sequence[int] = DEFAULT_KS,
    sizes: Sequence[int] | None = None,
    *,
    max_tokens: int | None = DEFAULT_MAX_TOKENS,
    seq_len: int = 128,
    batch_size: int = DEFAULT_BATCH_SIZE,
    ce_rule: str = DEFAULT_CE_RULE,
    exclude_first: bool = False,
    check_model: bool = True,
    progress: bool = False,
) -> pd.DataFrame:
    """One row per (size, k): every :class:`EvalResult` field. Sizes crop the dictionary to its first n
    atoms; the clean and zero-ablated runs are computed once for the whole grid."""
    import pandas as pd

    ks = sorted({int(k) for k in ks})
    if not ks or ks[0] < 1:
        raise ITDAError(f"ks must be positive integers (got {list(ks)})")
    chosen = default_sizes(len(itda)) if sizes is None else sorted({int(s) for s in sizes})
    if not chosen or chosen[0] < 1:
        raise ITDAError(f"sizes must be positive integers (got {list(sizes or [])})")
    too_big = [s for s in chosen if s > len(itda)]
    if too_big:
        log.warning(
            "sizes %s exceed the dictionary's %d atoms; using the full dictionary", too_big, len(itda)
        )
        chosen = sorted({min(s, len(itda)) for s in chosen})
    crops = {s: itda if s == len(itda) else itda.crop(s) for s in chosen}
    settings = [(crops[s], k) for s in chosen for k in ks]
    results = evaluate_many(
        model,
        settings,
        corpus,
        max_tokens=max_tokens,
        seq_len=seq_len,
        batch_size=batch_size,
        ce_rule=ce_rule,
        exclude_first=exclude_first,
        full_size=len(itda),
        check_model=check_model,
        progress=progress,
    )
    return pd.DataFrame.from_records([r.to_dict() for r in results])


def plot_sweep(df: pd.DataFrame, metric: str | None = None) -> go.Figure:
    """Metric (default: CE loss score, or FVU when there is none, as for encoders) against L0, one line per
    dictionary size, as in the paper's figure."""
    go = require("plotly.graph_objects", "viz", "the sweep figure")

    if df.empty:
        raise ITDAError("the sweep has no rows to plot")
    if metric is None:
        metric = "ce_loss_score" if "ce_loss_score" in df and df["ce_loss_score"].notna().any() else "fvu"
    if metric not in df:
        raise ITDAError(f"no column {metric!r} in the sweep; columns: {', '.join(df.columns)}")
    labels = {
        "ce_loss_score": "CE loss score",
        "fvu": "fraction of variance unexplained",
        "kl_div": "KL(clean || spliced), nats",
        "cosine": "mean cosine(x, x_hat)",
        "mse": "MSE",
    }
    fig = go.Figure()
    for size, part in sorted(df.groupby("dictionary_size"), key=lambda item: item[0]):
        part = part.sort_values("k")
        fig.add_trace(
            go.Scatter(
                x=part["k"],
                y=part[metric],
                mode="lines+markers",
                name=f"{int(size):,} atoms",
                hovertemplate="L0 %{x}<br>"
                + labels.get(metric, metric)
                + " %{y:.4f}<extra>%{fullData.name}</extra>",
            )
        )
    first = df.iloc[0]
    title = f"{first['model_name']} {first['site']}: {labels.get(metric, metric)} vs L0"
    ks = sorted(df["k"].unique().tolist())
    fig.update_layout(
        title=title,
        xaxis_title="L0 (matching-pursuit steps k)",
        yaxis_title=labels.get(metric, metric),
        legend_title="dictionary size",
        template="plotly_white",
    )
    fig.update_xaxes(type="log", tickvals=ks, ticktext=[str(k) for k in ks])
    return fig


# Browsers kaleido (>= 1, through choreographer) can drive: names looked up on PATH, then usual locations.
BROWSER_NAMES = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable", "chrome")
BROWSER_PATHS = (
    "/usr/bin/chromium",
    "/usr/bin/chromium-browser",
    "/usr/bin/google-chrome",
    "/snap/bin/chromium",
    "/Applications/Google Chrome.app/Contents/MacOS/Google Chrome",
)


def _executable(path: str) -> bool:
    return os.path.isfile(path) and os.access(path, os.X_OK)


def find_browser() -> str | None:
    """The Chrome/Chromium for PNG export: ``$BROWSER_PATH`` (what kaleido's choreographer reads) when set,
    else the first of :data:`BROWSER_NAMES` on PATH, else the first of :data:`BROWSER_PATHS` that exists."""
    override = os.environ.get("BROWSER_PATH")
    if override:
        return override if _executable(override) else None
    for name in BROWSER_NAMES:
        found = shutil.which(name)
        if found and _executable(found):
            return found
    return next((p for p in BROWSER_PATHS if _executable(p)), None)


def save_figure(fig: go.Figure, stem: str | Path) -> tuple[list[Path], str | None]:
    """Write ``stem.html`` and try ``stem.png``; returns (written paths, a one-line message when no PNG).

    PNG export goes through kaleido, which (from version 1) drives a Chrome/Chromium installed on the machine;
    :func:`find_browser` picks it and hands it to kaleido through ``BROWSER_PATH``. Without kaleido or a
    browser the HTML file (self-contained) holds the same interactive figure."""
    stem = Path(stem)
    stem.parent.mkdir(parents=True, exist_ok=True)
    html = stem.with_suffix(".html")
    fig.write_html(str(html), include_plotlyjs=True)
    written = [html]
    png = stem.with_suffix(".png")
    try:
        import kaleido  # noqa: F401
    except ImportError:
        return written, f"PNG not written: kaleido is not installed (pip install 'itda[viz]'); the figure is in {html}"
    browser = find_browser()
    if browser is None:
        override = os.environ.get("BROWSER_PATH")
        why = (
            f"BROWSER_PATH={override} is not an executable"
            if override
            else "no Chrome/Chromium browser found (install chromium, or set BROWSER_PATH to a Chrome executable)"
        )
        return written, f"PNG not written: {why}; the figure is in {html}"
    previous = os.environ.get("BROWSER_PATH")
    os.environ["BROWSER_PATH"] = browser
    try:
        fig.write_image(str(png))
    except Exception as err:  # a browser that failed to start, a kaleido error, ...
        first = (str(err).strip().splitlines() or [type(err).__name__])[0][:200]
        return written, f"PNG not written ({first}; browser {browser}); the figure is in {html}"
    finally:
        if previous is None:
            os.environ.pop("BROWSER_PATH", None)
        else:
            os.environ["BROWSER_PATH"] = previous
    written.append(png)
    return written, None


def sweep_table(df: pd.DataFrame, metric: str = "ce_loss_score") -> str:
    """The sweep as a size x k text table of ``metric`` (FVU when the metric is empty)."""
    if metric not in df or not df[metric].notna().any():
        metric = "fvu"
    table: Any = df.pivot_table(index="dictionary_size", columns="k", values=metric)
    return f"{metric} (rows: dictionary size, columns: k)\n" + table.to_string(
        float_format=lambda v: f"{v:.4f}"
    )
