"""Integration tests with the real embedded models (converted once, then cached under ~/.cache/itda)."""

from __future__ import annotations

import pytest
import torch

from itda_core.corpus import load_corpus
from itda_core.extraction import extract, tokenize_documents
from itda_core.models import load_model
from itda_core.provenance_check import check_provenance
from itda_core.trainer import train
from tests.tolerance import forward_tol

pytestmark = pytest.mark.integration

EXPECTED = {
    "smollm2-135m": (30, 576, "decoder"),
    "gemma3-270m": (18, 640, "decoder"),
    "minilm-l6": (6, 384, "encoder"),
}


@pytest.fixture(scope="module")
def corpus():
    return load_corpus("default")


@pytest.fixture(scope="module", params=list(EXPECTED))
def embedded(request):
    return load_model(request.param, device="cpu")


def test_shape_family_and_id(embedded):
    assert (embedded.n_layers, embedded.d_model, embedded.family) == EXPECTED[embedded.name]
    assert embedded.model_id.startswith(embedded.name + "@") and embedded.dtype == torch.float32
    assert load_model(embedded.name, device="cpu").model_id == embedded.model_id, "ids are stable"


def test_extractor_matches_hidden_states_and_spans(embedded, corpus):
    docs = corpus.documents[:3]
    layer = embedded.n_layers // 2
    batch = next(extract(embedded, docs, [layer], batch_size=3, progress=False))
    # the batch (padded) and each document alone are two float32 forwards through layer + 1 blocks: per token
    # within 2 forward_tol of each other, relative to the token's norm (massive activations included)
    cfg = embedded.model.config
    seq_len = tokenize_documents(embedded, docs, 128).input_ids.shape[1]
    tol = 2 * forward_tol(layer + 1, embedded.d_model, cfg.intermediate_size, seq_len)
    for doc in docs:
        enc = embedded.tokenizer([doc.text], truncation=True, max_length=128, return_tensors="pt")
        with torch.no_grad():
            hs = embedded.base(**enc, output_hidden_states=True).hidden_states[layer + 1][0]
        rows = batch.provenance.doc_id == doc.doc_id
        scale = hs.norm(dim=-1, keepdim=True)
        torch.testing.assert_close(batch.acts[layer][rows] / scale, hs / scale, rtol=0, atol=tol)
    prov = batch.provenance
    texts = {d.doc_id: d.text for d in docs}
    for i in range(len(prov)):
        s, e = int(prov.char_start[i]), int(prov.char_end[i])
        if s == e:
            continue
        piece = texts[int(prov.doc_id[i])][s:e]
        shown = embedded.tokenizer.convert_tokens_to_string([prov.token_str[i]])
        if "\ufffd" in shown:
            continue
        if embedded.family == "encoder":  # MiniLM lowercases and strips accents: compare ASCII pieces exactly
            if piece.isascii() and shown != "[UNK]":
                assert piece.lower() == shown.replace("##", "").strip()
        else:
            assert piece.strip() == shown.strip()


def test_smollm2_knows_paris():
    model = load_model("smollm2-135m", device="cpu")
    ids = model.tokenizer("The capital of France is", return_tensors="pt")["input_ids"]
    with torch.no_grad():
        logits = model.model(ids).logits[0, -1]
    assert model.tokenizer.decode(int(logits.argmax())).strip() == "Paris"


def test_early_stop_equals_full_pass_on_real_model(corpus):
    model = load_model("smollm2-135m", device="cpu")
    tb = tokenize_documents(model, corpus.documents[:2], 64)
    from itda_core.extraction import residual_stream

    early = residual_stream(model, tb.input_ids, tb.attention_mask, [7])
    full = residual_stream(model, tb.input_ids, tb.attention_mask, [7, 29])
    torch.testing.assert_close(early[7], full[7], rtol=0, atol=0)


def test_train_and_provenance_check_smollm2(corpus, tmp_path):
    model = load_model("smollm2-135m", device="cpu")
    train_part, _ = corpus.split(0.1)
    dicts = train(model, train_part, layers=[3, 15], max_tokens=3000, progress=False)
    for itda in dicts.values():
        assert len(itda) > itda.config.init_atoms > 0
        result = check_provenance(itda, model, corpus)
        assert result.ok, result.summary()
        loaded = type(itda).load(itda.save(tmp_path / itda.config.site), model=model)
        assert torch.equal(loaded.atoms, itda.atoms)
