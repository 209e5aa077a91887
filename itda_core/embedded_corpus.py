"""The embedded default corpus: real English text shipped inside the ``gensim`` package.

``gensim`` (the ``embedded`` extra, or ``--no-deps``; never imported) carries, in ``gensim/test/test_data/``:

* a shortened Wikipedia dump (MediaWiki XML: 206 pages, 106 articles after skipping redirects), and
* the Lee news corpus (``lee_background.cor``, 300 stories; ``lee.cor``, 50 stories), one story per line.

The Wikipedia markup is stripped with ``mwparserfromhell`` and only ordinary prose paragraphs are kept. All
text is then cut at sentence boundaries into documents of roughly 400-800 characters (about 100-180 tokens),
because consumers truncate documents to 128 tokens and we want most of the text to be usable. Building takes a
few seconds, so the result is cached as JSON under the cache directory, keyed by the format version and a
sha256 of the source files and of this module's code (see :func:`load_default_documents`). See
``docs/corpus.md`` for the rules and the resulting statistics.

This module returns ``(source, text)`` pairs; :mod:`itda_core.corpus` turns them into documents.
"""

from __future__ import annotations

import bz2
import hashlib
import html
import importlib.util
import json
import math
import os
import re
import tempfile
import xml.etree.ElementTree as ET
from collections.abc import Iterator
from pathlib import Path

from itda_core.errors import ITDAError

# Bump FORMAT_VERSION (and CORPUS_ID with it) whenever the cleaning or chunking rules change: the cached
# document list and every artefact built from the corpus are keyed by it.
FORMAT_VERSION = 1
CORPUS_ID = f"default-v{FORMAT_VERSION}"

WIKI_FILE = "enwiki-latest-pages-articles1.xml-p000000010p000030302-shortened.bz2"
LEE_FILES = ("lee_background.cor", "lee.cor")
SOURCE_FILES = (WIKI_FILE, *LEE_FILES)

MIN_CHARS = 400
MAX_CHARS = 800
MIN_PARAGRAPH_WORDS = 15

_INSTALL_HINT = "pip install --no-deps gensim"


# ----------------------------------------------------------------------------------------------------
# Locating the data and caching
# ----------------------------------------------------------------------------------------------------


def gensim_data_dir() -> Path:
    """The ``gensim/test/test_data`` folder, found without importing gensim (its import is slow and needs
    scipy); raises ITDAError if gensim or one of the needed files is missing."""
    spec = importlib.util.find_spec("gensim")
    if spec is None or not spec.submodule_search_locations:
        raise ITDAError(f"the default corpus needs the text shipped with gensim: {_INSTALL_HINT}")
    data_dir = Path(next(iter(spec.submodule_search_locations))) / "test" / "test_data"
    missing = [name for name in SOURCE_FILES if not (data_dir / name).is_file()]
    if missing:
        raise ITDAError(
            f"gensim's test data is incomplete ({', '.join(missing)} missing in {data_dir}): "
            f"reinstall it with {_INSTALL_HINT} --force-reinstall"
        )
    return data_dir


def default_cache_dir() -> Path:
    """``$ITDA_CACHE_DIR/corpus``, else ``$XDG_CACHE_HOME/itda/corpus``, else ``~/.cache/itda/corpus``: the
    same root as the model cache (:func:`itda_core.models.cache_root`), without importing torch."""
    root = os.environ.get("ITDA_CACHE_DIR")
    if root:
        return Path(root).expanduser() / "corpus"
    xdg = os.environ.get("XDG_CACHE_HOME")
    return (Path(xdg) if xdg else Path.home() / ".cache") / "itda" / "corpus"


def source_sha256(data_dir: Path) -> str:
    """sha256 over the source files and this module's own code: the cache is rebuilt if gensim's data or the
    cleaning code changes, even if someone forgets to bump FORMAT_VERSION."""
    digest = hashlib.sha256()
    for name in SOURCE_FILES:
        digest.update(name.encode() + b"\0")
        digest.update(hashlib.sha256((data_dir / name).read_bytes()).digest())
    digest.update(hashlib.sha256(Path(__file__).read_bytes()).digest())
    return digest.hexdigest()


def cache_path(cache_dir: Path, source_digest: str) -> Path:
    """Where the built document list for these source files (by digest) and this format version is cached."""
    return cache_dir / f"{CORPUS_ID}-{source_digest[:16]}.json"


def _read_cache(path: Path, key: str) -> list[tuple[str, str]] | None:
    """The cached ``(source, text)`` list, or None if the file is missing, corrupt or for another key."""
    try:
        payload = json.loads(path.read_text(encoding="utf-8"))
        if payload.get("format") != FORMAT_VERSION or payload.get("key") != key:
            return None
        docs = [(str(source), str(text)) for source, text in payload["documents"]]
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return None
    return docs or None


