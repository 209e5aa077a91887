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

Which atoms count and which index (:class:`JaccardOptions`): by default only the atoms that carry evidence
(``ITDA.evidence``: not the initial atoms picked arbitrarily among rows seen once) and the paper's raw
index |A n B| / |A u B|, the pair that matched layers best in the 5-seed benchmark (docs/benchmarks.md).
Optionally the index corrected for chance: ``(J - J0) / (Jmax - J0)``, where J0 is the Jaccard of two sets
of these sizes at the overlap expected when both are drawn at random from the N training tokens
(``a * b / N``) and Jmax = min(a, b) / max(a, b) the largest Jaccard two sets of these sizes can have. 0
means no more shared than chance, 1 the smaller set inside the larger. See docs/similarity.md.
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

from itda_core.config.similarity import (  # the options live apart from torch (the CLI's help reads them)
    ATOM_CHOICES,
    DEFAULT_OPTIONS,
    INDEX_CHOICES,
    MAX_MIN_ATOMS,
    JaccardOptions,
    expected_shared,
    jaccard_index,
)
from itda_core.dictionary import ITDA, ITDAConfig
from itda_core.errors import ITDAError
from itda_core.provenance import Provenance

__all__ = [
    "ATOM_CHOICES",
    "DEFAULT_OPTIONS",
    "INDEX_CHOICES",
    "MAX_MIN_ATOMS",
    "POSITION_BITS",
    "AtomSet",
    "JaccardOptions",
    "atom_set",
    "check_comparable",
    "choose_method",
    "expected_shared",
    "is_partial_token",
    "jaccard",
    "jaccard_by_span",
    "jaccard_index",
    "matched_pairs",
    "model_atom_set",
    "model_jaccard",
    "model_layers",
    "pack_keys",
    "pair_universe",
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
    universe: int = 0  # the training tokens the atoms were drawn from (0: unknown), for the chance correction
    _span: tuple[np.ndarray, np.ndarray] | None = field(default=None, repr=False)

    def __len__(self) -> int:
        return len(self.keys)

    @classmethod
    def from_provenance(cls, prov: Provenance, config: ITDAConfig, label: str,
                        select: np.ndarray | None = None) -> AtomSet:
        """Distinct ``(doc_id, position)`` rows of ``prov`` (first occurrence kept), sorted by key; with
        ``select`` (a bool mask over the rows) only those rows count, and ``rows`` still index ``prov``."""
        raw = pack_keys(prov.doc_id.numpy(), prov.position.numpy())
        kept = np.arange(len(raw)) if select is None else np.flatnonzero(np.asarray(select, dtype=bool))
        keys, first = np.unique(raw[kept], return_index=True)
        rows = kept[first]
        cols = {c: getattr(prov, c).numpy()[rows] for c in ("doc_id", "position", "token_id", "char_start",
                                                              "char_end")}
        strs = [prov.token_str[i] for i in rows.tolist()]
        digest = hashlib.sha1()
        for c in ("doc_id", "position", "token_id", "char_start", "char_end"):
            digest.update(np.ascontiguousarray(cols[c]).tobytes())
        digest.update("\x00".join(strs).encode("utf-8", "surrogatepass"))
        return cls(config, label, rows.astype(np.int64), keys, token_str=strs, fingerprint=digest.hexdigest(),
                   universe=int(config.tokens_seen or 0), **cols)

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


_SETS: weakref.WeakKeyDictionary[ITDA, dict[str, tuple[int, AtomSet]]] = weakref.WeakKeyDictionary()


def _label(config: ITDAConfig) -> str:
    return f"{config.model_name} L{config.layer}"


def _atoms_choice(atoms: str | JaccardOptions) -> str:
    choice = atoms.atoms if isinstance(atoms, JaccardOptions) else atoms
    if choice not in ATOM_CHOICES:
        raise ITDAError(f"unknown atom choice {choice!r}; use one of {', '.join(ATOM_CHOICES)}")
    return choice


def atom_set(itda: ITDA, atoms: str | JaccardOptions = "evidence") -> AtomSet:
    """The dictionary's distinct source tokens -- with ``atoms="evidence"`` (default) only the atoms that carry
    evidence (:attr:`ITDA.evidence`) -- cached on the object (recomputed if its size changes)."""
    choice = _atoms_choice(atoms)
    cached = _SETS.setdefault(itda, {}).get(choice)
    if cached is not None and cached[0] == len(itda):
        return cached[1]
    select = itda.evidence.numpy() if choice == "evidence" else None
    aset = AtomSet.from_provenance(itda.provenance, itda.config, _label(itda.config), select)
    _SETS[itda][choice] = (len(itda), aset)
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


def _check_same_documents(a: ITDAConfig, b: ITDAConfig, la: str, lb: str) -> None:
    """Refuse two dictionaries trained on different documents of one corpus (e.g. token budgets that end in
    different documents for different tokenizers): their atoms were drawn from different text."""
    if a.documents_sha256 and b.documents_sha256:
        if a.documents_sha256 != b.documents_sha256:
            raise ITDAError(f"{la} and {lb} were trained on different documents of the corpus ({a.documents_seen:,} "
                            f"and {b.documents_seen:,} whole documents); Jaccard needs the same text for both: train "
                            "both with the same --max-documents")
        return
    if a.tokens_seen == b.tokens_seen and same_tokenizer(a, b):
        return  # the same budget with the same tokenizer: the same documents
    raise ITDAError(f"cannot tell whether {la} and {lb} saw the same documents (one was built before itda recorded "
                    f"them; {a.tokens_seen:,} and {b.tokens_seen:,} tokens); retrain both with the same "
                    "--max-documents (or rebuild the store)")


def check_comparable(a: ITDAConfig, b: ITDAConfig, method: str = "keys") -> None:
    """Raise :class:`ITDAError` (one line) unless provenance of ``a`` and ``b`` can be compared by ``method``.

    Both: the same corpus (sha256 when both record one, else corpus_id) and the same training documents
    (``documents_sha256``; for dictionaries that do not record it, the same tokenizer and token count). ``keys``
    also needs the same tokenizer, ``seq_len`` and ``skip_special_tokens``."""
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
    _check_same_documents(a, b, la, lb)
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
def _as_set(x: ITDA | AtomSet, atoms: str | JaccardOptions = "evidence") -> AtomSet:
    return x if isinstance(x, AtomSet) else atom_set(x, atoms)


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
                  atoms: str | JaccardOptions = "evidence") -> tuple[np.ndarray, np.ndarray, str]:
    """(rows of ``a``'s provenance, rows of ``b``'s provenance, method used) of the atoms the two share
    (among the atoms that count, ``atoms``, when given dictionaries)."""
    sa, sb = _as_set(a, atoms), _as_set(b, atoms)
    method = choose_method(sa.config, sb.config, method)
    check_comparable(sa.config, sb.config, method)
    ia, ib = _pairs_keys(sa, sb) if method == "keys" else _pairs_spans(sa, sb)
    order = np.lexsort((sa.position[ia], sa.doc_id[ia]))
    ia, ib = ia[order], ib[order]
    return sa.rows[ia], sb.rows[ib], method


