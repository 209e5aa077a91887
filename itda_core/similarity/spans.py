"""Character-span identities of atoms: how tokens of different tokenizers are matched (``method="spans"``).

A whole-character token is identified by the character where it ends (``(doc_id, char_end)``): two tokens that
end at the same character have read the same text. Pieces of a split character and special tokens not at
position 0 need the identical token at the same position; empty-span tokens at position 0 (BOS/CLS) match each
other. Every identity is unique within one dictionary, so the matching is one-to-one, and for one tokenizer it
is exactly the ``keys`` rule (:mod:`itda_core.similarity.position_keys`). Identities are hashed to int64, so
matching is one ``np.intersect1d`` of sorted arrays.
"""

from __future__ import annotations

import re
import zlib
from functools import lru_cache
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    from itda_core.similarity.atom_sets import AtomSet

__all__ = ["is_partial_token", "pairs_by_span", "span_identities"]

# Span identity kinds (hashed together with their fields).
_KIND_TOKEN, _KIND_EXACT, _KIND_START = 1, 2, 3


@lru_cache(maxsize=1)
def _byte_decoder() -> dict[str, int]:
    """GPT-2 byte-level alphabet: printable stand-in character -> byte (inverse of ``bytes_to_unicode``)."""
    bs = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), 256)]
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return {chr(c): b for b, c in zip(bs, cs, strict=True)}


_BYTE_FALLBACK = re.compile(r"<0x([0-9A-Fa-f]{2})>")


def is_partial_token(token_str: str) -> bool:
    """True when a token is only part of a character (a byte-level BPE or SentencePiece byte-fallback piece
    of e.g. an emoji): its bytes are not valid UTF-8 on their own. Such pieces share character spans with
    their neighbours, so they are matched by position, never by span."""
    match = _BYTE_FALLBACK.fullmatch(token_str)
    if match:
        return int(match.group(1), 16) >= 0x80
    if not token_str or token_str.isascii():
        return False
    decoder = _byte_decoder()
    if not all(c in decoder for c in token_str):
        return False  # not a byte-level token string: real text, whole characters
    try:
        bytes(decoder[c] for c in token_str).decode("utf-8")
    except UnicodeDecodeError:
        return True
    return False


def _mix(h: np.ndarray) -> np.ndarray:
    """splitmix64 finaliser on uint64 arrays (wrapping arithmetic)."""
    h = (h ^ (h >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    h = (h ^ (h >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    return h ^ (h >> np.uint64(31))


def _hash_columns(*cols: np.ndarray) -> np.ndarray:
    """A 64-bit hash per row of the given int columns (deterministic across processes)."""
    h = np.full(len(cols[0]), 0x9E3779B97F4A7C15, dtype=np.uint64)
    with np.errstate(over="ignore"):
        for col in cols:
            h = _mix(h ^ col.astype(np.int64).view(np.uint64))
    return h.view(np.int64)


def span_identities(atoms: AtomSet) -> tuple[np.ndarray, np.ndarray]:
    """(sorted span identities, index into the set's rows for each) of one atom set -- see the module
    docstring for the rule."""
    n = len(atoms)
    empty = atoms.char_start == atoms.char_end
    partial = np.fromiter((is_partial_token(s) for s in atoms.token_str), dtype=bool, count=n)
    kind = np.where(empty, np.where(atoms.position == 0, _KIND_START, _KIND_EXACT),
                    np.where(partial, _KIND_EXACT, _KIND_TOKEN))
    ids = np.empty(n, dtype=np.int64)
    zeros = np.zeros(n, dtype=np.int64)

    tok = np.flatnonzero(kind == _KIND_TOKEN)
    if len(tok):  # (doc, char_end, rank among this set's tokens ending there, by position)
        order = tok[np.lexsort((atoms.position[tok], atoms.char_end[tok], atoms.doc_id[tok]))]
        d, e = atoms.doc_id[order], atoms.char_end[order]
        new = np.ones(len(order), dtype=bool)
        new[1:] = (d[1:] != d[:-1]) | (e[1:] != e[:-1])
        starts = np.maximum.accumulate(np.where(new, np.arange(len(order)), 0))
        rank = np.arange(len(order)) - starts
        ids[order] = _hash_columns(np.full(len(order), _KIND_TOKEN), d, e, rank)
    exact = np.flatnonzero(kind == _KIND_EXACT)
    if len(exact):  # the identical token at the same position
        strs = np.fromiter(
            (zlib.crc32(atoms.token_str[i].encode("utf-8", "surrogatepass")) for i in exact),
            dtype=np.int64, count=len(exact))
        cols = [getattr(atoms, c)[exact] for c in ("doc_id", "position", "char_start", "char_end")]
        ids[exact] = _hash_columns(np.full(len(exact), _KIND_EXACT), *cols, strs)
    start = np.flatnonzero(kind == _KIND_START)
    if len(start):  # any empty-span token at position 0 (BOS / CLS) of the document
        ids[start] = _hash_columns(np.full(len(start), _KIND_START), atoms.doc_id[start], zeros[start])
    order = np.argsort(ids, kind="stable")
    sorted_ids = ids[order]
    if len(sorted_ids) > 1 and (sorted_ids[1:] == sorted_ids[:-1]).any():  # pragma: no cover
        raise RuntimeError("span identity collision; please report this dictionary pair")
    return sorted_ids, order


def pairs_by_span(sa: AtomSet, sb: AtomSet) -> tuple[np.ndarray, np.ndarray]:
    """Positions (in each set) of span-matched atoms."""
    ids_a, order_a = sa.span_ids()
    ids_b, order_b = sb.span_ids()
    _, ia, ib = np.intersect1d(ids_a, ids_b, assume_unique=True, return_indices=True)
    return order_a[ia], order_b[ib]
