"""Hugging Face datasets as corpora (itda_core.corpus.hub): a local dataset folder, offline ids, no datasets."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from itda_core.corpus import load_corpus
from itda_core.errors import ITDAError
from tests.corpus.helpers import one_line_error, write_jsonl

# ---- Hugging Face datasets (local folder, no network) --------------------------------------------------


def test_hub_local_folder(tmp_path: Path) -> None:
    pytest.importorskip("datasets")
    folder = tmp_path / "ds"
    folder.mkdir()
    rows = [{"text": "first", "n": 1}, {"text": ""}, {"text": "third"}, {"text": "fourth"}]
    write_jsonl(folder / "train.jsonl", rows)
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
    assert "'body'" in one_line_error(excinfo)
    with pytest.raises(ITDAError) as excinfo:
        load_corpus(str(folder), cache_dir=tmp_path / "cache", split="validation")
    assert "validation" in one_line_error(excinfo)


def test_hub_unreachable(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    pytest.importorskip("datasets")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    with pytest.raises(ITDAError) as excinfo:
        load_corpus("itda-test-nobody/no-such-dataset", cache_dir=tmp_path)
    message = one_line_error(excinfo)
    assert "no-such-dataset" in message and "local .txt/.jsonl" in message


def test_hub_without_datasets_installed(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "datasets", None)  # makes `import datasets` raise ImportError
    with pytest.raises(ITDAError) as excinfo:
        load_corpus("some-user/some-dataset")
    assert "pip install" in one_line_error(excinfo)
