"""The embedded default corpus: real English text shipped inside the ``gensim`` package, built once and cached.

``gensim`` (the ``embedded`` extra, or ``--no-deps``; never imported) carries, in ``gensim/test/test_data/``:

* a shortened Wikipedia dump (MediaWiki XML: 206 pages, 106 articles after skipping redirects), and
* the Lee news corpus (``lee_background.cor``, 300 stories; ``lee.cor``, 50 stories), one story per line.

The Wikipedia markup is stripped (:mod:`itda_core.corpus.wikitext`) and all text is cut at sentence boundaries
into documents of roughly 400-800 characters (:mod:`itda_core.corpus.chunking`). Building takes a few seconds,
so the result is cached as JSON under the cache directory, keyed by the format version and a sha256 of the
source files and of the code that cleans and cuts them (see :func:`load_default_documents`). See
``docs/corpus.md`` for the rules and the resulting statistics.

This module returns ``(source, text)`` pairs; :mod:`itda_core.corpus.load` turns them into documents.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import os
import re
import tempfile
from pathlib import Path

from itda_core.corpus.chunking import chunk_sections, split_sentences
from itda_core.corpus.wikitext import iter_wiki_articles, normalise_space, wikitext_to_sections
from itda_core.errors import ITDAError

# Bump FORMAT_VERSION (and CORPUS_ID with it) whenever the cleaning or chunking rules change: the cached
# document list and every artefact built from the corpus are keyed by it.
FORMAT_VERSION = 1
CORPUS_ID = f"default-v{FORMAT_VERSION}"

WIKI_FILE = "enwiki-latest-pages-articles1.xml-p000000010p000030302-shortened.bz2"
LEE_FILES = ("lee_background.cor", "lee.cor")
SOURCE_FILES = (WIKI_FILE, *LEE_FILES)

_INSTALL_HINT = "pip install --no-deps gensim"

# The code whose output the cache holds: this module and the cleaning and cutting rules beside it.
_CODE_FILES = ("embedded.py", "wikitext.py", "chunking.py")
_HTML_TAG = re.compile(r"</?[a-zA-Z][^<>]*>")  # the Lee stories hold a few tags


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
    """sha256 over the source files and the code that builds the corpus from them (:data:`_CODE_FILES`): the
    cache is rebuilt if gensim's data or the cleaning code changes, even if someone forgets to bump FORMAT_VERSION."""
    digest = hashlib.sha256()
    for name in SOURCE_FILES:
        digest.update(name.encode() + b"\0")
        digest.update(hashlib.sha256((data_dir / name).read_bytes()).digest())
    for name in _CODE_FILES:
        digest.update(hashlib.sha256((Path(__file__).parent / name).read_bytes()).digest())
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
            story = normalise_space(_HTML_TAG.sub("", line))
            if not story:
                continue
            chunks = chunk_sections([[split_sentences(story)]])
            docs.extend((f"{label}:{line_no}#{i}", chunk) for i, chunk in enumerate(chunks))
    return docs
