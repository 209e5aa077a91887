"""The embedded default corpus (itda_core.corpus.embedded): its content, determinism, and the atomic cache."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from itda_core.corpus import Corpus, chunking, embedded, load_corpus
from itda_core.errors import ITDAError

# ---- The embedded default corpus -----------------------------------------------------------------------

_LEFTOVERS = re.compile(
    r"\{\{|\}\}|\[\[|\]\]|\||<ref|</?[a-z]+[ >/]|&[a-z]+;|&#\d+;|''|thumb\||\d+px\b|https?://"
    r"|\(\s*\)|\(\s*[,;]|  |\x00"
)


@pytest.fixture(scope="module")
def default_corpus() -> Corpus:
    return load_corpus("default")  # cached under $ITDA_CACHE_DIR/corpus or ~/.cache/itda/corpus


def test_default_corpus_content(default_corpus: Corpus) -> None:
    corpus = default_corpus
    assert corpus.corpus_id == embedded.CORPUS_ID == "default-v1" and corpus.name == "default"
    assert len(corpus) > 1000
    assert [d.doc_id for d in corpus] == list(range(len(corpus)))
    assert sum(len(d.text) for d in corpus) > 2_000_000  # ~0.7M tokens at ~4 characters per token
    bad = [(d.source, m.group()) for d in corpus if (m := _LEFTOVERS.search(d.text))]
    assert not bad, bad[:10]
    for doc in corpus:
        assert re.fullmatch(r"(enwiki:.+|lee_background:\d+|lee:\d+)#\d+", doc.source), doc.source
        assert doc.text == doc.text.strip() and len(doc.text.split()) >= 15, doc.source
        assert len(doc.text) <= chunking.MAX_CHARS + 1, doc.source
    lengths = sorted(len(d.text) for d in corpus)
    assert chunking.MIN_CHARS <= lengths[len(lengths) // 2] <= chunking.MAX_CHARS
    assert sum(n >= 300 for n in lengths) > 0.95 * len(lengths)
    # Order: Wikipedia first, then lee_background, then lee.
    kinds = [d.source.split(":", 1)[0] for d in corpus]
    first = {k: kinds.index(k) for k in ("enwiki", "lee_background", "lee")}
    last = {k: len(kinds) - 1 - kinds[::-1].index(k) for k in first}
    assert last["enwiki"] < first["lee_background"] and last["lee_background"] < first["lee"]
    assert corpus[0].source == "enwiki:Anarchism#0" and corpus[0].text.startswith("Anarchism is a political")


def test_default_corpus_deterministic(default_corpus: Corpus) -> None:
    again = load_corpus("default")
    assert again.sha256 == default_corpus.sha256
    train, held = default_corpus.split()
    assert train.corpus_id == "default-v1:train:0.1:0"
    assert [d.doc_id for d in held] == [d.doc_id for d in again.split()[1]]


def test_default_corpus_build_matches_cache(default_corpus: Corpus, tmp_path: Path) -> None:
    """Build from scratch (the slow test): the fresh build equals the cached one and writes a cache file."""
    fresh = load_corpus("default", cache_dir=tmp_path)
    assert fresh.sha256 == default_corpus.sha256
    assert [p.name for p in tmp_path.iterdir()] == [_cache_file(tmp_path).name]


def test_default_max_documents(default_corpus: Corpus) -> None:
    head = load_corpus("default", max_documents=50)
    assert head.documents == default_corpus.documents[:50]
    assert head.corpus_id == "default-v1:head:50"


# ---- The default corpus cache (with a stub build, so it is fast) --------------------------------------


@pytest.fixture
def stub_build(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    calls: list[int] = []

    def build(data_dir: Path | None = None) -> list[tuple[str, str]]:
        calls.append(1)
        return [("stub:1#0", "stub text one"), ("stub:2#0", "stub text two")]

    monkeypatch.setattr(embedded, "build_default_documents", build)
    return calls


def _cache_file(cache_dir: Path) -> Path:
    digest = embedded.source_sha256(embedded.gensim_data_dir())
    return embedded.cache_path(cache_dir, digest)


def test_cache_written_and_reused(tmp_path: Path, stub_build: list[int]) -> None:
    first = load_corpus("default", cache_dir=tmp_path)
    assert [d.text for d in first] == ["stub text one", "stub text two"] and len(stub_build) == 1
    assert _cache_file(tmp_path).is_file()
    assert [p.name for p in tmp_path.iterdir()] == [_cache_file(tmp_path).name]  # no temp files left
    second = load_corpus("default", cache_dir=tmp_path)
    assert second.sha256 == first.sha256 and len(stub_build) == 1


_GARBAGE = [b"", b"{not json", b'{"format": 1, "key": "x", "documents": [["a", "b"]]}', b"\xff" * 50, b"[]"]


@pytest.mark.parametrize("garbage", _GARBAGE)
def test_corrupt_cache_is_rebuilt(tmp_path: Path, stub_build: list[int], garbage: bytes) -> None:
    path = _cache_file(tmp_path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(garbage)
    corpus = load_corpus("default", cache_dir=tmp_path)
    assert len(stub_build) == 1 and len(corpus) == 2
    payload = json.loads(path.read_text(encoding="utf-8"))
    assert payload["documents"] == [["stub:1#0", "stub text one"], ["stub:2#0", "stub text two"]]


def test_cache_env_var(tmp_path: Path, stub_build: list[int], monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ITDA_CACHE_DIR", str(tmp_path))
    load_corpus("default")
    assert _cache_file(tmp_path / "corpus").is_file()


def test_cache_write_is_atomic(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A write that dies half-way leaves the previous cache file intact and no temp file behind."""
    path = tmp_path / "c.json"
    embedded._write_cache_atomic(path, "k", [("s", "old")])
    import os

    def boom(src: object, dst: object) -> None:
        raise OSError("disk full")

    monkeypatch.setattr(os, "replace", boom)
    embedded._write_cache_atomic(path, "k", [("s", "new")])
    assert embedded._read_cache(path, "k") == [("s", "old")]
    assert [p.name for p in tmp_path.iterdir()] == ["c.json"]


def test_missing_gensim(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(embedded.importlib.util, "find_spec", lambda name: None)
    with pytest.raises(ITDAError, match="pip install --no-deps gensim"):
        load_corpus("default")
