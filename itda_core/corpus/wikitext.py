"""Wikitext to prose: MediaWiki XML pages, templates, links and tags rendered, then only prose paragraphs kept.

The markup is parsed with ``mwparserfromhell`` (imported when first needed); the result is sections of
paragraphs of sentences, ready for :mod:`itda_core.corpus.chunking`.
"""

from __future__ import annotations

import bz2
import html
import re
import xml.etree.ElementTree as ET
from collections.abc import Iterator
from pathlib import Path

from itda_core.corpus.chunking import split_sentences

MIN_PARAGRAPH_WORDS = 15


def iter_wiki_articles(path: Path) -> Iterator[tuple[str, str]]:
    """Stream ``(title, wikitext)`` of main-namespace, non-redirect pages from a bz2 MediaWiki dump."""
    with bz2.open(path, "rb") as fh:
        for _event, elem in ET.iterparse(fh, events=("end",)):
            if elem.tag.rsplit("}", 1)[-1] != "page":
                continue
            ns = elem.findtext("{*}ns", default="0").strip()
            title = elem.findtext("{*}title", default="").strip()
            redirect = elem.find("{*}redirect") is not None
            text = elem.findtext("{*}revision/{*}text", default="") or ""
            elem.clear()
            if ns != "0" or redirect or not title or text.lstrip().upper().startswith("#REDIRECT"):
                continue
            yield title, text


_SECTION_BREAK = "\n\x00SECTION\x00\n"

# Link namespaces whose links render nothing in running text.
_DROP_LINK_PREFIXES = {"file", "image", "media", "category"}
# Interwiki prefixes whose links render their text (``[[wikt:anarchy|anarchy]]``).
_INTERWIKI_PREFIXES = {"w", "s", "q", "n", "b", "v", "wikt", "wiktionary", "wikisource", "wikiquote"}
_LANG_PREFIX = re.compile(r"^[a-z]{2,3}(?:-[a-z]{2,8})*$")

# Tags whose contents are not running prose.
_DROP_TAGS = {
    "ref", "references", "table", "gallery", "math", "chem", "ce", "timeline", "imagemap", "source",
    "syntaxhighlight", "score", "graph", "hiero", "templatedata", "inputbox", "categorytree", "mapframe",
    "nowiki", "pre", "code", "tt", "hr", "div", "center", "poem", "blockquote", "ol", "ul", "onlyinclude",
    "noinclude", "includeonly",
}  # fmt: skip
_LIST_TAGS = {"li", "dt", "dd", "tr", "td", "th"}

_CITATION_TEMPLATES = re.compile(
    r"^(cite|citation|sfn|harv|efn|refn|rp|ref|r$|reflist|notelist|dead link|citation needed|clarify|"
    r"when|who|which|by whom|according to whom|vague|dubious|fact|cn$|page needed|verify|failed verification)"
)


def _positional(template: object) -> list[object]:
    """Positional parameters of a template in order, incl. explicitly numbered ones (``{{nowrap|1=...}}``)."""
    numbered: dict[int, object] = {}
    implicit = 0
    for param in template.params:  # type: ignore[attr-defined]
        if not param.showkey:
            implicit += 1
            numbered[implicit] = param
        elif str(param.name).strip().isdigit():
            numbered[int(str(param.name).strip())] = param
    return [numbered[k] for k in sorted(numbered)]


