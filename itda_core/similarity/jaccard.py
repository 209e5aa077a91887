"""Jaccard similarity of ITDA dictionaries: how many source tokens two dictionaries share.

Two rules identify an atom (see docs/similarity.md for the full rules and why):

* ``keys``: ``(doc_id, position)``, as in the paper. Valid only between dictionaries built with the same
  tokenizer, corpus, ``seq_len`` and ``skip_special_tokens``; :func:`jaccard` refuses anything else.
* ``spans``: for different tokenizers. A whole-character token is identified by the character where it
  ends (``(doc_id, char_end)``): two tokens that end at the same character have read the same text. Pieces
  of a split character and special tokens not at position 0 need the identical token at the same position;
  empty-span tokens at position 0 (BOS/CLS) match each other. Every identity is unique within one
  dictionary, so the matching is one-to-one, and for one tokenizer it is exactly the ``keys`` rule.

Every identity is an int64 (keys packed, span identities hashed), so intersections are ``np.intersect1d``
over sorted arrays; per-dictionary arrays are cached on the dictionary object.
"""

from __future__ import annotations

import hashlib
import re
import weakref
import zlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from functools import lru_cache

import numpy as np
import pandas as pd

from itda_core.dictionary import ITDA, ITDAConfig
from itda_core.errors import ITDAError
from itda_core.provenance import Provenance

__all__ = [
    "POSITION_BITS",
    "AtomSet",
    "atom_set",
    "check_comparable",
    "choose_method",
    "is_partial_token",
    "jaccard",
    "jaccard_by_span",
    "matched_pairs",
    "model_atom_set",
    "model_jaccard",
    "model_layers",
    "pack_keys",
    "same_tokenizer",
    "shared_atoms",
    "shared_count",
    "span_matches",
]

POSITION_BITS = 20  # key = doc_id * 2**20 + position: positions up to ~1M tokens, doc ids up to 2**43
_MAX_DOC = 2 ** (63 - POSITION_BITS)
METHODS = ("auto", "keys", "spans")

# Span identity kinds (hashed together with their fields).
_KIND_TOKEN, _KIND_EXACT, _KIND_START = 1, 2, 3


# ---- tokenizer-independent facts about one token --------------------------------------------------------
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


# ---- atom sets --------------------------------------------------------------------------------------------
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


def pack_keys(doc_id: np.ndarray, position: np.ndarray) -> np.ndarray:
    """``doc_id * 2**20 + position`` as int64; raises when a value does not fit."""
    doc_id = np.asarray(doc_id, dtype=np.int64)
    position = np.asarray(position, dtype=np.int64)
    if len(doc_id) and (position.min() < 0 or position.max() >= 2**POSITION_BITS or doc_id.min() < 0
                        or doc_id.max() >= _MAX_DOC):
        raise ITDAError(f"provenance out of range for Jaccard keys: positions must be < 2**{POSITION_BITS} "
                        f"and document ids < 2**{63 - POSITION_BITS}")
    return (doc_id << POSITION_BITS) | position


