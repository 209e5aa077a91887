"""`itda train --store` never replaces a stored dictionary silently: the same run again is refused (nothing
written), another token budget is kept beside the first, and --replace says what it replaced."""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from itda_core.cli.app import app
from itda_core.store.connection import connect_readonly
from itda_core.store.writer import DictionaryExists
from tests.tiny import TEXTS, tiny_model


@pytest.fixture(scope="module")
def inputs(tmp_path_factory):
    root = tmp_path_factory.mktemp("replace")
    made = tiny_model("gpt2")
    folder = root / "tiny-gpt2"
    made.model.save_pretrained(folder)
    made.tokenizer.save_pretrained(folder)
    corpus = root / "docs.jsonl"
    corpus.write_text("".join(json.dumps({"text": t}) + "\n" for t in TEXTS * 3))
    return folder, corpus


def _train(inputs, tmp_path, store, *extra: str):
    folder, corpus = inputs
    return CliRunner().invoke(app, ["train", "--model", str(folder), "--corpus", str(corpus), "--layers", "0,1",
                                    "--k", "4", "--batch-size", "4", "--held-out", "0.2", "--out",
                                    str(tmp_path / "out"), "--no-progress", "--store", str(store), *extra])


def _rows(store):
    with connect_readonly(store) as con:
        return con.execute("SELECT dict_id, layer, n_atoms, tokens_seen, written FROM dictionaries "
                           "ORDER BY dict_id").fetchall()


def test_train_store_refuses_then_keeps_then_replaces(inputs, tmp_path):
    store = tmp_path / "s.duckdb"
    first = _train(inputs, tmp_path, store, "--max-tokens", "0")
    assert first.exit_code == 0, first.output
    before = _rows(store)
    assert [r[1] for r in before] == [0, 1]
    # the same run again: refused with one line naming what is stored, and nothing is written
    again = _train(inputs, tmp_path, store, "--max-tokens", "0")
    assert isinstance(again.exception, DictionaryExists), again.output
    message = str(again.exception)
    assert "\n" not in message and str(store) in message and "--replace" in message
    assert "dictionary 1 (" in message and "and 1 more" in message and "nothing was written" in message
    assert _rows(store) == before
    # another token budget: other dictionaries, kept beside the first
    budget = _train(inputs, tmp_path, store, "--max-tokens", "40")
    assert budget.exit_code == 0, budget.output
    after = _rows(store)
    assert after[:2] == before and [r[1] for r in after[2:]] == [0, 1]
    assert all(r[3] < before[0][3] for r in after[2:])
    # --replace: the same run replaces the first two in place and says so, one line each
    replaced = _train(inputs, tmp_path, store, "--max-tokens", "0", "--replace")
    assert replaced.exit_code == 0, replaced.output
    for dict_id, layer, n_atoms, *_ in before:
        assert f"replaced dictionary {dict_id} ({inputs[0]} layer {layer}: {n_atoms:,} atoms, not indexed" in (
            replaced.output
        )
    final = _rows(store)
    assert [r[:4] for r in final] == [r[:4] for r in after]
    assert final[2:] == after[2:] and all(f[4] > b[4] for f, b in zip(final[:2], before, strict=True))