def pair_universe(sa: AtomSet, sb: AtomSet) -> int:
    """The token count the chance model draws from: the larger of the two sets' training tokens (the same
    number for one tokenizer; across tokenizers the finer one, whose token ends include the coarser one's
    almost everywhere); 0 when either is unknown."""
    return max(sa.universe, sb.universe) if sa.universe > 0 and sb.universe > 0 else 0


_PAIR_CACHE: dict[tuple[str, str, str], int] = {}
_PAIR_CACHE_MAX = 65_536


def shared_count(a: ITDA | AtomSet, b: ITDA | AtomSet, method: str = "auto",
                 atoms: str | JaccardOptions = "evidence") -> tuple[int, int, int, str]:
    """(shared atoms, |A|, |B|, method used) among the atoms that count (``atoms``, when given dictionaries);
    results are cached by content fingerprint and method."""
    sa, sb = _as_set(a, atoms), _as_set(b, atoms)
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


def _pair_value(a: ITDA | AtomSet, b: ITDA | AtomSet, method: str, options: JaccardOptions) -> float:
    sa, sb = _as_set(a, options), _as_set(b, options)
    shared, n_a, n_b, _ = shared_count(sa, sb, method)
    return options.value(shared, n_a, n_b, pair_universe(sa, sb))


def jaccard(a: ITDA, b: ITDA, options: JaccardOptions = DEFAULT_OPTIONS) -> float:
    """Jaccard of the ``(doc_id, position)`` sets (same tokenizer, corpus, seq_len and special-token handling,
    else :class:`ITDAError`; ``nan`` when undefined). ``options`` say which atoms count and which index; the
    paper's number is ``JaccardOptions(atoms="all", index="raw")``."""
    return _pair_value(a, b, "keys", options)