@dataclass(eq=False)
class AtomSet:
    """The distinct source tokens of one dictionary (or of a model's dictionaries together).

    ``rows`` index the source provenance (first occurrence of each ``(doc_id, position)``), in sorted-key
    order; ``keys`` are the sorted unique packed keys; the span identities are computed on first use."""

    config: ITDAConfig
    label: str
    rows: np.ndarray
    keys: np.ndarray
    doc_id: np.ndarray
    position: np.ndarray
    token_id: np.ndarray
    char_start: np.ndarray
    char_end: np.ndarray
    token_str: list[str]
    fingerprint: str
    _span: tuple[np.ndarray, np.ndarray] | None = field(default=None, repr=False)

    def __len__(self) -> int:
        return len(self.keys)

    @classmethod
    def from_provenance(cls, prov: Provenance, config: ITDAConfig, label: str) -> AtomSet:
        """Distinct ``(doc_id, position)`` rows of ``prov`` (first occurrence kept), sorted by key."""
        raw = pack_keys(prov.doc_id.numpy(), prov.position.numpy())
        keys, rows = np.unique(raw, return_index=True)
        cols = {c: getattr(prov, c).numpy()[rows] for c in ("doc_id", "position", "token_id", "char_start",
                                                              "char_end")}
        strs = [prov.token_str[i] for i in rows.tolist()]
        digest = hashlib.sha1()
        for c in ("doc_id", "position", "token_id", "char_start", "char_end"):
            digest.update(np.ascontiguousarray(cols[c]).tobytes())
        digest.update("\x00".join(strs).encode("utf-8", "surrogatepass"))
        return cls(config, label, rows.astype(np.int64), keys, token_str=strs, fingerprint=digest.hexdigest(),
                   **cols)

    def span_ids(self) -> tuple[np.ndarray, np.ndarray]:
        """(sorted span identities, index into this set's rows for each) -- see the module docstring."""
        if self._span is None:
            self._span = self._compute_span_ids()
        return self._span

    def _compute_span_ids(self) -> tuple[np.ndarray, np.ndarray]:
        n = len(self)
        empty = self.char_start == self.char_end
        partial = np.fromiter((is_partial_token(s) for s in self.token_str), dtype=bool, count=n)
        kind = np.where(empty, np.where(self.position == 0, _KIND_START, _KIND_EXACT),
                        np.where(partial, _KIND_EXACT, _KIND_TOKEN))
        ids = np.empty(n, dtype=np.int64)
        zeros = np.zeros(n, dtype=np.int64)

        tok = np.flatnonzero(kind == _KIND_TOKEN)
        if len(tok):  # (doc, char_end, rank among this set's tokens ending there, by position)
            order = tok[np.lexsort((self.position[tok], self.char_end[tok], self.doc_id[tok]))]
            d, e = self.doc_id[order], self.char_end[order]
            new = np.ones(len(order), dtype=bool)
            new[1:] = (d[1:] != d[:-1]) | (e[1:] != e[:-1])
            starts = np.maximum.accumulate(np.where(new, np.arange(len(order)), 0))
            rank = np.arange(len(order)) - starts
            ids[order] = _hash_columns(np.full(len(order), _KIND_TOKEN), d, e, rank)
        exact = np.flatnonzero(kind == _KIND_EXACT)
        if len(exact):  # the identical token at the same position
            strs = np.fromiter(
                (zlib.crc32(self.token_str[i].encode("utf-8", "surrogatepass")) for i in exact),
                dtype=np.int64, count=len(exact))
            cols = [getattr(self, c)[exact] for c in ("doc_id", "position", "char_start", "char_end")]
            ids[exact] = _hash_columns(np.full(len(exact), _KIND_EXACT), *cols, strs)
        start = np.flatnonzero(kind == _KIND_START)
        if len(start):  # any empty-span token at position 0 (BOS / CLS) of the document
            ids[start] = _hash_columns(np.full(len(start), _KIND_START), self.doc_id[start], zeros[start])
        order = np.argsort(ids, kind="stable")
        sorted_ids = ids[order]
        if len(sorted_ids) > 1 and (sorted_ids[1:] == sorted_ids[:-1]).any():  # pragma: no cover
            raise RuntimeError("span identity collision; please report this dictionary pair")
        return sorted_ids, order


_SETS: weakref.WeakKeyDictionary[ITDA, tuple[int, AtomSet]] = weakref.WeakKeyDictionary()


def _label(config: ITDAConfig) -> str:
    return f"{config.model_name} L{config.layer}"


def atom_set(itda: ITDA) -> AtomSet:
    """The dictionary's distinct source tokens, cached on the object (recomputed if its size changes)."""
    cached = _SETS.get(itda)
    if cached is not None and cached[0] == len(itda):
        return cached[1]
    aset = AtomSet.from_provenance(itda.provenance, itda.config, _label(itda.config))
    _SETS[itda] = (len(itda), aset)
    return aset


