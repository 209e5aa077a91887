"""Token rendering for the dashboard: every string that reaches HTML goes through :func:`html.escape` here.

Two kinds of strings reach the pages. Token *texts* are slices of a document (real text: ``<script>``,
``</div>``, ``&amp;``, newlines, tabs, emoji); token *strings* are a tokenizer's own spelling (byte-level
BPE writes a leading space as ``Ġ`` and a newline as ``Ċ``, SentencePiece writes a space as ``▁``).
:func:`visible` turns either into what a reader should see (markers become spaces, a newline becomes ``↵``,
a tab ``⇥``), :func:`escape` makes it safe for HTML, and :func:`tokens_html` lays out a run of tokens
coloured by a signed value on a diverging scale (blue negative, red positive) or by reconstruction quality.
"""

from __future__ import annotations

import html
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from itda_dashboard.atom_data import Context

NEWLINE = "↵"
TAB = "⇥"
# Tokenizer markers: GPT-2 byte-level BPE (Ġ space, Ċ newline, ĉ tab, č carriage return), SentencePiece (▁).
_MARKERS = {"Ġ": " ", "▁": " ", "Ċ": NEWLINE, "ĉ": TAB, "č": ""}
_WHITESPACE = {"\r\n": NEWLINE, "\n": NEWLINE, "\r": "", "\t": TAB}

POSITIVE = (214, 39, 40)  # red: the atom is added with a positive coefficient
NEGATIVE = (31, 119, 180)  # blue: negative coefficient
TOKEN_STYLE = (
    "border-radius:3px;padding:1px 0;margin:0;line-height:1.9;font-family:ui-monospace,Menlo,monospace;"
    "font-size:0.86em;"
)
BOX_STYLE = "white-space:pre-wrap;word-break:break-word;line-height:1.9;"


def visible(token: str, *, markers: bool = False) -> str:
    """What a reader sees for a token: newlines as ↵, tabs as ⇥; with ``markers`` also Ġ/▁ as spaces."""
    if markers:
        token = "".join(_MARKERS.get(ch, ch) for ch in token)
    for raw, shown in _WHITESPACE.items():
        token = token.replace(raw, shown)
    return token


def escape(text: str) -> str:
    """HTML-escape text, quotes included (safe inside element bodies and attribute values)."""
    return html.escape(text, quote=True)


def label(token: str, *, markers: bool = True) -> str:
    """A plain-text label for tables and select boxes (not HTML): visible whitespace, in quotes."""
    return f"“{visible(token, markers=markers)}”"


def _rgba(rgb: tuple[int, int, int], alpha: float) -> str:
    return f"rgba({rgb[0]},{rgb[1]},{rgb[2]},{alpha:.3f})"


def diverging_color(value: float | None, scale: float) -> str:
    """Background for a signed value: transparent at 0, saturating to red (+) or blue (-) at ``|scale|``."""
    if value is None or not math.isfinite(value) or value == 0 or not scale or not math.isfinite(scale):
        return "transparent"
    strength = min(1.0, abs(value) / abs(scale))
    return _rgba(POSITIVE if value > 0 else NEGATIVE, 0.08 + 0.72 * strength)


def quality_color(cosine: float | None, floor: float = 0.5) -> str:
    """Background for reconstruction quality: transparent at cosine 1, red at ``floor`` or below."""
    if cosine is None or not math.isfinite(cosine):
        return "rgba(128,128,128,0.25)"
    badness = min(1.0, max(0.0, (1.0 - cosine) / (1.0 - floor)))
    return "transparent" if badness < 0.02 else _rgba(POSITIVE, 0.08 + 0.72 * badness)


@dataclass
class Cell:
    """One token to lay out: its text, the value that colours it, a tooltip, and how to mark it."""

    text: str
    value: float | None = None
    title: str = ""
    target: bool = False  # the token the context is about (outlined)
    special: bool = False  # a special token (BOS/CLS) that covers no text: shown in grey brackets
    color: str | None = None  # explicit background (overrides the value's colour)
    gap: str = ""  # text between the previous token and this one (e.g. a space), shown uncoloured


