"""What a corpus is: ordered :class:`Document` objects with stable ids, a corpus id and a content hash.

A :class:`Corpus` is an ordered list of :class:`Document` objects with a stable ``doc_id`` (the index in the
full corpus order, never renumbered by :meth:`Corpus.split` or :meth:`Corpus.head`), a ``corpus_id`` naming
the source and its version, and a ``sha256`` identifying the exact content, so that dictionaries and
activations built from a corpus can record precisely what they were built from.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

from itda_core.errors import ITDAError


@dataclass(frozen=True)
class Document:
    """One document: ``doc_id`` is its index in the full corpus order (stable across splits and filters),
    ``source`` a human-readable origin such as ``enwiki:Anarchism#3`` or ``notes.txt:12``."""

    doc_id: int
    text: str
    source: str


def corpus_sha256(documents: Iterable[Document]) -> str:
    """sha256 over ``(doc_id, text)`` of all documents in order (length-prefixed, so it is unambiguous)."""
    digest = hashlib.sha256()
    for doc in documents:
        data = doc.text.encode("utf-8")
        digest.update(f"{doc.doc_id}:{len(data)}:".encode())
        digest.update(data)
    return digest.hexdigest()


@dataclass
class Corpus:
    """An ordered collection of documents. ``corpus[i]`` is the i-th document by position; use
    :meth:`by_id` to look one up by ``doc_id``. ``sha256`` is computed from the documents when left empty."""

    name: str
    documents: list[Document]
    corpus_id: str
    sha256: str = ""
    _index: dict[int, int] | None = field(default=None, init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if not self.sha256:
            self.sha256 = corpus_sha256(self.documents)

    def __len__(self) -> int:
        return len(self.documents)

    def __iter__(self) -> Iterator[Document]:
        return iter(self.documents)

    def __getitem__(self, i: int) -> Document:
        return self.documents[i]

    @property
    def texts(self) -> list[str]:
        """The document texts in order."""
        return [doc.text for doc in self.documents]

    def by_id(self, doc_id: int) -> Document:
        """The document with this ``doc_id`` (KeyError if it is not here, e.g. it is in the other split)."""
        if self._index is None or len(self._index) != len(self.documents):
            self._index = {doc.doc_id: i for i, doc in enumerate(self.documents)}
        try:
            return self.documents[self._index[doc_id]]
        except KeyError:
            raise KeyError(f"no document with doc_id {doc_id} in corpus {self.corpus_id!r}") from None

    def head(self, n: int) -> Corpus:
        """The first ``n`` documents (all of them if ``n >= len(self)``, keeping this corpus's identity)."""
        if n < 0:
            raise ITDAError(f"head(n) needs n >= 0, got {n}")
        if n >= len(self.documents):
            return Corpus(self.name, list(self.documents), self.corpus_id, self.sha256)
        return Corpus(f"{self.name}[:{n}]", self.documents[:n], f"{self.corpus_id}:head:{n}")

    def split(self, held_out_fraction: float = 0.1, seed: int = 0) -> tuple[Corpus, Corpus]:
        """Deterministic ``(train, held_out)`` split. Documents keep their ``doc_id`` and their order.

        Each document gets the key sha256(seed, doc_id); the ``round(n * held_out_fraction)`` documents with
        the smallest keys (at least one, and at least one left for training) are held out. The result is the
        same on every machine and Python version (no ``hash()``, no RNG stream), and a document's key does not
        depend on the rest of the corpus."""
        if not 0.0 < held_out_fraction < 1.0:
            raise ITDAError(f"held_out_fraction must be strictly between 0 and 1, got {held_out_fraction}")
        n = len(self.documents)
        if n < 2:
            raise ITDAError(f"corpus {self.corpus_id!r} has {n} document(s): need at least 2 to split")
        n_held = min(n - 1, max(1, round(n * held_out_fraction)))

        def key(doc: Document) -> tuple[bytes, int]:
            return hashlib.sha256(f"itda-split:{seed}:{doc.doc_id}".encode()).digest(), doc.doc_id

        held_ids = {doc.doc_id for doc in sorted(self.documents, key=key)[:n_held]}
        train_docs = [doc for doc in self.documents if doc.doc_id not in held_ids]
        held_docs = [doc for doc in self.documents if doc.doc_id in held_ids]
        tag = f"{held_out_fraction:g}:{seed}"
        return (
            Corpus(f"{self.name}:train", train_docs, f"{self.corpus_id}:train:{tag}"),
            Corpus(f"{self.name}:held_out", held_docs, f"{self.corpus_id}:held_out:{tag}"),
        )


def make_corpus(
    name: str, corpus_id: str, pairs: list[tuple[str, str]], max_documents: int | None
) -> Corpus:
    """Number the ``(source, text)`` pairs 0..n-1 and wrap them in a Corpus; if ``max_documents`` cuts the
    list, the id gets ``:head:<n>`` so that it never collides with the full corpus's id."""
    if max_documents is not None and len(pairs) > max_documents:
        pairs = pairs[:max_documents]
        corpus_id = f"{corpus_id}:head:{max_documents}"
    docs = [Document(doc_id=i, text=text, source=source) for i, (source, text) in enumerate(pairs)]
    return Corpus(name=name, documents=docs, corpus_id=corpus_id)


def text_of(record: dict[str, Any], text_field: str, where: str) -> str:
    """``record[text_field]`` as a string (None counts as empty), or a one-line ITDAError."""
    if text_field not in record:
        keys = ", ".join(sorted(map(str, record))[:10]) or "none"
        raise ITDAError(
            f"{where} has no {text_field!r} field (fields: {keys}): pass text_field=... (--text-field)"
        )
    text = record[text_field]
    if text is None:
        return ""
    if not isinstance(text, str):
        raise ITDAError(
            f"{where}: field {text_field!r} is {type(text).__name__}, not text: pick a text field"
        )
    return text
