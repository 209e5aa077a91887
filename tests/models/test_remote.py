"""Remote extraction (itda_core.models.remote): the nnsight trace gives the in-process extractor's activations and
provenance (run offline: a local nnsight model, a meta-device model dispatched here, and nnsight's local simulation
of the NDIF request), trains the same dictionaries, and never shows the NDIF API key."""

from __future__ import annotations

import dataclasses
import logging

import pytest
import torch

from itda_core.config.train import TrainConfig
from itda_core.errors import ITDAError
from itda_core.extraction import extract
from itda_core.models import load_model
from itda_core.trainer import Trainer
from tests.tiny import save_tiny_model, tiny_corpus
from tests.tolerance import forward_tol

nnsight = pytest.importorskip("nnsight")
from itda_core.models.remote import nnsight_source, redact, remote_model  # noqa: E402 - after the skip

DEPTH = 4
SEQ_LEN = 24
SECRET = "ndif-test-key-0123456789abcdef"


@pytest.fixture(scope="module", params=["llama", "gpt2", "bert"])
def folder(request, tmp_path_factory):
    return save_tiny_model(request.param, tmp_path_factory.mktemp(f"tiny-{request.param}"), DEPTH)


@pytest.fixture(scope="module")
def llama_folder(tmp_path_factory):
    return save_tiny_model("llama", tmp_path_factory.mktemp("tiny-llama-remote"), DEPTH)


def _batches(lm, layers, forward=None):
    return list(extract(lm, tiny_corpus(), layers, SEQ_LEN, 3, progress=False, forward=forward))


def _same(ref: list, got: list, layers: list[int]) -> None:
    """Same batches: provenance equal, activations equal up to the forward pass's rounding."""
    assert len(ref) == len(got)
    for a, b in zip(ref, got, strict=True):
        for col in ("doc_id", "position", "token_id"):
            assert torch.equal(getattr(a.provenance, col), getattr(b.provenance, col)), col
        assert (a.documents, a.complete, a.partial) == (b.documents, b.complete, b.partial)
        for layer in layers:
            tol = forward_tol(layer + 1, 32, 64, SEQ_LEN)
            x, y = a.acts[layer], b.acts[layer]
            assert x.shape == y.shape
            assert ((x - y).norm(dim=-1) <= tol * x.norm(dim=-1) + torch.finfo(x.dtype).tiny).all()


def test_local_nnsight_model_gives_the_in_process_activations(folder):
    lm = load_model(str(folder), device="cpu")
    src = nnsight_source(lm)
    head = lm.model.get_output_embeddings() if lm.family == "decoder" else None
    calls = []
    handle = head.register_forward_hook(lambda *_: calls.append(1)) if head is not None else None
    try:
        _same(_batches(lm, [0, 2]), _batches(src.lm, [0, 2], src.forward), [0, 2])
    finally:
        if handle is not None:
            handle.remove()
    assert calls == []  # the trace stops after the deepest block: no logits


def test_meta_model_has_the_metadata_without_weights_and_runs_the_same(llama_folder):
    lm = load_model(str(llama_folder), device="cpu")
    src = remote_model(str(llama_folder), remote=False)
    assert all(p.device.type == "meta" for p in src.lm.model.parameters())  # no weights read for the metadata
    assert (src.lm.model_id, src.lm.n_layers, src.lm.d_model, src.lm.family, src.lm.architecture) == (
        lm.model_id, lm.n_layers, lm.d_model, lm.family, lm.architecture)
    assert src.lm.tokenizer.get_vocab() == lm.tokenizer.get_vocab()
    assert src.block_path == "model.layers"
    _same(_batches(lm, [1, 3]), _batches(src.lm, [1, 3], src.forward), [1, 3])  # dispatched here on first use


def test_serialised_request_runs_the_same(llama_folder):
    """remote='local': nnsight serialises the trace as it would for NDIF, then runs the deserialised request."""
    lm = load_model(str(llama_folder), device="cpu")
    src = remote_model(str(llama_folder), remote="local")
    _same(_batches(lm, [0, 3]), _batches(src.lm, [0, 3], src.forward), [0, 3])


def test_trainer_takes_the_remote_batches(llama_folder):
    lm = load_model(str(llama_folder), device="cpu")
    src = nnsight_source(lm, remote="local")
    config = TrainConfig(layers=[1, 2], k=4, seq_len=SEQ_LEN, batch_size=3, max_tokens=None, progress=False)
    corpus = tiny_corpus()
    ref = Trainer(lm, corpus, config).run()
    got = Trainer(src.lm, corpus, dataclasses.replace(config)).run(
        source=extract(src.lm, corpus, [1, 2], SEQ_LEN, 3, progress=False, forward=src.forward))
    for layer in (1, 2):
        assert torch.equal(ref[layer].atoms, got[layer].atoms)
        assert ref[layer].config.model_id == got[layer].config.model_id
        assert ref[layer].config.documents_sha256 == got[layer].config.documents_sha256


