"""Dictionary files: safetensors + JSON round trip, model checks, atomic saves, damaged files."""

from __future__ import annotations

import json
from types import SimpleNamespace

import pytest
import torch

from itda_core import dictionary as dictionary_mod
from itda_core.dictionary import ITDA
from itda_core.errors import ITDAError
from itda_core.trainer import train
from tests.tiny import tiny_corpus, tiny_model
from tests.tolerance import mp_tol


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


def _edit_config(path, change):
    """Apply ``change`` to the parsed config.json of ``path`` and write it back."""
    data = json.loads((path / "config.json").read_text())
    change(data)
    (path / "config.json").write_text(json.dumps(data))


def _edit_tensors(path, change):
    """Apply ``change`` to the tensors of ``path``'s safetensors file and write it back."""
    from safetensors.torch import load_file, save_file

    tensors = load_file(str(path / "dictionary.safetensors"))
    change(tensors)
    save_file(tensors, str(path / "dictionary.safetensors"))


def _cut_file(path):
    data = (path / "dictionary.safetensors").read_bytes()
    (path / "dictionary.safetensors").write_bytes(data[: len(data) // 2])


DAMAGE = {
    "no atoms tensor": (lambda p: _edit_tensors(p, lambda t: t.pop("atoms")), "no 'atoms' tensor"),
    "no provenance column": (lambda p: _edit_tensors(p, lambda t: t.pop("prov.doc_id")), "no 'prov.doc_id'"),
    "one atom fewer": (lambda p: _edit_tensors(p, lambda t: t.update(atoms=t["atoms"][:-1].contiguous())),
                       "one entry per atom"),
    "wrong d_model": (lambda p: _edit_config(p, lambda c: c.update(d_model=c["d_model"] + 1)), "width"),
    "mistyped field name": (lambda p: _edit_config(p, lambda c: c.update(thresold=c.pop("threshold"))),
                            "unknown field 'thresold' \\(did you mean 'threshold'\\?\\); fix the field name"),
    "wrongly typed field": (lambda p: _edit_config(p, lambda c: c.update(layer="one")), "'layer' should be int"),
    "missing field": (lambda p: _edit_config(p, lambda c: c.pop("d_model")), "lacks d_model"),
    "config not an object": (lambda p: (p / "config.json").write_text("[1, 2]"), "not an object"),
    "invalid JSON": (lambda p: (p / "config.json").write_text('{"model_id": '), "not valid JSON"),
    "cut safetensors file": (_cut_file, "cannot be read"),
}


@pytest.mark.parametrize("kind", list(DAMAGE))
def test_each_damage_is_a_one_line_error_naming_the_folder(tmp_path, trained, kind):
    _, itda = trained
    path = itda.save(tmp_path / "d")
    damage, message = DAMAGE[kind]
    damage(path)
    with pytest.raises(ITDAError, match=message) as info:
        ITDA.load(path)
    text = str(info.value)
    assert text.startswith(f"{path} is a damaged ITDA dictionary") and "\n" not in text
    assert "itda train" in text or "fix the field name" in text  # says what to do


@pytest.mark.parametrize("command", [["check-provenance", "{path}"], ["eval", "--dictionary", "{path}"]])
def test_commands_show_a_damaged_dictionary_as_one_line(tmp_path, trained, command):
    import subprocess
    import sys

    _, itda = trained
    path = itda.save(tmp_path / "d")
    _edit_tensors(path, lambda t: t.pop("atoms"))
    args = [part.format(path=path) for part in command]
    proc = subprocess.run([sys.executable, "-m", "itda_core.cli", *args], capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.strip().splitlines() == [
        f"error: {path} is a damaged ITDA dictionary: dictionary.safetensors has no 'atoms' tensor; "
        "train it again with 'itda train' or restore the folder from a backup"
    ]



def test_atoms_on_another_device_are_copied_once(trained):
    # MP reuses a Gram matrix for a repeated atoms tensor; a fresh copy on every encode would defeat it.
    # ("meta" stands in for a second device on CPU-only machines.)
    _model, itda = trained
    meta = torch.device("meta")
    first = itda._atoms_on(meta)
    assert first.device == meta and itda._atoms_on(meta) is first
    assert itda._atoms_on(itda.atoms.device) is itda.atoms
    itda.atoms.mul_(1)  # an in-place edit (values unchanged here) bumps the version: the copy is made again
    assert itda._atoms_on(meta) is not first
