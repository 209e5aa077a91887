"""Wikitext to prose (itda_core.corpus.wikitext) on a small snippet: templates, links, refs, lists, tables."""

from __future__ import annotations

from itda_core.corpus.wikitext import wikitext_to_sections


def test_wikitext_cleaning() -> None:
    wikitext = (
        "{{Infobox thing|name=X}}\n"
        "'''Widget''' ({{IPAc-en|w|ɪ|dʒ}}; from [[Latin language|Latin]]) is a [[gadget]] of about "
        "{{convert|5|km|mi}} in length<ref>{{cite web|url=http://x}}</ref> that&nbsp;is used by "
        "[[engineer]]s around the world every day.<ref name=a/> It was invented in {{as of|1900|lc=y}} "
        "or so by nobody in particular, as far as anyone knows.\n"
        "[[File:Widget.jpg|thumb|A widget.]]\n"
        "== History ==\n"
        "* a list item that is long enough to count as a paragraph of prose, but is a list item.\n"
        "{| class=wikitable\n| cell || cell\n|}\n"
        "Short line.\n"
        "[[Category:Widgets]]\n"
    )
    sections = wikitext_to_sections(wikitext)
    text = " ".join(s for section in sections for para in section for s in para)
    start = "Widget (from Latin) is a gadget of about 5 km in length that is used by engineers around"
    assert text.startswith(start)
    assert "as of 1900" in text
    for leftover in ("{{", "[[", "thumb", "list item", "cell", "Short line", "Category", "ref", "&nbsp;"):
        assert leftover not in text
