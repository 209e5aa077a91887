"""Dictionary files: safetensors + JSON round trip, model checks, atomic saves, damaged files."""

from __future__ import annotations

import json
from types import SimpleNamespace

import pytest
import torch
from tiny import tiny_corpus, tiny_model
from tolerance import mp_tol

from itda_core import dictionary as dictionary_mod
from itda_core.dictionary import ITDA
from itda_core.errors import ITDAError
from itda_core.trainer import train


@pytest.fixture(scope="module")
def trained():
    model = tiny_model("llama")
    return model, train(model, tiny_corpus(), layers=[1], k=6, batch_size=4, max_tokens=None, progress=False)[1]


def test_round_trip(tmp_path, trained):
    model, itda = trained
    path = itda.save(tmp_path / "d")
    loaded = ITDA.load(path, model=model)
    assert torch.equal(loaded.atoms, itda.atoms)
    assert loaded.provenance.keys() == itda.provenance.keys()
    assert loaded.provenance.token_str == itda.provenance.token_str
    assert torch.equal(loaded.provenance.char_start, itda.provenance.char_start)
    torch.testing.assert_close(loaded.add_error, itda.add_error, equal_nan=True)
    cfg = json.loads((path / "config.json").read_text())
    for key in (
        "model_id",
        "layer",
        "site",
        "k",
        "threshold",
        "corpus_id",
        "corpus_sha256",
        "tokenizer",
        "seq_len",
        "tokens_seen",
        "created",
        "versions",
    ):
        assert key in cfg
    assert cfg["site"] == "blocks.1.hook_resid_post"
    assert not list(tmp_path.glob(".*")), "no temporary folders left behind"
    x = torch.randn(5, model.d_model)
    # two k-step MP reconstructions over the same atoms, each within mp_tol(d, k) |x| of the exact one
    scale = x.norm(dim=1, keepdim=True)
    tol = 2 * mp_tol(model.d_model, itda.config.k)
    torch.testing.assert_close(loaded.decode(*loaded.encode(x)) / scale, itda.decode(*itda.encode(x)) / scale,
                               rtol=0, atol=tol)


def test_unicode_token_strings_survive(tmp_path, trained):
    _, itda = trained
    itda.provenance.token_str[0] = "<script>&amp;🙂\t\n▁Ġ"
    loaded = ITDA.load(itda.save(tmp_path / "u"))
    assert loaded.provenance.token_str[0] == "<script>&amp;🙂\t\n▁Ġ"


def test_refuses_other_model(tmp_path, trained):
    _, itda = trained
    path = itda.save(tmp_path / "d")
    wider = SimpleNamespace(name="wide", d_model=48, model_id=itda.config.model_id, n_layers=3)
    with pytest.raises(ITDAError, match="d_model 48"):
        ITDA.load(path, model=wider)
    other = tiny_model("llama", seed=1)
    with pytest.raises(ITDAError, match="was built on"):
        ITDA.load(path, model=other)


def test_interrupted_save_keeps_old_dictionary(tmp_path, trained, monkeypatch):
    _, itda = trained
    path = itda.save(tmp_path / "d")
    before = (path / "dictionary.safetensors").read_bytes()

    def boom(*_a, **_k):
        raise KeyboardInterrupt

    monkeypatch.setattr(dictionary_mod, "save_file", boom)
    with pytest.raises(KeyboardInterrupt):
        itda.crop(3).save(path)
    assert (path / "dictionary.safetensors").read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["d"]


def test_damaged_files(tmp_path, trained):
    _, itda = trained
    with pytest.raises(ITDAError, match="not an ITDA dictionary"):
        ITDA.load(tmp_path)
    path = itda.save(tmp_path / "d")
    (path / "dictionary.safetensors").write_bytes(b"garbage")
    with pytest.raises(ITDAError, match="cannot be read"):
        ITDA.load(path)
    (path / "config.json").write_text("{not json")
    with pytest.raises(ITDAError, match="not valid JSON"):
        ITDA.load(path)