def cell_html(cell: Cell, scale: float) -> str:
    """One token as an escaped, coloured ``<span>``."""
    background = cell.color if cell.color is not None else diverging_color(cell.value, scale)
    style = TOKEN_STYLE + f"background:{background};"
    if cell.target:
        style += "outline:2px solid #111;outline-offset:0;font-weight:600;"
    if cell.special:
        style += "color:#888;"
        shown = f"⟨{visible(cell.text, markers=True)}⟩"
    else:
        shown = visible(cell.text)
    title = f' title="{escape(cell.title)}"' if cell.title else ""
    gap = escape(visible(cell.gap)) if cell.gap else ""
    return f'{gap}<span style="{style}"{title}>{escape(shown)}</span>'


def tokens_html(cells: Sequence[Cell], scale: float = 1.0, *, prefix: str = "", suffix: str = "") -> str:
    """A run of tokens as one ``<div>`` (whitespace preserved), with optional escaped text around it."""
    body = "".join(cell_html(c, scale) for c in cells)
    before = f'<span style="color:#888">{escape(visible(prefix))}</span>' if prefix else ""
    after = f'<span style="color:#888">{escape(visible(suffix))}</span>' if suffix else ""
    return f'<div style="{BOX_STYLE}">{before}{body}{after}</div>'


def highlight_html(text: str, start: int, end: int, *, title: str = "") -> str:
    """A whole document with the characters ``[start, end)`` highlighted (a caret when the span is empty)."""
    start = max(0, min(start, len(text)))
    end = max(start, min(end, len(text)))
    mark = escape(visible(text[start:end])) if end > start else "‸"
    tip = f' title="{escape(title)}"' if title else ""
    style = "background:#ffd54f;outline:2px solid #111;border-radius:3px;font-weight:600;"
    return (
        f'<div style="{BOX_STYLE}">{escape(visible(text[:start]))}<span style="{style}"{tip}>{mark}</span>'
        f"{escape(visible(text[end:]))}</div>"
    )


def legend_html(scale: float, what: str = "coefficient") -> str:
    """A small legend for the diverging scale: -scale, 0, +scale."""
    cells = [
        Cell(f" {-scale:.3g} ", -scale),
        Cell(" 0 ", 0.0),
        Cell(f" +{scale:.3g} ", scale),
    ]
    return (
        f'<div style="font-size:0.8em;color:#555">{escape(what)}: '
        + "".join(cell_html(c, scale) for c in cells)
        + "</div>"
    )


def context_rows_html(contexts: Sequence[Context], scale: float) -> str:
    """Contexts as an HTML table: coefficient, then the coloured token window."""
    rows = []
    for ctx in contexts:
        cells = [
            Cell(
                piece,
                value,
                title=f"coefficient {value:+.3f}" if value is not None else "",
                target=is_target,
                special=special,
                gap=gap,
            )
            for gap, piece, special, value, is_target in ctx.cells
        ]
        coef = "" if ctx.coef is None else f"{ctx.coef:+.3f}"
        rows.append(
            f'<tr><td style="padding:2px 8px;font-family:monospace;color:#555;vertical-align:top">{coef}</td>'
            f'<td style="padding:2px 4px">{tokens_html(cells, scale)}</td>'
            f'<td style="padding:2px 8px;color:#999;font-size:0.8em;vertical-align:top;white-space:nowrap">'
            f"doc {ctx.doc_id}</td>"
            "</tr>"
        )
    return '<table style="border-collapse:collapse;width:100%">' + "".join(rows) + "</table>"


_MD_SPECIAL = set("\\`*_{}[]()#+-.!|<>~$:&")


def md(text: str, *, markers: bool = False) -> str:
    """Text for Streamlit markdown (labels, captions): visible whitespace and every markdown/HTML character
    backslash-escaped, so a token like ``**x**`` or ``<b>`` shows literally."""
    shown = visible(text, markers=markers)
    return "".join(f"\\{ch}" if ch in _MD_SPECIAL else ch for ch in shown)


def code(text: str) -> str:
    """Text as a Markdown code span (shown literally, HTML and Markdown included); as :func:`md` text instead when
    it holds a backtick or a line break, which could end the span."""
    return md(text) if "`" in text or "\n" in text or "\r" in text else f"`{text}`"