def _write_cache_atomic(path: Path, key: str, docs: list[tuple[str, str]]) -> None:
    """Write the cache via a temp file in the same folder + ``os.replace``: a killed process never leaves a
    half-written cache. Failure to write (read-only disk) is not an error: the corpus is simply not cached."""
    payload = {"format": FORMAT_VERSION, "key": key, "documents": [list(d) for d in docs]}
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=path.name + ".", suffix=".tmp", dir=path.parent)
    except OSError:
        return
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            json.dump(payload, fh, ensure_ascii=False)
            fh.flush()
            os.fsync(fh.fileno())
        os.chmod(tmp, 0o644)  # mkstemp creates 0600; the cache is not secret
        os.replace(tmp, path)
    except OSError:
        Path(tmp).unlink(missing_ok=True)


def load_default_documents(cache_dir: str | Path | None = None) -> list[tuple[str, str]]:
    """The default corpus as ``(source, text)`` pairs in corpus order, from the cache when possible."""
    data_dir = gensim_data_dir()
    cache_root = Path(cache_dir).expanduser() if cache_dir is not None else default_cache_dir()
    digest = source_sha256(data_dir)
    path = cache_path(cache_root, digest)
    key = f"{CORPUS_ID}:{digest}"
    docs = _read_cache(path, key)
    if docs is None:
        docs = build_default_documents(data_dir)
        _write_cache_atomic(path, key, docs)
    return docs


def build_default_documents(data_dir: Path | None = None) -> list[tuple[str, str]]:
    """Parse and clean all source files (slow: a few seconds): Wikipedia first, then lee_background, lee."""
    data_dir = data_dir or gensim_data_dir()
    docs: list[tuple[str, str]] = []
    for title, wikitext in iter_wiki_articles(data_dir / WIKI_FILE):
        chunks = chunk_sections(wikitext_to_sections(wikitext))
        docs.extend((f"enwiki:{title}#{i}", chunk) for i, chunk in enumerate(chunks))
    for name in LEE_FILES:
        label = name.removesuffix(".cor")
        lines = (data_dir / name).read_text(encoding="utf-8", errors="replace").splitlines()
        for line_no, line in enumerate(lines, start=1):
            story = _normalise_space(_HTML_TAG.sub("", line))
            if not story:
                continue
            chunks = chunk_sections([[split_sentences(story)]])
            docs.extend((f"{label}:{line_no}#{i}", chunk) for i, chunk in enumerate(chunks))
    return docs


# ----------------------------------------------------------------------------------------------------
# MediaWiki XML
# ----------------------------------------------------------------------------------------------------


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


# ----------------------------------------------------------------------------------------------------
# Wikitext -> prose
# ----------------------------------------------------------------------------------------------------

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


_HTML_TAG = re.compile(r"</?[a-zA-Z][^<>]*>")
_SPACE = re.compile(r"[ \t\u00a0\u2000-\u200b\u202f\u205f\u3000]+")
_EMPTY_PARENS = re.compile(r"\(\s*(?:[,;:–—-]\s*)*\)")  # "( ; )" left by a removed pronunciation template
_PAREN_LEAD = re.compile(r"\(\s*[,;:]\s*")  # "(; born 1920)" -> "(born 1920)"
_PAREN_TAIL = re.compile(r"\s*[,;:]\s*\)")  # "(born 1920; )" -> "(born 1920)"
_SPACE_BEFORE_PUNCT = re.compile(r"\s+([,.;:!?)\]])")
_SPACE_AFTER_OPEN = re.compile(r"([(\[])\s+")
_REPEATED_PUNCT = re.compile(r"([,;:])\s*(?:[,;:]\s*)+")
_MARKUP_LEFTOVER = re.compile(r"\{\{|\}\}|\[\[|\]\]|\||<[a-zA-Z/!]|&[a-zA-Z]+;|&#\d+;|''|==|__[A-Z]+__")


def _normalise_space(text: str) -> str:
    """Collapse runs of spaces (incl. non-breaking and thin spaces) into one, strip the ends."""
    return _SPACE.sub(" ", text).strip()


def _tidy(line: str) -> str:
    """Remove the punctuation debris that removed templates and refs leave behind."""
    line = _normalise_space(html.unescape(line.replace("'''", "").replace("''", "")))
    for _ in range(2):
        line = _EMPTY_PARENS.sub("", line)
        line = _PAREN_LEAD.sub("(", line)
        line = _PAREN_TAIL.sub(")", line)
        line = _SPACE_BEFORE_PUNCT.sub(r"\1", line)
        line = _SPACE_AFTER_OPEN.sub(r"\1", line)
        line = _REPEATED_PUNCT.sub(r"\1 ", line)
        line = _normalise_space(line)
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