# ---- comparability --------------------------------------------------------------------------------------
def _tokenizer_fingerprint(c: ITDAConfig) -> str:
    return str(getattr(c, "tokenizer_sha256", "") or c.stats.get("tokenizer_sha256", "") or "")


def same_tokenizer(a: ITDAConfig, b: ITDAConfig) -> bool:
    """Whether two configs record the same tokenizer: the same tokenizer fingerprint when both record one
    (``tokenizer_sha256``, in the config or its stats), else the same ``model_id`` or the same non-empty
    ``tokenizer`` string (a Hugging Face name or path). Conservative: when this says no, spans are used,
    which give the same answer for identical tokenizers."""
    fa, fb = _tokenizer_fingerprint(a), _tokenizer_fingerprint(b)
    if fa and fb:
        return fa == fb
    if a.model_id and a.model_id == b.model_id:
        return True
    return bool(a.tokenizer) and a.tokenizer.strip().rstrip("/") == b.tokenizer.strip().rstrip("/")


def _corpus_text(c: ITDAConfig) -> str:
    sha = f" (sha256 {c.corpus_sha256[:12]})" if c.corpus_sha256 else ""
    return f"{c.corpus_id or '?'}{sha}"


def check_comparable(a: ITDAConfig, b: ITDAConfig, method: str = "keys") -> None:
    """Raise :class:`ITDAError` (one line) unless provenance of ``a`` and ``b`` can be compared by ``method``.

    Both: the same corpus (sha256 when both record one, else corpus_id). ``keys`` also needs the same
    tokenizer, ``seq_len`` and ``skip_special_tokens``."""
    la, lb = _label(a), _label(b)
    if a.corpus_sha256 and b.corpus_sha256:
        same_corpus = a.corpus_sha256 == b.corpus_sha256
    elif a.corpus_id and b.corpus_id:
        same_corpus = a.corpus_id == b.corpus_id
    else:
        raise ITDAError(f"cannot tell whether {la} and {lb} were built on the same corpus: a config records "
                        "neither corpus_sha256 nor corpus_id")
    if not same_corpus:
        raise ITDAError(f"{la} was built on corpus {_corpus_text(a)} but {lb} on {_corpus_text(b)}; "
                        "Jaccard needs the same documents (the same corpus and split) for both")
    if method == "spans":
        return
    if method != "keys":
        raise ValueError(f"method must be 'keys' or 'spans', not {method!r}")
    if not same_tokenizer(a, b):
        raise ITDAError(f"{la} (tokenizer {a.tokenizer or a.model_id}) and {lb} (tokenizer "
                        f"{b.tokenizer or b.model_id}) use different tokenizers, so token positions differ; "
                        "use jaccard_by_span (method 'spans')")
    if a.seq_len != b.seq_len:
        raise ITDAError(f"{la} used seq_len {a.seq_len} but {lb} used {b.seq_len}; position keys are only "
                        "comparable with the same truncation (or use jaccard_by_span)")
    if a.skip_special_tokens != b.skip_special_tokens:
        raise ITDAError(f"{la} has skip_special_tokens={a.skip_special_tokens} but {lb} has "
                        f"{b.skip_special_tokens}; build both the same way (or use jaccard_by_span)")


def choose_method(a: ITDAConfig, b: ITDAConfig, method: str = "auto") -> str:
    """``keys`` or ``spans`` for a pair: ``auto`` picks keys when the configs say the tokenizer, seq_len and
    special-token handling are the same, spans otherwise."""
    if method not in METHODS:
        raise ITDAError(f"unknown Jaccard method {method!r}; use one of {', '.join(METHODS)}")
    if method != "auto":
        return method
    same = same_tokenizer(a, b) and a.seq_len == b.seq_len and a.skip_special_tokens == b.skip_special_tokens
    return "keys" if same else "spans"


# ---- core ---------------------------------------------------------------------------------------------
def _as_set(x: ITDA | AtomSet) -> AtomSet:
    return x if isinstance(x, AtomSet) else atom_set(x)


