"""Extractor: hooked residual stream == hidden_states, early stop, no padding leaks, provenance spans."""

from __future__ import annotations

import pytest
import torch

from itda_core.corpus import Document
from itda_core.errors import ITDAError
from itda_core.extraction import CHARS_PER_TOKEN, _encode_prefixes, extract, residual_stream, tokenize_documents
from tests.tiny import TEXTS, tiny_corpus, tiny_model
from tests.tolerance import forward_tol


def _batch_tol(model, corpus, n_blocks: int) -> float:
    """Two float32 forwards of the same tokens in other batches (other padding, other kernels) are per token
    within 2 forward_tol of each other: n_blocks blocks, attention over at most the longest document."""
    cfg = model.model.config
    d_ff = getattr(cfg, "intermediate_size", None) or getattr(cfg, "n_inner", None) or 4 * model.d_model
    seq_len = tokenize_documents(model, corpus.documents, 128).input_ids.shape[1]
    return 2 * forward_tol(n_blocks, model.d_model, d_ff, seq_len)


def _assert_rows_close(actual: torch.Tensor, expected: torch.Tensor, tol: float) -> None:
    """Every row (token) of ``actual`` within ``tol`` times that row's norm of ``expected``."""
    scale = expected.norm(dim=-1, keepdim=True)
    torch.testing.assert_close(actual / scale, expected / scale, rtol=0, atol=tol)


def _hidden_states(model, doc_text: str, seq_len: int = 128) -> tuple[torch.Tensor, ...]:
    enc = model.tokenizer([doc_text], truncation=True, max_length=seq_len, return_tensors="pt")
    with torch.no_grad():
        out = model.base(**enc, output_hidden_states=True)
    return out.hidden_states


def test_matches_hidden_states_per_document(any_tiny_model, corpus):
    model = any_tiny_model
    layers = list(range(model.n_layers - 1))  # the last entry of hidden_states may carry the final norm
    batches = list(extract(model, corpus, layers, batch_size=3, progress=False))
    acts = {layer: torch.cat([b.acts[layer] for b in batches]) for layer in layers}
    prov = type(batches[0].provenance).concat([b.provenance for b in batches])
    for doc in corpus.documents:
        rows = (prov.doc_id == doc.doc_id).nonzero().flatten()
        hs = _hidden_states(model, doc.text)
        assert rows.numel() == hs[0].shape[1]
        assert prov.position[rows].tolist() == list(range(rows.numel()))
        for layer in layers:
            _assert_rows_close(acts[layer][rows], hs[layer + 1][0], _batch_tol(model, corpus, layer + 1))


def test_last_layer_is_block_output(tiny_llama, corpus):
    """The last layer is the residual stream after the last block (before any final norm)."""
    model = tiny_llama
    last = model.n_layers - 1
    batch = next(extract(model, corpus, [last], batch_size=1, progress=False))
    tb = tokenize_documents(model, corpus.documents[:1], 128)
    seen = {}
    handle = model.blocks[last].register_forward_hook(
        lambda _m, _i, o: seen.setdefault("h", o[0] if isinstance(o, tuple) else o)
    )
    with torch.no_grad():
        model.base(input_ids=tb.input_ids, attention_mask=tb.attention_mask)
    handle.remove()
    _assert_rows_close(batch.acts[last], seen["h"][0], _batch_tol(model, corpus, last + 1))


def test_early_stop_identical_and_multi_layer(any_tiny_model, corpus):
    model = any_tiny_model
    tb = tokenize_documents(model, corpus.documents, 128)
    all_layers = residual_stream(model, tb.input_ids, tb.attention_mask, range(model.n_layers))
    early = residual_stream(model, tb.input_ids, tb.attention_mask, [0])
    torch.testing.assert_close(early[0], all_layers[0], rtol=0, atol=0)
    two = residual_stream(model, tb.input_ids, tb.attention_mask, [1, 0])
    assert sorted(two) == [0, 1]
    torch.testing.assert_close(two[1], all_layers[1], rtol=0, atol=0)


def test_early_stop_skips_later_blocks(tiny_llama, corpus):
    model = tiny_llama
    calls = []
    handles = [b.register_forward_hook(lambda *_a, i=i: calls.append(i)) for i, b in enumerate(model.blocks)]
    tb = tokenize_documents(model, corpus.documents[:2], 128)
    try:
        residual_stream(model, tb.input_ids, tb.attention_mask, [0])
    finally:
        for h in handles:
            h.remove()
    assert calls == [0]


def test_padding_never_leaks(any_tiny_model, corpus):
    """A short document padded inside a batch gives the same activations as alone, and no pad rows."""
    model = any_tiny_model
    short = [d for d in corpus.documents if d.text == "Short one."]
    long_doc = max(corpus.documents, key=lambda d: len(d.text))
    batch = next(extract(model, [long_doc, *short], [1], batch_size=2, progress=False))
    alone = next(extract(model, short, [1], batch_size=1, progress=False))
    mask = batch.provenance.doc_id == short[0].doc_id
    _assert_rows_close(batch.acts[1][mask], alone.acts[1], _batch_tol(model, corpus, 2))
    tb = tokenize_documents(model, [long_doc, *short], 128)
    assert len(batch) == int(tb.attention_mask.sum())