# ----------------------------------------------------------------------------------------------------
# Sentences and chunks
# ----------------------------------------------------------------------------------------------------

_ABBREVIATIONS = {
    "mr", "mrs", "ms", "dr", "st", "jr", "sr", "vs", "etc", "e.g", "i.e", "no", "nos", "vol", "pp", "p", "c",
    "ca", "gen", "col", "lt", "capt", "prof", "rev", "hon", "inc", "ltd", "co", "corp", "mt", "ft", "u.s",
    "u.k", "a.m", "p.m", "approx", "fl", "b", "d", "jan", "feb", "mar", "apr", "jun", "jul", "aug", "sep",
    "sept", "oct", "nov", "dec", "fig", "cf", "al", "op", "cit", "ed", "eds", "trans", "sgt", "gov", "sen",
    "rep", "pres", "adm", "maj", "cmdr", "bros", "ave", "blvd", "est", "dept", "univ", "assn",
}  # fmt: skip
_BOUNDARY = re.compile(r"[.!?][\"'”’)\]]*\s+(?=[\"'“‘(\[]?[A-Z0-9])")
_LAST_WORD = re.compile(r"([A-Za-z][A-Za-z.]*)\.[\"'”’)\]]*$")


def split_sentences(text: str) -> list[str]:
    """Split prose into sentences at ``. ! ?`` followed by a capitalised word, except after common
    abbreviations and initials ("Mr.", "e.g.", "J. R. R."). Good enough to choose cut points."""
    sentences: list[str] = []
    start = 0
    for match in _BOUNDARY.finditer(text):
        head = text[start : match.end()].rstrip()
        last = _LAST_WORD.search(head)
        if last and text[match.start()] == ".":
            word = last.group(1)
            if word.lower() in _ABBREVIATIONS or (len(word) == 1 and word.isupper()):
                continue
        sentences.append(head)
        start = match.end()
    tail = text[start:].strip()
    if tail:
        sentences.append(tail)
    return [piece for sentence in sentences for piece in _split_huge(sentence)]


def _split_huge(sentence: str, limit: int = MAX_CHARS) -> list[str]:
    """A sentence longer than ``limit`` is cut at word boundaries (after ``;`` or ``,`` when possible)."""
    pieces: list[str] = []
    while len(sentence) > limit:
        window = sentence[:limit]
        cut = max(window.rfind("; "), window.rfind(", "))
        if cut < limit // 2:
            cut = window.rfind(" ")
        if cut <= 0:
            cut = limit - 1
        pieces.append(sentence[: cut + 1].strip())
        sentence = sentence[cut + 1 :].strip()
    if sentence:
        pieces.append(sentence)
    return pieces


def _chunk_units(units: list[tuple[str, bool]]) -> list[str]:
    """Pack ``(sentence, starts_paragraph)`` units into chunks of about equal length, none over MAX_CHARS
    unless one sentence is; paragraph breaks inside a chunk become newlines."""
    lengths = [len(s) + 1 for s, _ in units]
    chunks: list[str] = []
    i, remaining = 0, sum(lengths)
    while i < len(units):
        k = max(1, math.ceil(remaining / MAX_CHARS))
        target = remaining / k
        parts: list[str] = [units[i][0]]
        size = lengths[i]
        i += 1
        while i < len(units):
            new = size + lengths[i]
            if new > MAX_CHARS + 1 or abs(new - target) > abs(size - target):
                break
            parts.append(("\n" if units[i][1] else " ") + units[i][0])
            size = new
            i += 1
        remaining -= size
        chunks.append("".join(parts))
    return chunks


def chunk_sections(sections: list[list[list[str]]]) -> list[str]:
    """Cut an article (sections of paragraphs of sentences) into documents of MIN_CHARS-MAX_CHARS characters.
    Sections shorter than MIN_CHARS are merged with the next one (the last with the previous one) so that
    documents do not end up tiny; chunks never span more than such a merged group."""
    groups: list[list[tuple[str, bool]]] = []
    current: list[tuple[str, bool]] = []
    for section in sections:
        for paragraph in section:
            pieces = [piece for sentence in paragraph for piece in _split_huge(sentence)]
            current.extend((piece, j == 0) for j, piece in enumerate(pieces))
        if sum(len(s) + 1 for s, _ in current) >= MIN_CHARS:
            groups.append(current)
            current = []
    if current:
        if groups:
            groups[-1].extend(current)
        else:
            groups.append(current)
    return [chunk for group in groups for chunk in _chunk_units(group)]
