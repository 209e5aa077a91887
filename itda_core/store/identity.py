"""What identifies a stored dictionary and what it refers to: the train / held-out split behind a training
corpus id, a tokenizer's id (models sharing a tokenizer share stored tokens), and the option and data keys
that tell two dictionaries of one (model, layer, corpus) apart.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import re
import weakref
from dataclasses import dataclass
from typing import Any

from itda_core.corpus import Corpus
from itda_core.dictionary import ITDAConfig
from itda_core.store.connection import StoreError
from itda_core.store.schema import data_key

_SPLIT_ID = re.compile(r"^(?P<base>.+):(?P<part>train|held_out):(?P<frac>[^:]+):(?P<seed>-?\d+)$")


@dataclass(frozen=True)
class SplitInfo:
    """Which full corpus a dictionary was trained on, and with which train/held-out split (None: no split)."""

    corpus_id: str
    held_out_fraction: float | None
    seed: int | None


def split_info(config: ITDAConfig, corpus: Corpus) -> SplitInfo:
    """Check that ``corpus`` is the full corpus behind ``config.corpus_id`` and return the split used."""
    match = _SPLIT_ID.match(config.corpus_id)
    if match is None and config.corpus_id == corpus.corpus_id:  # trained on a whole, unsplit corpus
        if config.corpus_sha256 and config.corpus_sha256 != corpus.sha256:
            raise StoreError(
                f"corpus {corpus.corpus_id} has other contents than the one this dictionary was "
                "trained on (sha256 differs)"
            )
        return SplitInfo(corpus.corpus_id, None, None)
    if match is None or match["base"] != corpus.corpus_id:
        raise StoreError(
            f"the dictionary was trained on corpus {config.corpus_id!r} but the corpus given is "
            f"{corpus.corpus_id!r}; pass the full corpus (before .split()) it was split from"
        )
    if match["part"] != "train":
        raise StoreError(
            f"the dictionary was trained on the held-out part {config.corpus_id!r}; the store "
            "expects dictionaries trained on the train part"
        )
    frac, seed = float(match["frac"]), int(match["seed"])
    if config.corpus_sha256:
        train, _ = corpus.split(frac, seed)
        if train.sha256 != config.corpus_sha256:
            raise StoreError(
                f"corpus {corpus.corpus_id} has other contents than the one this dictionary was "
                "trained on (sha256 of the train split differs)"
            )
    return SplitInfo(corpus.corpus_id, frac, seed)


_TOKENIZER_IDS: weakref.WeakKeyDictionary[Any, str] = weakref.WeakKeyDictionary()


def tokenizer_id(tokenizer: Any) -> str:
    """A stable id of a tokenizer's full definition (vocabulary, merges, normaliser, templates): models that
    share a tokenizer share stored tokens. Computed once per tokenizer object (Gemma's is 30 MB of JSON)."""
    try:
        return _TOKENIZER_IDS[tokenizer]
    except (KeyError, TypeError):
        pass
    backend = getattr(tokenizer, "backend_tokenizer", None)
    payload = backend.to_str() if backend is not None else repr(sorted(tokenizer.get_vocab().items()))
    tok_id = f"tok-{hashlib.sha256(payload.encode('utf-8')).hexdigest()[:16]}"
    with contextlib.suppress(TypeError):
        _TOKENIZER_IDS[tokenizer] = tok_id
    return tok_id


def options_key(config: ITDAConfig) -> str:
    """The training options that make two dictionaries of one (model, layer, corpus) different ones (with
    :func:`dictionary_data_key`, what they were trained on, they identify a dictionary in the store)."""
    opts = {
        "site": config.site,
        "k": config.k,
        "threshold": float(f"{config.threshold:.6g}"),
        "seq_len": config.seq_len,
        "max_size": config.max_size,
        "dedupe": config.dedupe,
        "skip_special_tokens": config.skip_special_tokens,
    }
    if config.init_rule:  # recorded since the tie rule became an option; older keys stay as they were
        opts["init_rule"] = config.init_rule
    return json.dumps(opts, sort_keys=True)


def dictionary_data_key(config: ITDAConfig) -> str:
    """What the dictionary was trained on (tokens, whole documents, which documents): the store's data_key."""
    return data_key(dataclasses.asdict(config))