def test_provenance_spans_slice_token_text(any_tiny_model, corpus):
    model = any_tiny_model
    batch = next(extract(model, corpus, [0], batch_size=len(corpus.documents), progress=False))
    prov = batch.provenance
    lowercase = model.architecture == "bert"
    by_id = {d.doc_id: d.text for d in corpus.documents}
    checked = 0
    for i in range(len(prov)):
        s, e = int(prov.char_start[i]), int(prov.char_end[i])
        piece = by_id[int(prov.doc_id[i])][s:e]
        tok = prov.token_str[i]
        if tok in model.tokenizer.all_special_tokens:
            assert s == e
            continue
        decoded = model.tokenizer.convert_tokens_to_string([tok])
        if "\ufffd" in decoded:  # a byte-level piece of a multi-byte character: the span covers the character
            assert len(piece) == 1 and ord(piece) > 127
            continue
        if lowercase:
            assert piece.lower().strip() == decoded.replace("##", "").strip() or decoded == "[UNK]"
        else:
            assert piece == decoded
        checked += 1
    assert checked > 50


def test_special_tokens_skipped_when_asked(corpus):
    model = tiny_model("bert")
    kept = next(extract(model, corpus, [0], batch_size=2, progress=False))
    skipped = next(extract(model, corpus, [0], batch_size=2, skip_special_tokens=True, progress=False))
    assert len(kept) - len(skipped) == 4  # [CLS] and [SEP] of two documents
    assert "[CLS]" not in skipped.provenance.token_str


def test_max_tokens_and_streaming():
    model = tiny_model("gpt2")
    corpus = tiny_corpus(n_copies=5)
    batches = list(extract(model, corpus, [0, 2], batch_size=4, max_tokens=101, progress=False))
    assert sum(len(b) for b in batches) == 101
    assert all(b.acts[0].shape == b.acts[2].shape for b in batches)
    assert all(len(b) <= 4 * 128 for b in batches)


def test_seq_len_truncates(corpus):
    model = tiny_model("gpt2")
    batch = next(extract(model, corpus, [0], seq_len=5, batch_size=8, progress=False))
    assert int(batch.provenance.position.max()) == 4


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"layers": [7]}, "out of range"),
        ({"layers": []}, "no layers"),
        ({"layers": [0], "seq_len": 0}, "seq_len"),
        ({"layers": [0], "batch_size": 0}, "batch_size"),
        ({"layers": [0], "max_tokens": 0}, "max_tokens"),
    ],
)
def test_bad_arguments(corpus, kwargs, message):
    model = tiny_model("gpt2")
    with pytest.raises(ITDAError, match=message):
        next(extract(model, corpus, progress=False, **kwargs))


def test_empty_corpus():
    with pytest.raises(ITDAError, match="no documents"):
        next(extract(tiny_model("gpt2"), [], [0], progress=False))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_cuda_extraction_matches_cpu(corpus):
    cpu_model = tiny_model("gpt2")
    cuda_model = tiny_model("gpt2")
    cuda_model.model.to("cuda")
    cuda_model.device = torch.device("cuda")
    a = next(extract(cpu_model, corpus, [1], batch_size=8, progress=False))
    b = next(extract(cuda_model, corpus, [1], batch_size=8, progress=False))
    assert b.acts[1].device.type == "cuda"
    _assert_rows_close(b.acts[1].cpu(), a.acts[1], _batch_tol(cpu_model, corpus, 2))  # other kernels, 2 blocks
    assert b.provenance.keys() == a.provenance.keys()


def _long_documents() -> list[Document]:
    """Long documents of every awkward shape: prose, a long run of blanks first (no tokens there for WordPiece),
    one long word, emoji and accents, and a short one beside them."""
    prose = " ".join(TEXTS) * 400  # about 240,000 characters
    texts = [
        prose,
        " \n\t" * 20_000 + prose[:50_000],
        "x" * 30_000 + " " + prose[:50_000],
        "🙂é Paris, " * 20_000,
        "Short one.",
    ]
    return [Document(doc_id=i, text=t, source=f"long:{i}") for i, t in enumerate(texts)]


@pytest.mark.parametrize("kind", ["gpt2", "llama", "bert"])
@pytest.mark.parametrize("seq_len", [2, 7, 128, 300])
def test_long_documents_cut_before_tokenising_match_whole(kind, seq_len):
    model = tiny_model(kind)
    docs = _long_documents()
    got = _encode_prefixes(model.tokenizer, [d.text for d in docs], seq_len)
    want = model.tokenizer([d.text for d in docs], truncation=True, max_length=seq_len, add_special_tokens=True,
                           return_offsets_mapping=True, return_special_tokens_mask=True)  # fmt: skip
    for key in ("input_ids", "offset_mapping", "special_tokens_mask", "attention_mask"):
        assert got[key] == want[key], key
    batch = tokenize_documents(model, docs, seq_len)
    for i, ids in enumerate(want["input_ids"]):
        assert batch.input_ids[i, : len(ids)].tolist() == ids


class _Recording:
    """A tokenizer that records the longest text it was asked to encode."""

    def __init__(self, tok):
        self.tok, self.longest = tok, 0

    def __call__(self, texts, **kwargs):
        self.longest = max([self.longest, *(len(t) for t in texts)])
        return self.tok(texts, **kwargs)

    def __getattr__(self, name):
        return getattr(self.tok, name)


def test_long_document_is_not_tokenised_whole():
    model = tiny_model("llama")
    recording = _Recording(model.tokenizer)
    model.tokenizer = recording
    text = " ".join(TEXTS) * 2000  # 1.2 MB: a 25 MB document once peaked at 3.7 GB
    batch = tokenize_documents(model, [Document(doc_id=0, text=text, source="long")], 128)
    assert batch.input_ids.shape == (1, 128)
    assert recording.longest <= 128 * CHARS_PER_TOKEN < len(text)


def test_seq_len_shorter_than_the_special_tokens():
    model = tiny_model("bert")  # [CLS] text [SEP]: with seq_len 1 the tokenizer would not truncate at all
    with pytest.raises(ITDAError, match="at least 3"):
        tokenize_documents(model, _long_documents(), 1)
    assert tokenize_documents(tiny_model("gpt2"), _long_documents(), 1).input_ids.shape == (5, 1)
