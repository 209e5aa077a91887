"""Sentences and chunks (itda_core.corpus.chunking): abbreviations, balanced chunks cut at sentences."""

from __future__ import annotations

from itda_core.corpus import chunking


def test_split_sentences_respects_abbreviations() -> None:
    text = "Mr. Smith met J. R. R. Tolkien in the U.K. in 1950. They talked, e.g. about trees. Then they ran!"
    assert chunking.split_sentences(text) == [
        "Mr. Smith met J. R. R. Tolkien in the U.K. in 1950.",
        "They talked, e.g. about trees.",
        "Then they ran!",
    ]


def test_chunks_are_balanced_and_cut_at_sentences() -> None:
    sentences = [f"Sentence number {i} has a few words in it to make it longer." for i in range(40)]
    chunks = chunking.chunk_sections([[sentences]])
    assert " ".join(chunks) == " ".join(sentences)
    assert all(c.endswith(".") for c in chunks)
    assert all(chunking.MIN_CHARS <= len(c) <= chunking.MAX_CHARS for c in chunks)
    huge = "word " * 400 + "end."
    pieces = chunking.chunk_sections([[[huge.strip()]]])
    assert all(len(p) <= chunking.MAX_CHARS for p in pieces) and "".join(pieces).count("word") == 400
