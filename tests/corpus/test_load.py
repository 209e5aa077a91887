"""Corpus loading (itda_core.corpus.load): .txt and .jsonl files, bad paths, options that do not apply."""

from __future__ import annotations

from pathlib import Path

import pytest

from itda_core.corpus import load_corpus
from itda_core.errors import ITDAError
from tests.corpus.helpers import one_line_error, write_jsonl, write_text

# ---- .txt -----------------------------------------------------------------------------------------------


def test_txt_one_document_per_line(tmp_path: Path) -> None:
    # Without a blank line between texts, every line is a document.
    path = write_text(tmp_path / "lines.txt", "first line\n  second line  \nthird line\n")
    corpus = load_corpus(str(path))
    assert [d.text for d in corpus] == ["first line", "second line", "third line"]
    assert [d.doc_id for d in corpus] == [0, 1, 2]
    assert [d.source for d in corpus] == ["lines.txt:1", "lines.txt:2", "lines.txt:3"]
    assert corpus.corpus_id == "file:lines.txt"
    assert corpus.name == str(path)


def test_txt_blank_line_blocks(tmp_path: Path) -> None:
    text = "\n\nPara one\ncontinues here.\n\n\n   \nPara two.\n\nPara three\n\n"
    corpus = load_corpus(str(write_text(tmp_path / "blocks.txt", text)))
    assert [d.text for d in corpus] == ["Para one\ncontinues here.", "Para two.", "Para three"]
    assert [d.source for d in corpus] == ["blocks.txt:3", "blocks.txt:8", "blocks.txt:10"]
    assert [d.doc_id for d in corpus] == [0, 1, 2]


def test_txt_max_documents_marks_the_id(tmp_path: Path) -> None:
    path = write_text(tmp_path / "lines.txt", "a\nb\nc\n")
    head = load_corpus(str(path), max_documents=2)
    assert [d.text for d in head] == ["a", "b"]
    assert head.corpus_id == "file:lines.txt:head:2"
    assert load_corpus(str(path), max_documents=5).corpus_id == "file:lines.txt"
    with pytest.raises(ITDAError):
        load_corpus(str(path), max_documents=0)


@pytest.mark.parametrize("content", ["", "\n\n   \n"])
def test_empty_file(tmp_path: Path, content: str) -> None:
    with pytest.raises(ITDAError) as excinfo:
        load_corpus(str(write_text(tmp_path / "empty.txt", content)))
    assert "no (non-empty) documents" in one_line_error(excinfo)


def test_missing_file(tmp_path: Path) -> None:
    for name in ("missing.txt", "missing.jsonl"):
        with pytest.raises(ITDAError) as excinfo:
            load_corpus(str(tmp_path / name))
        assert "not found" in one_line_error(excinfo)
    with pytest.raises(ITDAError) as excinfo:
        load_corpus("./no/such/folder")
    assert "not found" in one_line_error(excinfo)


@pytest.mark.parametrize("name", ["data.csv", "notes.md", "noext"])
def test_unknown_extension(tmp_path: Path, name: str) -> None:
    path = write_text(tmp_path / name, "some text\n")
    with pytest.raises(ITDAError) as excinfo:
        load_corpus(str(path))
    message = one_line_error(excinfo)
    assert ".txt" in message and ".jsonl" in message


def test_unknown_extension_of_missing_file() -> None:
    with pytest.raises(ITDAError, match=r"unsupported corpus file type '\.csv'"):
        load_corpus("nowhere/data.csv")


def test_hub_options_rejected_for_files(tmp_path: Path) -> None:
    path = write_text(tmp_path / "lines.txt", "a\n")
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


def test_jsonl(tmp_path: Path) -> None:
    rows = [{"text": "alpha", "x": 1}, {"text": "  "}, {"text": None}, {"text": "beta"}]
    corpus = load_corpus(str(write_jsonl(tmp_path / "d.jsonl", rows)))
    expected = [(0, "alpha", "d.jsonl:1"), (1, "beta", "d.jsonl:4")]
    assert [(d.doc_id, d.text, d.source) for d in corpus] == expected
    assert corpus.corpus_id == "file:d.jsonl"


def test_jsonl_custom_field_and_blank_lines(tmp_path: Path) -> None:
    path = write_text(tmp_path / "d.jsonl", '{"body": "one"}\n\n{"body": "two", "text": "ignored"}\n')
    corpus = load_corpus(str(path), text_field="body")
    assert [d.text for d in corpus] == ["one", "two"]
    assert [d.source for d in corpus] == ["d.jsonl:1", "d.jsonl:3"]


def test_jsonl_bad_line_names_line_number(tmp_path: Path) -> None:
    path = write_text(tmp_path / "d.jsonl", '{"text": "ok"}\n{"text": "ok"}\n{"text": oops}\n')
    with pytest.raises(ITDAError) as excinfo:
        load_corpus(str(path))
    assert "line 3" in one_line_error(excinfo)
    assert excinfo.value.__cause__ is not None


def test_jsonl_not_an_object(tmp_path: Path) -> None:
    with pytest.raises(ITDAError, match="line 2 is not a JSON object"):
        load_corpus(str(write_text(tmp_path / "d.jsonl", '{"text": "ok"}\n["a list"]\n')))


def test_jsonl_missing_field(tmp_path: Path) -> None:
    path = write_jsonl(tmp_path / "d.jsonl", [{"text": "ok"}, {"content": "no text key"}])
    with pytest.raises(ITDAError) as excinfo:
        load_corpus(str(path))
    message = one_line_error(excinfo)
    assert "line 2" in message and "'text'" in message and "content" in message and "text_field" in message


def test_jsonl_non_string_field(tmp_path: Path) -> None:
    with pytest.raises(ITDAError, match="int, not text"):
        load_corpus(str(write_jsonl(tmp_path / "d.jsonl", [{"text": 5}])))
