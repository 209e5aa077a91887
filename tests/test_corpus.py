"""Corpus loading (txt, jsonl, Hugging Face folder, embedded default), splits, hashes, the default cache."""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path

import pytest

from itda_core import embedded_corpus
from itda_core.corpus import Corpus, Document, corpus_sha256, load_corpus
from itda_core.errors import ITDAError


def _write(path: Path, text: str) -> Path:
    path.write_text(text, encoding="utf-8")
    return path


def _one_line_error(excinfo: pytest.ExceptionInfo[ITDAError]) -> str:
    message = str(excinfo.value)
    assert "\n" not in message and message
    return message


def _numbered(n: int) -> Corpus:
    docs = [Document(doc_id=i, text=f"document number {i}", source=f"t:{i}") for i in range(n)]
    return Corpus(name="numbers", documents=docs, corpus_id="numbers-v1")


# ---- .txt -----------------------------------------------------------------------------------------------


def test_txt_one_document_per_line(tmp_path: Path) -> None:
    # Without a blank line between texts, every line is a document.
    path = _write(tmp_path / "lines.txt", "first line\n  second line  \nthird line\n")
    corpus = load_corpus(str(path))
    assert [d.text for d in corpus] == ["first line", "second line", "third line"]
    assert [d.doc_id for d in corpus] == [0, 1, 2]
    assert [d.source for d in corpus] == ["lines.txt:1", "lines.txt:2", "lines.txt:3"]
    assert corpus.corpus_id == "file:lines.txt"
    assert corpus.name == str(path)


def test_txt_blank_line_blocks(tmp_path: Path) -> None:
    text = "\n\nPara one\ncontinues here.\n\n\n   \nPara two.\n\nPara three\n\n"
    corpus = load_corpus(str(_write(tmp_path / "blocks.txt", text)))
    assert [d.text for d in corpus] == ["Para one\ncontinues here.", "Para two.", "Para three"]
    assert [d.source for d in corpus] == ["blocks.txt:3", "blocks.txt:8", "blocks.txt:10"]
    assert [d.doc_id for d in corpus] == [0, 1, 2]


def test_txt_max_documents_marks_the_id(tmp_path: Path) -> None:
    path = _write(tmp_path / "lines.txt", "a\nb\nc\n")
    head = load_corpus(str(path), max_documents=2)
    assert [d.text for d in head] == ["a", "b"]
    assert head.corpus_id == "file:lines.txt:head:2"
    assert load_corpus(str(path), max_documents=5).corpus_id == "file:lines.txt"
    with pytest.raises(ITDAError):
        load_corpus(str(path), max_documents=0)


@pytest.mark.parametrize("content", ["", "\n\n   \n"])
def test_empty_file(tmp_path: Path, content: str) -> None:
    with pytest.raises(ITDAError) as excinfo:
        load_corpus(str(_write(tmp_path / "empty.txt", content)))
    assert "no (non-empty) documents" in _one_line_error(excinfo)


def test_missing_file(tmp_path: Path) -> None:
    for name in ("missing.txt", "missing.jsonl"):
        with pytest.raises(ITDAError) as excinfo:
            load_corpus(str(tmp_path / name))
        assert "not found" in _one_line_error(excinfo)
    with pytest.raises(ITDAError) as excinfo:
        load_corpus("./no/such/folder")
    assert "not found" in _one_line_error(excinfo)


@pytest.mark.parametrize("name", ["data.csv", "notes.md", "noext"])
def test_unknown_extension(tmp_path: Path, name: str) -> None:
    path = _write(tmp_path / name, "some text\n")
    with pytest.raises(ITDAError) as excinfo:
        load_corpus(str(path))
    message = _one_line_error(excinfo)
    assert ".txt" in message and ".jsonl" in message


def test_unknown_extension_of_missing_file() -> None:
    with pytest.raises(ITDAError, match=r"unsupported corpus file type '\.csv'"):
        load_corpus("nowhere/data.csv")


def test_hub_options_rejected_for_files(tmp_path: Path) -> None:
    path = _write(tmp_path / "lines.txt", "a\n")
    with pytest.raises(ITDAError, match="only apply to Hugging Face"):
        load_corpus(str(path), split="validation")
    with pytest.raises(ITDAError, match="only apply to Hugging Face"):
        load_corpus(str(path), config="en")


def test_not_utf8(tmp_path: Path) -> None:
    path = tmp_path / "latin1.txt"
    path.write_bytes("caf\xe9\n".encode("latin-1"))
    with pytest.raises(ITDAError, match="UTF-8"):
        load_corpus(str(path))


# ---- .jsonl ---------------------------------------------------------------------------------------------


def _jsonl(path: Path, rows: list[object]) -> Path:
    return _write(path, "\n".join(json.dumps(r) for r in rows) + "\n")