def _render_template(template: object) -> str:
    """Text of the few inline templates that carry prose (``{{convert|5|km}}``, ``{{lang|fr|...}}``); every
    other template (citations, infoboxes, navigation, pronunciation) renders nothing."""
    name = str(template.name).strip().lower().replace("_", " ")  # type: ignore[attr-defined]
    args = [_render(p.value).strip() for p in _positional(template)]
    if name in {"convert", "cvt"} and args:
        if len(args) >= 3 and args[1] in {"to", "-", "–", "and", "or", "by", "x", "×", "&"}:
            sep = "–" if args[1] in {"-", "–"} else f" {args[1]} "
            return f"{args[0]}{sep}{args[2]} {args[3] if len(args) > 3 else ''}".strip()
        return f"{args[0]} {args[1] if len(args) > 1 else ''}".strip()
    if name in {"lang", "transl", "transliteration"} and args:
        return args[-1]
    if name.startswith("lang-") and args:
        return args[0]
    if name in {
        "nihongo", "nowrap", "nobr", "smaller", "big", "vanchor", "ill", "interlanguage link", "mvar", "var",
        "math", "nts", "dts", "abbr", "em", "strong", "sub", "sup", "sic", "lcfirst", "ucfirst", "not a typo",
        "visible anchor", "keypress", "nobold", "noitalic", "linktext", "w", "lang-en", "ship", "usd", "us$",
        "gbp", "£", "vr", "sc", "smallcaps", "val", "large", "resize",
    } and args:  # fmt: skip
        prefix = {"usd": "$", "us$": "US$", "gbp": "£", "£": "£"}.get(name, "")
        if name == "ship" and len(args) >= 2:
            return f"{args[0]} {args[1]}"
        if name == "resize" and len(args) >= 2:
            return args[1]
        return prefix + args[0]
    if name == "e" and args:
        return "×10" + _superscript(args[0])
    if name == "chem" and args:
        return "".join(args)
    if name == "angbr" and args:
        return f"⟨{args[0]}⟩"
    if name in {"frac", "sfrac"} and args:
        return "/".join(args[-2:]) if len(args) >= 2 else f"1/{args[0]}"
    if name in {"as of", "asof"} and args:
        low = template.has("lc") or template.has("since")  # type: ignore[attr-defined]
        date = " ".join(a for a in reversed(args[:3]) if a) if len(args) > 1 else args[0]
        return f"{'as of' if low else 'As of'} {date}"
    if name == "oldstyledate" and len(args) >= 2:
        return f"{args[0]}, {args[1]}"
    if name in {"c.", "circa"} and args:
        return f"c. {args[0]}"
    if name in {"fl.", "floruit"} and args:
        return f"fl. {args[0]}"
    return {
        "'": "'", "'s": "'s", "snd": " – ", "spaced ndash": " – ", "ndash": "–", "mdash": "—", "nbsp": " ",
        "okina": "ʻ", "=": "=", "dash": "–", "en dash": "–", "em dash": "—", "thinsp": " ", "mdashb": "—",
        "spaces": " ", "' \"": "'\"", "\" '": "\"'", "-\"": "\"", "carbon": "C", "hydrogen": "H",
        "oxygen": "O", "nitrogen": "N",
    }.get(name, "")  # fmt: skip


def _render_link(link: object) -> str:
    """The text a reader sees for a ``[[wikilink]]``; nothing for files, categories, interlanguage links."""
    title = _render(link.title).strip()  # type: ignore[attr-defined]
    leading_colon = title.startswith(":")
    title = title.lstrip(":").strip()
    prefix, sep, rest = title.partition(":")
    prefix_l = prefix.strip().lower()
    if sep and not leading_colon and prefix_l in _DROP_LINK_PREFIXES:
        return ""
    if link.text is not None:  # type: ignore[attr-defined]
        return _render(link.text)  # type: ignore[attr-defined]
    if sep and prefix_l in _INTERWIKI_PREFIXES:
        return rest.strip()
    if sep and not leading_colon and _LANG_PREFIX.match(prefix_l):
        return ""  # [[de:Anarchismus]]
    if sep and leading_colon and prefix_l in _DROP_LINK_PREFIXES:
        return rest.strip()
    return title.split("#", 1)[0] if "#" in title and not title.startswith("#") else title.lstrip("#")


def _render(code: object) -> str:
    """Wikitext with block structures removed but line structure (and list markers) kept, so that the
    line-level filter can still tell prose paragraphs from lists and tables."""
    from mwparserfromhell import nodes

    out: list[str] = []
    for node in code.nodes:  # type: ignore[attr-defined]
        if isinstance(node, nodes.Text):
            out.append(str(node.value))
        elif isinstance(node, nodes.Wikilink):
            out.append(_render_link(node))
        elif isinstance(node, nodes.Template):
            out.append(_render_template(node))
        elif isinstance(node, nodes.HTMLEntity):
            out.append(node.normalize())
        elif isinstance(node, nodes.ExternalLink):
            out.append(_render(node.title) if node.title is not None and node.brackets else "")
        elif isinstance(node, nodes.Heading):
            out.append(_SECTION_BREAK)
        elif isinstance(node, nodes.Tag):
            tag = str(node.tag).strip().lower()
            if tag in _LIST_TAGS and node.wiki_markup:
                out.append("\n" + str(node.wiki_markup))  # keep the marker: the whole line is dropped later
            elif tag == "table" or node.wiki_markup == "{|":
                out.append("\n")
            elif tag == "br":
                out.append(" ")
            elif tag == "sup" and node.contents is not None:
                out.append(_superscript(_render(node.contents)))
            elif tag in _DROP_TAGS or node.contents is None:
                out.append("")
            else:
                out.append(_render(node.contents))
        # Comments and template arguments ({{{1}}}) render nothing.
    return "".join(out)


