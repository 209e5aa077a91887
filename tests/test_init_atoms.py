"""Initial atoms: the tie rule, the recorded repeat counts (file and store), and which atoms carry evidence."""

from __future__ import annotations

import duckdb
import pytest
import torch

from itda_core.dictionary import ITDA, ITDAConfig
from itda_core.errors import ITDAError
from itda_core.layer_builder import _first_unique_rows
from itda_core.provenance import Provenance
from itda_core.store.connection import connect_readonly, connect_write
from itda_core.store.reader import read_dictionary
from itda_core.store.schema import SCHEMA_VERSION, SchemaMismatch
from itda_core.store.writer import write_dictionary
from itda_core.trainer import TrainConfig, Trainer, train
from tests.tiny import tiny_corpus, tiny_model


@pytest.fixture(scope="module")
def gpt2():
    return tiny_model("gpt2")


@pytest.fixture(scope="module")
def corpus():
    return tiny_corpus(n_copies=2)


def test_tie_rules_order_rows():
    # rows 1 and 4 repeat (count 2, 3); rows seen once tie: by first occurrence, or by value as torch.unique
    # sorts them (the authors' code)
    x = torch.tensor([[5.0], [2.0], [9.0], [2.0], [7.0], [7.0], [1.0], [7.0]])
    first, counts = _first_unique_rows(x, "first")
    assert first.tolist() == [4, 1, 0, 2, 6] and counts.tolist() == [3, 2, 1, 1, 1]
    first, counts = _first_unique_rows(x, "value")
    assert first.tolist() == [4, 1, 6, 0, 2] and counts.tolist() == [3, 2, 1, 1, 1]  # values 1 < 5 < 9
    with pytest.raises(ITDAError, match="init_rule"):
        _first_unique_rows(x, "random")


def test_counts_recorded_and_kept_on_disk(corpus, tmp_path):
    llama = tiny_model("llama")  # prepends BOS: position 0 is the same activation in every document
    itda = train(llama, corpus, layers=[1], k=8, batch_size=4, max_tokens=None, progress=False)[1]
    init = itda.config.init_atoms
    assert itda.config.init_rule == "first"  # the default
    assert (itda.init_count[:init] >= 1).all() and (itda.init_count[init:] == 0).all()
    # a repeat count is the number of identical rows of the batch: recount them from the activations
    from itda_core.extraction import extract

    first = next(extract(llama, corpus, [1], batch_size=4, progress=False))
    x = first.acts[1]
    for i in range(init):
        row = x[(first.provenance.doc_id == itda.provenance.doc_id[i])
                & (first.provenance.position == itda.provenance.position[i])][0]
        assert int(itda.init_count[i]) == int((x == row).all(dim=1).sum())
    assert int(itda.init_count[0]) == 4  # BOS, once per document of the batch, is the most frequent row
    assert itda.evidence.tolist() == [c == 0 or c >= 2 for c in itda.init_count.tolist()]
    again = ITDA.load(itda.save(tmp_path / "d"))
    assert torch.equal(again.init_count, itda.init_count) and again.config.init_rule == "first"
    assert torch.equal(itda.crop(5).init_count, itda.init_count[:5])


def test_value_rule_picks_differ_across_layers_first_rule_does_not(gpt2, corpus):
    opts = {"k": 8, "batch_size": 4, "max_tokens": None, "progress": False}
    by_value = train(gpt2, corpus, layers=[0, 2], init_rule="value", **opts)
    by_first = train(gpt2, corpus, layers=[0, 2], init_rule="first", **opts)

    def picks(itda):
        return {key for key, c in zip(itda.provenance.keys(), itda.init_count.tolist(), strict=True) if c == 1}

    assert picks(by_first[0]) == picks(by_first[2])  # the same first rows in every layer
    assert picks(by_value[0]) != picks(by_value[2])
    with pytest.raises(ITDAError, match="init_rule"):
        Trainer(gpt2, corpus, TrainConfig(layers=[0], init_rule="nope"))


def _hand_made(add_error: torch.Tensor | None) -> ITDA:
    n = 4
    prov = Provenance(torch.zeros(n, dtype=torch.long), torch.arange(n), torch.arange(n), torch.arange(n),
                      torch.arange(n) + 1, token_str=["a", "b", "c", "d"])
    config = ITDAConfig(model_id="m", model_name="m", layer=0, d_model=3)
    return ITDA(torch.nn.functional.normalize(torch.randn(n, 3), dim=-1), prov, config, add_error)


def test_unrecorded_counts():
    # a trainer's file from before the counts were kept: initial atoms (NaN add error) have an unknown count
    # and are not evidence; atoms made by hand without add errors are not initial picks
    legacy = _hand_made(torch.tensor([float("nan"), float("nan"), 0.1, 0.2]))
    assert legacy.init_count.tolist() == [-1, -1, 0, 0] and legacy.evidence.tolist() == [False, False, True, True]
    assert _hand_made(None).evidence.all()
    with pytest.raises(ValueError, match="init_count"):
        ITDA(legacy.atoms, legacy.provenance, legacy.config, legacy.add_error, torch.zeros(3, dtype=torch.int32))


def test_store_keeps_counts_and_migrates_v1(gpt2, corpus, tmp_path):
    store = tmp_path / "s.duckdb"
    itda = train(gpt2, corpus, layers=[1], k=8, batch_size=4, max_tokens=200, progress=False)[1]
    dict_id = write_dictionary(store, itda, gpt2, corpus)
    with connect_readonly(store) as con:
        assert torch.equal(read_dictionary(con, dict_id).init_count, itda.init_count)
    # make it a v1 store (no init_count column), as an older itda wrote it
    con = duckdb.connect(str(store))
    con.execute("ALTER TABLE atoms DROP COLUMN init_count")
    con.execute("UPDATE meta SET value = '1' WHERE key = 'schema_version'")
    con.close()
    with pytest.raises(SchemaMismatch) as err, connect_readonly(store):
        pass
    assert "\n" not in str(err.value) and "--upgrade" in str(err.value)
    with connect_write(store):  # any writer migrates
        pass
    with connect_readonly(store) as con:
        version = con.execute("SELECT value FROM meta WHERE key = 'schema_version'").fetchall()[0][0]
        back = read_dictionary(con, dict_id)
    assert int(version) == SCHEMA_VERSION
    init = itda.config.init_atoms
    assert (back.init_count[:init] == -1).all() and (back.init_count[init:] == 0).all()


def test_store_info_upgrade(gpt2, corpus, tmp_path):
    from typer.testing import CliRunner

    from itda_core.cli.app import app

    store = tmp_path / "s.duckdb"
    itda = train(gpt2, corpus, layers=[1], k=8, batch_size=4, max_tokens=200, progress=False)[1]
    write_dictionary(store, itda, gpt2, corpus)
    con = duckdb.connect(str(store))
    con.execute("ALTER TABLE atoms DROP COLUMN init_count")
    con.execute("UPDATE meta SET value = '1' WHERE key = 'schema_version'")
    con.close()
    result = CliRunner().invoke(app, ["store-info", "--store", str(store), "--upgrade"])
    assert result.exit_code == 0, result.output
    assert f"schema v{SCHEMA_VERSION}" in result.output
