"""Evaluation's splice (hooks, identity and zero-ablation splices) and what it counts (special tokens, the
first position, padding)."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from itda_core.corpus import Corpus, Document
from itda_core.dictionary import ITDA
from itda_core.evaluation import evaluate, position_masks, special_token_ids, splice_forward, splice_hook
from itda_core.evaluation.ce_score import cross_entropy, next_token_logprobs
from itda_core.extraction import tokenize_documents
from itda_core.models import LoadedModel
from tests.evaluation.helpers import (
    LAYER,
    batch_forward_tol,
    batch_masks,
    ce_tol,
    counted_activations,
    exact_itda,
    random_itda,
    variance_ratio,
)
from tests.tiny import tiny_model
from tests.tolerance import gamma, mean_tol, mp_tol


# ---- the splice itself -------------------------------------------------------------------------------
@pytest.mark.parametrize("kind", ["llama", "gpt2"])
def test_identity_splice_gives_clean_loss(kind: str, docs: Corpus) -> None:
    model = tiny_model(kind)
    tb, masks = batch_masks(model, docs)
    clean, captured = splice_forward(model, tb.input_ids, tb.attention_mask, LAYER, capture=True)
    same, _ = splice_forward(model, tb.input_ids, tb.attention_mask, LAYER, lambda x: x.clone(), masks.splice)
    torch.testing.assert_close(same, clean, rtol=0, atol=0)
    assert captured is not None and captured.shape == (*tb.input_ids.shape, model.d_model)
    h_orig = cross_entropy(*next_token_logprobs(clean, tb.input_ids, masks.predict)).mean()
    h_star = cross_entropy(*next_token_logprobs(same, tb.input_ids, masks.predict)).mean()
    assert float(h_star) == float(h_orig)


def test_zero_ablation_matches_manual_hook(llama: LoadedModel, docs: Corpus) -> None:
    tb, masks = batch_masks(llama, docs)
    real = tb.attention_mask.bool()

    def manual(_module, _inputs, output):
        hidden = output[0] if isinstance(output, tuple) else output
        zeroed = hidden * (~real)[..., None].to(hidden.dtype)
        return (zeroed, *output[1:]) if isinstance(output, tuple) else zeroed

    handle = llama.blocks[LAYER].register_forward_hook(manual)
    try:
        with torch.no_grad():
            ref = llama.model(input_ids=tb.input_ids, attention_mask=tb.attention_mask).logits
    finally:
        handle.remove()
    assert masks.zero.equal(real)  # the default (SAEBench's) zero-ablation: every position, BOS included
    ours, _ = splice_forward(llama, tb.input_ids, tb.attention_mask, LAYER, torch.zeros_like, masks.zero)
    # the same batch after the same zeros: at most two float32 forwards of the later blocks (and the
    # unembedding) apart, per position relative to its logits' norm (zeroed rows give exactly zero logits)
    after = batch_forward_tol(llama, docs, llama.n_layers - LAYER)
    gap, bound = (ours - ref).norm(dim=-1), 2 * after * ref.norm(dim=-1)
    assert (gap <= bound).all(), f"logits {float((gap - bound).max()):.2e} beyond the rounding bound"
    # The CE of the zero-ablated run, computed by hand with F.cross_entropy over the counted positions.
    sel = masks.predict[:, :-1]
    manual_h0 = F.cross_entropy(ref[:, :-1][sel], tb.input_ids[:, 1:][sel])
    result = evaluate(llama, exact_itda(llama, docs), docs, k=1)
    with torch.no_grad():
        clean = llama.model(input_ids=tb.input_ids, attention_mask=tb.attention_mask).logits
    # evaluate runs other batches (forward rounding, see ce_tol); F.cross_entropy averages its float32 CEs
    # (each at most log V + 2 max|z|) in float32 over the n positions
    n, vocab = int(sel.sum()), ref.shape[-1]
    top = math.log(vocab) + 2 * float(torch.stack([ref.abs().max(), clean.abs().max()]).max())
    # (with the splice zeroed, only the blocks after it round differently)
    mean = mean_tol(n, scale=top)
    zero_tol = ce_tol(llama, docs, [ref], blocks=llama.n_layers - LAYER) + mean
    assert result.ce_zero == pytest.approx(float(manual_h0), abs=zero_tol)
    assert result.ce_clean == pytest.approx(float(F.cross_entropy(clean[:, :-1][sel], tb.input_ids[:, 1:][sel])),
                                            abs=ce_tol(llama, docs, [clean]) + mean)
    assert result.ce_zero > result.ce_clean  # zero-ablating a layer hurts


def test_splice_hook_handles_tuple_outputs() -> None:
    class TupleBlock(nn.Module):
        def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, str]:
            return x * 2, "extra"

    block = TupleBlock()
    mask = torch.tensor([[True, False, True]])
    seen: list[torch.Tensor] = []
    block.register_forward_hook(splice_hook(lambda x: torch.full_like(x, 7.0), mask, seen))
    hidden, extra = block(torch.ones(1, 3, 4))
    assert extra == "extra"
    assert hidden[0, 0].eq(7).all() and hidden[0, 2].eq(7).all() and hidden[0, 1].eq(2).all()
    assert seen[0].eq(2).all()  # the original output was captured


# ---- what is counted -----------------------------------------------------------------------------------
@pytest.mark.parametrize("rule", ["saebench", "splice-special"])
def test_special_tokens_are_excluded(llama: LoadedModel, rule: str) -> None:
    """Special tokens never count as tokens, nor as the input of a prediction; SAEBench's rule (the default)
    counts a prediction of a special target, the others do not."""
    texts = ["The capital of France is Paris.", "one <eos> two three four", "Short one."]
    corpus = Corpus("t", [Document(doc_id=i, text=t, source="t") for i, t in enumerate(texts)], "t-v1")
    special = set(special_token_ids(llama.tokenizer))
    assert {
        llama.tokenizer.bos_token_id,
        llama.tokenizer.eos_token_id,
        llama.tokenizer.pad_token_id,
    } <= special
    tokens = positions = all_positions = n_special = 0
    for text in texts:
        ids = llama.tokenizer(text, truncation=True, max_length=128)["input_ids"]
        is_special = [i in special for i in ids]
        assert is_special[0]  # the BOS this tokenizer adds
        n_special += sum(is_special)
        tokens += sum(not s for s in is_special)
        positions += sum(not is_special[t] and (rule == "saebench" or not is_special[t + 1])
                         for t in range(len(ids) - 1))
        all_positions += len(ids) - 1
    assert sum(i == llama.tokenizer.eos_token_id for i in llama.tokenizer(texts[1])["input_ids"]) == 1
    result = evaluate(llama, exact_itda(llama, corpus), corpus, k=1, ce_rule=rule)
    assert result.tokens == tokens
    assert result.ce_positions == positions
    assert result.special_positions == n_special
    assert positions < all_positions  # counting special tokens would have changed the number


def test_exclude_first_position(gpt2: LoadedModel, docs: Corpus) -> None:
    itda = random_itda(gpt2)
    both = [evaluate(gpt2, itda, docs, k=3, exclude_first=flag) for flag in (False, True)]
    assert gpt2.tokenizer("Short one.")["input_ids"][0] not in special_token_ids(gpt2.tokenizer)  # no BOS
    assert both[1].tokens == both[0].tokens - len(docs)
    assert both[1].ce_positions == both[0].ce_positions - len(docs)
    assert both[1].exclude_first and not both[0].exclude_first


def test_padding_never_counted(llama: LoadedModel, docs: Corpus) -> None:
    itda = random_itda(llama)  # an imperfect dictionary, so the spliced loss differs from the clean one
    keys = [
        "tokens",
        "ce_positions",
        "documents",
        "special_positions",
        "ce_clean",
        "ce_zero",
        "ce_spliced",
        "kl_div",
        "fvu",
        "mse",
        "cosine",
        "l0_distinct",
        "atoms_used",
    ]
    for max_tokens in (None, 57):
        runs = [
            evaluate(llama, itda, docs, k=3, batch_size=b, max_tokens=max_tokens).to_dict() for b in (1, 3, 8)
        ]
        tol = batch_size_tol(llama, itda, docs, 3, max_tokens, runs[0]["fvu"])
        for other in runs[1:]:
            for key in keys:
                assert other[key] == pytest.approx(runs[0][key], abs=tol.get(key, 0.0)), key
    assert runs[0]["tokens"] == 57
    _, masks = batch_masks(llama, docs)
    assert not (masks.tokens & ~masks.real).any() and not (masks.predict & ~masks.real).any()
    assert masks.real.sum() < masks.real.numel()  # the batch was padded


def batch_size_tol(model: LoadedModel, itda: ITDA, corpus: Corpus, k: int, max_tokens: int | None,
                   fvu: float) -> dict[str, float]:
    """How far two evaluations in other batches may be apart, per metric (counts: not at all). Their
    activations x are within eps_x = 2 forward_tol |x| of each other; MP picks the same atoms, so the
    residuals r = x - x_hat (projections of x, |r| <= |x|) are within eps = eps_x + 2 mp_tol(d, k) |x|, the
    reconstructions within (eps_x + eps) |x|."""
    d = model.d_model
    eps_x = 2 * batch_forward_tol(model, corpus, LAYER + 1)
    eps = eps_x + 2 * mp_tol(d, k)
    x = counted_activations(model, corpus, max_tokens)
    x_hat = itda.decode(*itda.encode(x, k))
    rho = variance_ratio(x)
    ratio = float((x.norm(dim=1) / x_hat.norm(dim=1)).max())  # |x| / |x_hat|, for the cosines
    tb = tokenize_documents(model, corpus.documents, 128, skip_special_tokens=True)
    masks = position_masks(model, tb)
    ids, att = tb.input_ids, tb.attention_mask
    logits = [splice_forward(model, ids, att, LAYER, replace, mask)[0]
              for replace, mask in ((None, None), (torch.zeros_like, masks.zero),
                                    (lambda h: itda.decode(*itda.encode(h, k)), masks.splice))]
    ce = ce_tol(model, corpus, logits, extra=eps)
    # sum |r|^2 moves by (2 eps + eps^2) sum |x|^2, sum |x - mean|^2 by 2 (2 eps_x + eps_x^2) sum |x|^2
    shift = 2 * (2 * eps_x + eps_x**2)
    return {
        "ce_clean": ce,
        "ce_zero": ce,
        "ce_spliced": ce,
        "kl_div": ce * (1 + gamma(logits[0].shape[-1] + 2)),
        "fvu": rho * (2 * eps + eps**2 + fvu * shift) / (1 - rho * shift),
        "mse": (2 * eps + eps**2) * float(x.double().pow(2).mean()),
        # each cosine turns by at most the angles x and x_hat turn: asin(eps_x) + asin((eps_x + eps) |x|/|x_hat|)
        "cosine": math.pi / 2 * (eps_x + (eps_x + eps) * ratio),
    }