_SUPERSCRIPTS = str.maketrans("0123456789+-−n", "⁰¹²³⁴⁵⁶⁷⁸⁹⁺⁻⁻ⁿ")


def _superscript(text: str) -> str:
    """``<sup>2</sup>`` -> ``²`` so that "10<sup>3</sup>" does not read as "103"; other text is kept as is."""
    stripped = text.strip()
    if stripped and all(c in "0123456789+-−n" for c in stripped):
        return stripped.translate(_SUPERSCRIPTS)
    return text


_SPACE = re.compile(r"[ \t\u00a0\u2000-\u200b\u202f\u205f\u3000]+")
_EMPTY_PARENS = re.compile(r"\(\s*(?:[,;:–—-]\s*)*\)")  # "( ; )" left by a removed pronunciation template
_PAREN_LEAD = re.compile(r"\(\s*[,;:]\s*")  # "(; born 1920)" -> "(born 1920)"
_PAREN_TAIL = re.compile(r"\s*[,;:]\s*\)")  # "(born 1920; )" -> "(born 1920)"
_SPACE_BEFORE_PUNCT = re.compile(r"\s+([,.;:!?)\]])")
_SPACE_AFTER_OPEN = re.compile(r"([(\[])\s+")
_REPEATED_PUNCT = re.compile(r"([,;:])\s*(?:[,;:]\s*)+")
_MARKUP_LEFTOVER = re.compile(r"\{\{|\}\}|\[\[|\]\]|\||<[a-zA-Z/!]|&[a-zA-Z]+;|&#\d+;|''|==|__[A-Z]+__")


def normalise_space(text: str) -> str:
    """Collapse runs of spaces (incl. non-breaking and thin spaces) into one, strip the ends."""
    return _SPACE.sub(" ", text).strip()


def _tidy(line: str) -> str:
    """Remove the punctuation debris that removed templates and refs leave behind."""
    line = normalise_space(html.unescape(line.replace("'''", "").replace("''", "")))
    for _ in range(2):
        line = _EMPTY_PARENS.sub("", line)
        line = _PAREN_LEAD.sub("(", line)
        line = _PAREN_TAIL.sub(")", line)
        line = _SPACE_BEFORE_PUNCT.sub(r"\1", line)
        line = _SPACE_AFTER_OPEN.sub(r"\1", line)
        line = _REPEATED_PUNCT.sub(r"\1 ", line)
        line = normalise_space(line)
    return line


_TERMINAL = re.compile(r"[.!?][\"'”’)\]]*$")


def _reads_as_text(text: str) -> bool:
    """Mostly letters and digits (not a row of symbols or markup debris)."""
    non_space = [c for c in text if not c.isspace()]
    letters = sum(c.isalpha() for c in non_space)
    alnum = letters + sum(c.isdigit() for c in non_space)
    return letters >= 0.5 * len(non_space) and alnum >= 0.8 * len(non_space)


def clean_paragraph(paragraph: str) -> list[str]:
    """Sentences of one tidied paragraph that read as ordinary prose, or ``[]`` if the paragraph does not.

    Sentences with markup leftovers are dropped, as are trailing fragments that do not end like a sentence
    (e.g. the "... are:" that introduces a list). The rest is kept if it still has MIN_PARAGRAPH_WORDS words
    and is mostly letters."""
    sentences = [s for s in split_sentences(paragraph) if not _MARKUP_LEFTOVER.search(s)]
    while sentences and not _TERMINAL.search(sentences[-1]):
        sentences.pop()
    text = " ".join(sentences)
    if len(text.split()) < MIN_PARAGRAPH_WORDS or not _reads_as_text(text):
        return []
    return sentences


def wikitext_to_sections(wikitext: str) -> list[list[list[str]]]:
    """Clean wikitext into sections (split at headings) of prose paragraphs, each a list of sentences.

    As in MediaWiki, consecutive plain lines form one paragraph; a blank line or a line starting with list,
    indent, table or markup characters ends it (and such lines are dropped)."""
    import mwparserfromhell

    rendered = _render(mwparserfromhell.parse(wikitext))
    sections: list[list[list[str]]] = []
    for raw_section in rendered.split(_SECTION_BREAK):
        paragraphs: list[list[str]] = []
        pending: list[str] = []
        for raw_line in [*raw_section.split("\n"), ""]:
            stripped = raw_line.strip()
            if stripped and stripped[0] not in "*#:;|!{}=<":
                pending.append(stripped)
                continue
            if pending:
                sentences = clean_paragraph(_tidy(" ".join(pending)))
                if sentences:
                    paragraphs.append(sentences)
                pending = []
        if paragraphs:
            sections.append(paragraphs)
    return sections
