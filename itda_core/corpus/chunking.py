"""Sentences and chunks: prose split at sentence boundaries and packed into documents of 400-800 characters.

Consumers truncate documents to 128 tokens, so documents of about 100-180 tokens keep most of the text usable.
"""

from __future__ import annotations

import math
import re

MIN_CHARS = 400
MAX_CHARS = 800

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