def test_jsonl(tmp_path: Path) -> None:
    rows = [{"text": "alpha", "x": 1}, {"text": "  "}, {"text": None}, {"text": "beta"}]
    corpus = load_corpus(str(_jsonl(tmp_path / "d.jsonl", rows)))
    expected = [(0, "alpha", "d.jsonl:1"), (1, "beta", "d.jsonl:4")]
    assert [(d.doc_id, d.text, d.source) for d in corpus] == expected
    assert corpus.corpus_id == "file:d.jsonl"


def test_jsonl_custom_field_and_blank_lines(tmp_path: Path) -> None:
    path = _write(tmp_path / "d.jsonl", '{"body": "one"}\n\n{"body": "two", "text": "ignored"}\n')
    corpus = load_corpus(str(path), text_field="body")
    assert [d.text for d in corpus] == ["one", "two"]
    assert [d.source for d in corpus] == ["d.jsonl:1", "d.jsonl:3"]


def test_jsonl_bad_line_names_line_number(tmp_path: Path) -> None:
    path = _write(tmp_path / "d.jsonl", '{"text": "ok"}\n{"text": "ok"}\n{"text": oops}\n')
    with pytest.raises(ITDAError) as excinfo:
        load_corpus(str(path))
    assert "line 3" in _one_line_error(excinfo)
    assert excinfo.value.__cause__ is not None


def test_jsonl_not_an_object(tmp_path: Path) -> None:
    with pytest.raises(ITDAError, match="line 2 is not a JSON object"):
        load_corpus(str(_write(tmp_path / "d.jsonl", '{"text": "ok"}\n["a list"]\n')))


def test_jsonl_missing_field(tmp_path: Path) -> None:
    path = _jsonl(tmp_path / "d.jsonl", [{"text": "ok"}, {"content": "no text key"}])
    with pytest.raises(ITDAError) as excinfo:
        load_corpus(str(path))
    message = _one_line_error(excinfo)
    assert "line 2" in message and "'text'" in message and "content" in message and "text_field" in message


def test_jsonl_non_string_field(tmp_path: Path) -> None:
    with pytest.raises(ITDAError, match="int, not text"):
        load_corpus(str(_jsonl(tmp_path / "d.jsonl", [{"text": 5}])))


# ---- Corpus: hashing, lookup, head, split ---------------------------------------------------------------


def test_sha256_identifies_content(tmp_path: Path) -> None:
    path = _write(tmp_path / "lines.txt", "one\ntwo\nthree\n")
    first, second = load_corpus(str(path)), load_corpus(str(path))
    assert first.sha256 == second.sha256 == corpus_sha256(first.documents)
    assert re.fullmatch(r"[0-9a-f]{64}", first.sha256)
    changed = load_corpus(str(_write(tmp_path / "lines.txt", "one\ntwo\nthree!\n")))
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


# ---- Hugging Face datasets (local folder, no network) --------------------------------------------------


def test_hub_local_folder(tmp_path: Path) -> None:
    pytest.importorskip("datasets")
    folder = tmp_path / "ds"
    folder.mkdir()
    rows = [{"text": "first", "n": 1}, {"text": ""}, {"text": "third"}, {"text": "fourth"}]
    _jsonl(folder / "train.jsonl", rows)
    corpus = load_corpus(str(folder), cache_dir=tmp_path / "cache")
    assert [d.text for d in corpus] == ["first", "third", "fourth"]
    assert [d.doc_id for d in corpus] == [0, 1, 2]
    assert corpus.documents[1].source == f"hf:{folder}:train:2"
    assert corpus.corpus_id == f"hf:{folder}:train" and corpus.name == f"hf:{folder}"

    head = load_corpus(str(folder), cache_dir=tmp_path / "cache", max_documents=2)
    assert [d.text for d in head] == ["first", "third"]
    assert head.corpus_id == f"hf:{folder}:train:head:2"

    with pytest.raises(ITDAError) as excinfo:
        load_corpus(str(folder), cache_dir=tmp_path / "cache", text_field="body")
    assert "'body'" in _one_line_error(excinfo)
    with pytest.raises(ITDAError) as excinfo:
        load_corpus(str(folder), cache_dir=tmp_path / "cache", split="validation")
    assert "validation" in _one_line_error(excinfo)