def jaccard_by_span(a: ITDA, b: ITDA, options: JaccardOptions = DEFAULT_OPTIONS) -> float:
    """:func:`jaccard` with atoms matched by character spans (for different tokenizers); equals it when the
    tokenizers are the same."""
    return _pair_value(a, b, "spans", options)


def span_matches(a: ITDA, b: ITDA, atoms: str | JaccardOptions = "evidence") -> pd.DataFrame:
    """The span-matched pairs: columns ``index_a`` and ``index_b`` (atom indices), one row per match."""
    ia, ib, _ = matched_pairs(a, b, "spans", atoms)
    return pd.DataFrame({"index_a": ia, "index_b": ib})


def shared_atoms(a: ITDA, b: ITDA, method: str = "auto", atoms: str | JaccardOptions = "evidence") -> pd.DataFrame:
    """The atoms ``a`` and ``b`` share (among those that count, ``atoms``), one row each: atom indices in a and
    b, document, positions, token strings and character spans (``_a`` / ``_b``; positions differ only across
    tokenizers)."""
    ia, ib, _ = matched_pairs(a, b, method, atoms)
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


def model_atom_set(dicts: Mapping[int, ITDA], layers: Sequence[int] | None = None,
                   atoms: str | JaccardOptions = "evidence") -> AtomSet:
    """The union of the chosen layers' source tokens (those that count, ``atoms``), as one atom set (the
    paper's model-level set)."""
    choice = _atoms_choice(atoms)
    chosen = model_layers(dicts, layers)
    parts = [dicts[layer] for layer in chosen]
    first = parts[0].config
    for other in parts[1:]:
        check_comparable(first, other.config, "keys")
    cache_key = (choice, *(atom_set(p, choice).fingerprint for p in parts))
    cached = _MODEL_SETS.get(cache_key)
    if cached is not None:
        return cached
    prov = Provenance.concat([p.provenance for p in parts])
    label = f"{first.model_name} L{','.join(map(str, chosen))}" if len(chosen) < 4 else (
        f"{first.model_name} L{chosen[0]}-{chosen[-1]}")
    select = np.concatenate([p.evidence.numpy() for p in parts]) if choice == "evidence" else None
    aset = AtomSet.from_provenance(prov, first, label, select)
    if len(_MODEL_SETS) > 256:
        _MODEL_SETS.clear()
    _MODEL_SETS[cache_key] = aset
    return aset


def model_jaccard(dicts_a: Mapping[int, ITDA], dicts_b: Mapping[int, ITDA],
                  layers: Sequence[int] | None = None, *, method: str = "auto",
                  options: JaccardOptions = DEFAULT_OPTIONS) -> float:
    """Jaccard of the two models' unions of provenance sets over ``layers`` (default 1..n-1 of each model),
    span-based automatically when the tokenizers differ."""
    sa, sb = model_atom_set(dicts_a, layers, options), model_atom_set(dicts_b, layers, options)
    return _pair_value(sa, sb, method, options)