def test_remote_without_an_api_key_says_how_to_set_it(llama_folder, monkeypatch):
    monkeypatch.setattr(nnsight.CONFIG.API, "APIKEY", None)
    src = remote_model(str(llama_folder), remote="local")
    src.remote = True
    with pytest.raises(ITDAError, match="NDIF_API_KEY") as err:
        _batches(src.lm, [0], src.forward)
    assert "\n" not in str(err.value)


def test_the_api_key_never_reaches_an_error_or_a_log(llama_folder, monkeypatch, caplog, capsys):
    """A remote run against a host that refuses the connection, and one whose backend error quotes the key."""
    monkeypatch.setattr(nnsight.CONFIG.API, "APIKEY", SECRET)
    monkeypatch.setattr(nnsight.CONFIG.API, "HOST", "http://127.0.0.1:9")
    src = remote_model(str(llama_folder), remote="local")
    src.remote = True
    # NDIF names a model by its hub id; this offline folder gets one (the key is resolved on the hub otherwise)
    monkeypatch.setattr(src.envoy, "_remoteable_model_key", lambda: '{"repo_id": "tiny/llama"}', raising=False)
    caplog.set_level(logging.DEBUG)
    with pytest.raises(ITDAError, match="on NDIF failed") as refused:
        _batches(src.lm, [0], src.forward)

    from nnsight.intervention.backends.remote import RemoteBackend

    def leak(self, tracer):
        raise RuntimeError(f"401 Unauthorized: header ndif-api-key={self.api_key} rejected")

    monkeypatch.setattr(RemoteBackend, "__call__", leak)
    with pytest.raises(ITDAError, match="401 Unauthorized") as quoted:
        _batches(src.lm, [0], src.forward)
    out = capsys.readouterr()
    for text in (str(refused.value), str(quoted.value), caplog.text, out.out, out.err, repr(src)):
        assert SECRET not in text
    assert "***" in str(quoted.value)
    assert quoted.value.__cause__ is None and quoted.value.__suppress_context__  # no chained error quoting it
    assert redact(f"x {SECRET} y") == "x *** y"


def test_remote_needs_a_hub_id(llama_folder, tmp_path):
    with pytest.raises(ITDAError, match="is a local folder"):
        remote_model(str(llama_folder), remote=True)
    with pytest.raises(ITDAError, match="needs a Hugging Face model id"):
        remote_model(str(tmp_path / "model.gguf"), remote=True)


def test_nnsight_needs_the_whole_model(llama_folder):
    cut = load_model(str(llama_folder), device="cpu", up_to_layer=1)
    with pytest.raises(ITDAError, match="needs the whole model"):
        nnsight_source(cut)


@pytest.mark.parametrize(("flags", "message"), [
    ([], "is a local folder"),
    (["--device-map", "auto"], "--device-map place a local load"),
    (["--dtype", "float32"], "--dtype place a local load"),
])
def test_itda_train_remote_refusals(llama_folder, tmp_path, monkeypatch, flags, message):
    from typer.testing import CliRunner

    from itda_core.cli.app import app

    monkeypatch.setattr(nnsight.CONFIG.API, "APIKEY", SECRET)
    result = CliRunner().invoke(app, ["train", "--model", str(llama_folder), "--remote", "--no-progress",
                                      "--out", str(tmp_path / "out"), *flags])
    assert result.exit_code != 0
    assert isinstance(result.exception, ITDAError) and message in str(result.exception)
    assert SECRET not in str(result.exception) and SECRET not in result.output


def test_itda_train_remote_without_a_key_stops_before_reading_the_model(tmp_path, monkeypatch):
    from typer.testing import CliRunner

    import itda_core.models.remote as remote
    from itda_core.cli.app import app

    monkeypatch.setattr(nnsight.CONFIG.API, "APIKEY", None)
    monkeypatch.setattr(remote, "remote_model", lambda *a, **kw: pytest.fail("read the model without a key"))
    result = CliRunner().invoke(app, ["train", "--model", "some-org/some-model", "--remote", "--no-progress",
                                      "--out", str(tmp_path / "out")])
    assert result.exit_code != 0
    assert isinstance(result.exception, ITDAError) and "NDIF_API_KEY" in str(result.exception)
    assert "\n" not in str(result.exception)
