"""Sets of atoms: the distinct source tokens of a dictionary (or of a model's layers together) that count.

Which atoms count (``JaccardOptions.atoms``): ``evidence`` (default), only the atoms that carry evidence
(``ITDA.evidence``: not the initial atoms picked arbitrarily among rows seen once), or ``all``. A set keeps
its sorted position keys (:mod:`~itda_core.similarity.position_keys`) and computes its span identities
(:mod:`~itda_core.similarity.spans`) on first use; sets are cached on the dictionary object.
"""

from __future__ import annotations

import hashlib
import weakref
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np

from itda_core.config.similarity import ATOM_CHOICES, JaccardOptions
from itda_core.dictionary import ITDA, ITDAConfig
from itda_core.errors import ITDAError
from itda_core.provenance import Provenance
from itda_core.similarity.comparable import check_comparable, dictionary_label
from itda_core.similarity.position_keys import pack_keys
from itda_core.similarity.spans import span_identities

__all__ = ["AtomSet", "atom_set", "atoms_choice", "model_atom_set", "model_layers"]


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
        """(sorted span identities, index into this set's rows for each), computed once (:mod:`.spans`)."""
        if self._span is None:
            self._span = span_identities(self)
        return self._span


_SETS: weakref.WeakKeyDictionary[ITDA, dict[str, tuple[int, AtomSet]]] = weakref.WeakKeyDictionary()


def atoms_choice(atoms: str | JaccardOptions) -> str:
    """Which atoms count (``evidence`` or ``all``), from a choice or a :class:`JaccardOptions`; checked."""
    choice = atoms.atoms if isinstance(atoms, JaccardOptions) else atoms
    if choice not in ATOM_CHOICES:
        raise ITDAError(f"unknown atom choice {choice!r}; use one of {', '.join(ATOM_CHOICES)}")
    return choice


def atom_set(itda: ITDA, atoms: str | JaccardOptions = "evidence") -> AtomSet:
    """The dictionary's distinct source tokens -- with ``atoms="evidence"`` (default) only the atoms that carry
    evidence (:attr:`ITDA.evidence`) -- cached on the object (recomputed if its size changes)."""
    choice = atoms_choice(atoms)
    cached = _SETS.setdefault(itda, {}).get(choice)
    if cached is not None and cached[0] == len(itda):
        return cached[1]
    select = itda.evidence.numpy() if choice == "evidence" else None
    aset = AtomSet.from_provenance(itda.provenance, itda.config, dictionary_label(itda.config), select)
    _SETS[itda][choice] = (len(itda), aset)
    return aset


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
    choice = atoms_choice(atoms)
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