def _pairs_keys(sa: AtomSet, sb: AtomSet) -> tuple[np.ndarray, np.ndarray]:
    """Positions (in each set) of the shared keys; checks that both agree on the token at each key."""
    _, ia, ib = np.intersect1d(sa.keys, sb.keys, assume_unique=True, return_indices=True)
    differ = np.flatnonzero(sa.token_id[ia] != sb.token_id[ib])
    if len(differ):
        i, j = ia[differ[0]], ib[differ[0]]
        raise ITDAError(f"{sa.label} and {sb.label} disagree on the token at document {int(sa.doc_id[i])} "
                        f"position {int(sa.position[i])} ({sa.token_str[i]!r} vs {sb.token_str[j]!r}), "
                        "so their tokenizers differ; use jaccard_by_span (method 'spans')")
    return ia, ib


def _pairs_spans(sa: AtomSet, sb: AtomSet) -> tuple[np.ndarray, np.ndarray]:
    """Positions (in each set) of span-matched atoms."""
    ids_a, order_a = sa.span_ids()
    ids_b, order_b = sb.span_ids()
    _, ia, ib = np.intersect1d(ids_a, ids_b, assume_unique=True, return_indices=True)
    return order_a[ia], order_b[ib]


def matched_pairs(a: ITDA | AtomSet, b: ITDA | AtomSet, method: str = "auto",
                  ) -> tuple[np.ndarray, np.ndarray, str]:
    """(rows of ``a``'s provenance, rows of ``b``'s provenance, method used) of the atoms the two share."""
    sa, sb = _as_set(a), _as_set(b)
    method = choose_method(sa.config, sb.config, method)
    check_comparable(sa.config, sb.config, method)
    ia, ib = _pairs_keys(sa, sb) if method == "keys" else _pairs_spans(sa, sb)
    order = np.lexsort((sa.position[ia], sa.doc_id[ia]))
    ia, ib = ia[order], ib[order]
    return sa.rows[ia], sb.rows[ib], method


def _index(shared: int, n_a: int, n_b: int) -> float:
    union = n_a + n_b - shared
    return shared / union if union else float("nan")


_PAIR_CACHE: dict[tuple[str, str, str], int] = {}
_PAIR_CACHE_MAX = 65_536


def shared_count(a: ITDA | AtomSet, b: ITDA | AtomSet, method: str = "auto") -> tuple[int, int, int, str]:
    """(shared atoms, |A|, |B|, method used); results are cached by content fingerprint and method."""
    sa, sb = _as_set(a), _as_set(b)
    method = choose_method(sa.config, sb.config, method)
    check_comparable(sa.config, sb.config, method)
    key = (*sorted((sa.fingerprint, sb.fingerprint)), method)
    shared = _PAIR_CACHE.get(key)
    if shared is None:
        ia, _ = _pairs_keys(sa, sb) if method == "keys" else _pairs_spans(sa, sb)
        shared = len(ia)
        if len(_PAIR_CACHE) >= _PAIR_CACHE_MAX:
            _PAIR_CACHE.pop(next(iter(_PAIR_CACHE)))
        _PAIR_CACHE[key] = shared
    return shared, len(sa), len(sb), method


def jaccard(a: ITDA, b: ITDA) -> float:
    """|A n B| / |A u B| of the ``(doc_id, position)`` sets, as in the paper (same tokenizer, corpus, seq_len
    and special-token handling, else :class:`ITDAError`; ``nan`` when both are empty)."""
    shared, n_a, n_b, _ = shared_count(a, b, "keys")
    return _index(shared, n_a, n_b)


def jaccard_by_span(a: ITDA, b: ITDA) -> float:
    """Jaccard index with atoms matched by character spans (for different tokenizers): matches / (|A| + |B| -
    matches); equals :func:`jaccard` when the tokenizers are the same."""
    shared, n_a, n_b, _ = shared_count(a, b, "spans")
    return _index(shared, n_a, n_b)