def test_hub_unreachable(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    pytest.importorskip("datasets")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    with pytest.raises(ITDAError) as excinfo:
        load_corpus("itda-test-nobody/no-such-dataset", cache_dir=tmp_path)
    message = _one_line_error(excinfo)
    assert "no-such-dataset" in message and "local .txt/.jsonl" in message


def test_hub_without_datasets_installed(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "datasets", None)  # makes `import datasets` raise ImportError
    with pytest.raises(ITDAError) as excinfo:
        load_corpus("some-user/some-dataset")
    assert "pip install" in _one_line_error(excinfo)


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
    assert corpus.corpus_id == embedded_corpus.CORPUS_ID == "default-v1" and corpus.name == "default"
    assert len(corpus) > 1000
    assert [d.doc_id for d in corpus] == list(range(len(corpus)))
    assert sum(len(d.text) for d in corpus) > 2_000_000  # ~0.7M tokens at ~4 characters per token
    bad = [(d.source, m.group()) for d in corpus if (m := _LEFTOVERS.search(d.text))]
    assert not bad, bad[:10]
    for doc in corpus:
        assert re.fullmatch(r"(enwiki:.+|lee_background:\d+|lee:\d+)#\d+", doc.source), doc.source
        assert doc.text == doc.text.strip() and len(doc.text.split()) >= 15, doc.source
        assert len(doc.text) <= embedded_corpus.MAX_CHARS + 1, doc.source
    lengths = sorted(len(d.text) for d in corpus)
    assert embedded_corpus.MIN_CHARS <= lengths[len(lengths) // 2] <= embedded_corpus.MAX_CHARS
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

    monkeypatch.setattr(embedded_corpus, "build_default_documents", build)
    return calls


def _cache_file(cache_dir: Path) -> Path:
    digest = embedded_corpus.source_sha256(embedded_corpus.gensim_data_dir())
    return embedded_corpus.cache_path(cache_dir, digest)


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
    embedded_corpus._write_cache_atomic(path, "k", [("s", "old")])
    import os

    def boom(src: object, dst: object) -> None:
        raise OSError("disk full")

    monkeypatch.setattr(os, "replace", boom)
    embedded_corpus._write_cache_atomic(path, "k", [("s", "new")])
    assert embedded_corpus._read_cache(path, "k") == [("s", "old")]
    assert [p.name for p in tmp_path.iterdir()] == ["c.json"]


def test_missing_gensim(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(embedded_corpus.importlib.util, "find_spec", lambda name: None)
    with pytest.raises(ITDAError, match="pip install --no-deps gensim"):
        load_corpus("default")


# ---- Cleaning rules on small snippets -----------------------------------------------------------------


def test_wikitext_cleaning() -> None:
    wikitext = (
        "{{Infobox thing|name=X}}\n"
        "'''Widget''' ({{IPAc-en|w|ɪ|dʒ}}; from [[Latin language|Latin]]) is a [[gadget]] of about "
        "{{convert|5|km|mi}} in length<ref>{{cite web|url=http://x}}</ref> that&nbsp;is used by "
        "[[engineer]]s around the world every day.<ref name=a/> It was invented in {{as of|1900|lc=y}} "
        "or so by nobody in particular, as far as anyone knows.\n"
        "[[File:Widget.jpg|thumb|A widget.]]\n"
        "== History ==\n"
        "* a list item that is long enough to count as a paragraph of prose, but is a list item.\n"
        "{| class=wikitable\n| cell || cell\n|}\n"
        "Short line.\n"
        "[[Category:Widgets]]\n"
    )
    sections = embedded_corpus.wikitext_to_sections(wikitext)
    text = " ".join(s for section in sections for para in section for s in para)
    start = "Widget (from Latin) is a gadget of about 5 km in length that is used by engineers around"
    assert text.startswith(start)
    assert "as of 1900" in text
    for leftover in ("{{", "[[", "thumb", "list item", "cell", "Short line", "Category", "ref", "&nbsp;"):
        assert leftover not in text


def test_split_sentences_respects_abbreviations() -> None:
    text = "Mr. Smith met J. R. R. Tolkien in the U.K. in 1950. They talked, e.g. about trees. Then they ran!"
    assert embedded_corpus.split_sentences(text) == [
        "Mr. Smith met J. R. R. Tolkien in the U.K. in 1950.",
        "They talked, e.g. about trees.",
        "Then they ran!",
    ]


def test_chunks_are_balanced_and_cut_at_sentences() -> None:
    sentences = [f"Sentence number {i} has a few words in it to make it longer." for i in range(40)]
    chunks = embedded_corpus.chunk_sections([[sentences]])
    assert " ".join(chunks) == " ".join(sentences)
    assert all(c.endswith(".") for c in chunks)
    assert all(embedded_corpus.MIN_CHARS <= len(c) <= embedded_corpus.MAX_CHARS for c in chunks)
    huge = "word " * 400 + "end."
    pieces = embedded_corpus.chunk_sections([[[huge.strip()]]])
    assert all(len(p) <= embedded_corpus.MAX_CHARS for p in pieces) and "".join(pieces).count("word") == 400
