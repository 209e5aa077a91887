"""The token renderer: escaping, visible whitespace and tokenizer markers, markdown, token pieces, colours."""

from __future__ import annotations

import re

import pytest

from itda_core.tokenize import token_pieces as pieces
from itda_dashboard.render import (
    Cell,
    cell_html,
    diverging_color,
    escape,
    label,
    md,
    quality_color,
    visible,
)
from itda_dashboard.render import tokens_html as render_tokens


@pytest.mark.parametrize(
    "raw",
    ["<script>alert(1)</script>", "</div><div>", "&amp;", "a\"b'c", "<img src=x onerror=alert(1)>", "🙂"],
)
def test_tokens_are_escaped(raw):
    html = render_tokens([Cell(raw, 1.0, title=raw), Cell(raw, -0.5, target=True, gap=raw)], 1.0)
    assert "<script" not in html and "<img" not in html and "</div><div>" not in html
    assert escape(raw) in html
    if raw == "&amp;":
        assert "&amp;amp;" in html
    if raw == "🙂":
        assert "🙂" in html
    # titles are attribute-safe: no raw quote can end the attribute
    for title in re.findall(r'title="([^"]*)"', html):
        assert "<" not in title and '"' not in title


def test_whitespace_and_tokenizer_markers_are_visible():
    assert visible("a\nb\tc\r\nd") == "a↵b⇥c↵d"
    assert visible("ĠParis", markers=True) == " Paris"
    assert visible("▁Paris", markers=True) == " Paris"
    assert visible("Ċ", markers=True) == "↵"
    assert visible("ĠParis") == "ĠParis"  # real text keeps the character
    assert label("ĠParis") == "“ Paris”"
    html = cell_html(Cell("x\ny"), 1.0)
    assert "x↵y" in html and "\n" not in html
    assert "⟨&lt;bos&gt;⟩" in cell_html(Cell("<bos>", special=True), 1.0)


def test_markdown_escaping():
    assert md("**bold** <b>x</b> [a](b)") == r"\*\*bold\*\* \<b\>x\</b\> \[a\]\(b\)"
    assert md("a\nb") == "a↵b"


def test_pieces_show_split_characters_once():
    text = "Hi 🙂 there"
    spans = [(0, 0), (0, 2), (2, 4), (3, 4), (3, 4), (4, 10)]
    got = pieces(text, spans, ["<bos>", "Hi", " ?", "?", "?", " there"])
    assert got[0] == ("", "<bos>", True)
    assert [p for _, p, _ in got[1:]] == ["Hi", " 🙂", "", "", " there"]
    # a tokenizer that leaves spaces out of its offsets (WordPiece): the space is a gap, not the token
    assert pieces("a b", [(0, 1), (2, 3)], ["a", "b"]) == [("", "a", False), (" ", "b", False)]


def test_colour_scales():
    assert diverging_color(0.0, 1.0) == "transparent"
    assert diverging_color(2.0, 1.0).startswith("rgba(214,39,40,0.800")  # saturates
    assert diverging_color(-0.5, 1.0).startswith("rgba(31,119,180")
    assert diverging_color(float("nan"), 1.0) == "transparent"
    assert quality_color(1.0) == "transparent"
    assert quality_color(0.3).startswith("rgba(214,39,40,0.800")