def span_matches(a: ITDA, b: ITDA) -> pd.DataFrame:
    """The span-matched pairs: columns ``index_a`` and ``index_b`` (atom indices), one row per match."""
    ia, ib, _ = matched_pairs(a, b, "spans")
    return pd.DataFrame({"index_a": ia, "index_b": ib})


def shared_atoms(a: ITDA, b: ITDA, method: str = "auto") -> pd.DataFrame:
    """The atoms ``a`` and ``b`` share, one row each: atom indices in a and b, document, positions, token
    strings and character spans (``_a`` / ``_b``; positions differ only across tokenizers)."""
    ia, ib, _ = matched_pairs(a, b, method)
    pa, pb = a.provenance, b.provenance
    ta, tb = _torch_rows(ia), _torch_rows(ib)
    return pd.DataFrame({
        "index_a": ia,
        "index_b": ib,
        "doc_id": pa.doc_id[ta].numpy(),
        "position_a": pa.position[ta].numpy(),
        "position_b": pb.position[tb].numpy(),
        "token_a": [pa.token_str[i] for i in ia.tolist()],
        "token_b": [pb.token_str[i] for i in ib.tolist()],
        "char_start_a": pa.char_start[ta].numpy(),
        "char_end_a": pa.char_end[ta].numpy(),
        "char_start_b": pb.char_start[tb].numpy(),
        "char_end_b": pb.char_end[tb].numpy(),
    })


def _torch_rows(rows: np.ndarray):  # -> torch.Tensor
    """int64 tensor of numpy row indices (for indexing provenance columns)."""
    import torch

    return torch.from_numpy(np.ascontiguousarray(rows, dtype=np.int64))


# ---- model level ----------------------------------------------------------------------------------------
def model_layers(dicts: Mapping[int, ITDA], layers: Sequence[int] | None = None) -> list[int]:
    """The layers a model-level comparison uses: ``layers`` if given, else every layer but 0 (the paper's
    layers 1..n-1)."""
    if layers is None:
        chosen = [layer for layer in sorted(dicts) if layer != 0]
    else:
        missing = sorted(set(layers) - set(dicts))
        if missing:
            raise ITDAError(f"no dictionary for layer(s) {missing}; have {sorted(dicts)}")
        chosen = sorted(set(layers))
    if not chosen:
        raise ITDAError(f"no layers to compare (have {sorted(dicts)}; layer 0 is left out by default, "
                        "pass layers)")
    return chosen


_MODEL_SETS: dict[tuple[str, ...], AtomSet] = {}


def model_atom_set(dicts: Mapping[int, ITDA], layers: Sequence[int] | None = None) -> AtomSet:
    """The union of the chosen layers' source tokens, as one atom set (the paper's model-level set)."""
    chosen = model_layers(dicts, layers)
    parts = [dicts[layer] for layer in chosen]
    first = parts[0].config
    for other in parts[1:]:
        check_comparable(first, other.config, "keys")
    cache_key = tuple(atom_set(p).fingerprint for p in parts)
    cached = _MODEL_SETS.get(cache_key)
    if cached is not None:
        return cached
    prov = Provenance.concat([p.provenance for p in parts])
    label = f"{first.model_name} L{','.join(map(str, chosen))}" if len(chosen) < 4 else (
        f"{first.model_name} L{chosen[0]}-{chosen[-1]}")
    aset = AtomSet.from_provenance(prov, first, label)
    if len(_MODEL_SETS) > 256:
        _MODEL_SETS.clear()
    _MODEL_SETS[cache_key] = aset
    return aset


def model_jaccard(dicts_a: Mapping[int, ITDA], dicts_b: Mapping[int, ITDA],
                  layers: Sequence[int] | None = None, *, method: str = "auto") -> float:
    """Jaccard of the two models' unions of provenance sets over ``layers`` (default 1..n-1 of each model),
    span-based automatically when the tokenizers differ."""
    sa, sb = model_atom_set(dicts_a, layers), model_atom_set(dicts_b, layers)
    shared, n_a, n_b, _ = shared_count(sa, sb, method)
    return _index(shared, n_a, n_b)
