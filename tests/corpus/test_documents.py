"""Corpus and Document (itda_core.corpus.documents): hashing, lookup, head and the pinned deterministic split."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from itda_core.corpus import Corpus, Document, corpus_sha256, load_corpus
from itda_core.errors import ITDAError
from tests.corpus.helpers import write_text


def _numbered(n: int) -> Corpus:
    docs = [Document(doc_id=i, text=f"document number {i}", source=f"t:{i}") for i in range(n)]
    return Corpus(name="numbers", documents=docs, corpus_id="numbers-v1")


# ---- Corpus: hashing, lookup, head, split ---------------------------------------------------------------


def test_sha256_identifies_content(tmp_path: Path) -> None:
    path = write_text(tmp_path / "lines.txt", "one\ntwo\nthree\n")
    first, second = load_corpus(str(path)), load_corpus(str(path))
    assert first.sha256 == second.sha256 == corpus_sha256(first.documents)
    assert re.fullmatch(r"[0-9a-f]{64}", first.sha256)
    changed = load_corpus(str(write_text(tmp_path / "lines.txt", "one\ntwo\nthree!\n")))
    assert changed.sha256 != first.sha256
    # The doc_id is part of the hash: the same texts under other ids are other content.
    shifted = [Document(d.doc_id + 1, d.text, d.source) for d in first]
    assert corpus_sha256(shifted) != first.sha256
    # Unambiguous: moving text across a document boundary changes the hash.
    a = [Document(0, "ab", "x"), Document(1, "c", "x")]
    b = [Document(0, "a", "x"), Document(1, "bc", "x")]
    assert corpus_sha256(a) != corpus_sha256(b)


def test_indexing_by_position_and_id() -> None:
    corpus = _numbered(10)
    _train, held = corpus.split(0.3, seed=1)
    doc = held[0]
    assert held.by_id(doc.doc_id) is doc
    assert corpus.by_id(doc.doc_id) == doc
    assert corpus[3].doc_id == 3 and len(corpus) == 10 and list(corpus)[9].doc_id == 9
    with pytest.raises(KeyError):
        corpus.by_id(99)


def test_head() -> None:
    corpus = _numbered(10)
    head = corpus.head(4)
    assert [d.doc_id for d in head] == [0, 1, 2, 3]
    assert head.corpus_id == "numbers-v1:head:4" and head.sha256 == corpus_sha256(head.documents)
    full = corpus.head(50)
    assert full.corpus_id == corpus.corpus_id and full.sha256 == corpus.sha256 and len(full) == 10
    assert len(corpus.head(0)) == 0


def test_split_deterministic_disjoint_complete() -> None:
    corpus = _numbered(1000)
    train, held = corpus.split(0.1, seed=0)
    train2, held2 = _numbered(1000).split(0.1, seed=0)
    assert [d.doc_id for d in train] == [d.doc_id for d in train2]
    assert [d.doc_id for d in held] == [d.doc_id for d in held2]
    train_ids, held_ids = {d.doc_id for d in train}, {d.doc_id for d in held}
    assert not train_ids & held_ids
    assert train_ids | held_ids == set(range(1000))
    assert len(held) == 100
    # Ids are kept and the order is preserved within each part.
    assert [d.doc_id for d in train] == sorted(train_ids)
    assert all(corpus.by_id(d.doc_id) == d for d in held)
    # Not simply the last 10%: the held-out part is spread over the corpus.
    assert min(held_ids) < 200 and max(held_ids) > 800
    assert train.corpus_id == "numbers-v1:train:0.1:0" and held.corpus_id == "numbers-v1:held_out:0.1:0"
    assert train.sha256 != held.sha256 != corpus.sha256
    assert train.sha256 == corpus_sha256(train.documents)


def test_split_is_pinned_across_machines() -> None:
    """The split is defined by sha256(seed, doc_id): these ids must never change between versions."""
    _train, held = _numbered(20).split(0.25, seed=0)
    assert [d.doc_id for d in held] == _expected_held_out(20, 0.25, 0)


def _expected_held_out(n: int, fraction: float, seed: int) -> list[int]:
    import hashlib

    keys = sorted(range(n), key=lambda i: (hashlib.sha256(f"itda-split:{seed}:{i}".encode()).digest(), i))
    return sorted(keys[: round(n * fraction)])


def test_split_seed_and_fraction() -> None:
    corpus = _numbered(500)
    held0 = {d.doc_id for d in corpus.split(0.2, seed=0)[1]}
    held1 = {d.doc_id for d in corpus.split(0.2, seed=1)[1]}
    assert held0 != held1 and len(held0) == len(held1) == 100
    assert len(corpus.split(0.5)[1]) == 250
    small_train, small_held = _numbered(3).split(0.01)
    assert len(small_held) == 1 and len(small_train) == 2  # never an empty part
    assert len(_numbered(3).split(0.99)[0]) == 1


@pytest.mark.parametrize("fraction", [0.0, 1.0, -0.1, 1.5])
def test_split_fraction_out_of_range(fraction: float) -> None:
    with pytest.raises(ITDAError, match="between 0 and 1"):
        _numbered(10).split(fraction)


def test_split_too_small() -> None:
    with pytest.raises(ITDAError, match="at least 2"):
        _numbered(1).split(0.5)


def test_split_of_a_subset_keeps_ids() -> None:
    corpus = _numbered(100)
    train, _held = corpus.split(0.2)
    inner_train, inner_held = train.split(0.25)
    assert {d.doc_id for d in inner_train} | {d.doc_id for d in inner_held} == {d.doc_id for d in train}
    assert inner_held.corpus_id == "numbers-v1:train:0.2:0:held_out:0.25:0"
