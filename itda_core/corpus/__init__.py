"""Text corpora, as ordered documents with stable ids: the embedded default corpus, local files, HF datasets.

* :mod:`~itda_core.corpus.documents`: :class:`Document`, :class:`Corpus` (splits, heads) and :func:`corpus_sha256`;
* :mod:`~itda_core.corpus.load`: :func:`load_corpus`, one entry point for every source, and ``.txt``/``.jsonl`` files;
* :mod:`~itda_core.corpus.hub`: Hugging Face datasets (hub ids or local dataset folders);
* :mod:`~itda_core.corpus.embedded`: the default corpus built from the text shipped with gensim, and its cache;
* :mod:`~itda_core.corpus.wikitext`: MediaWiki markup to prose paragraphs;
* :mod:`~itda_core.corpus.chunking`: sentences cut into documents of 400-800 characters.

Importing this package is cheap (no torch, no datasets): ``itda --help`` stays instant.
"""

from __future__ import annotations

from itda_core.corpus.documents import Corpus, Document, corpus_sha256
from itda_core.corpus.load import load_corpus

__all__ = ["Corpus", "Document", "corpus_sha256", "load_corpus"]
