"""The CE rules: which positions the CE loss score splices, zero-ablates and counts. The default follows
SAEBench's core evaluation (``sae_bench/evals/core/main.py``: ``get_recons_loss`` with
``exclude_special_tokens_from_reconstruction=True`` and ``get_downstream_reconstruction_metrics``); the two
older rules stay as options. Each is checked against masks written out from its definition, on a batch with
a BOS, a literal special token in the text and padding, and end to end through the hooks."""

from __future__ import annotations

import dataclasses
import inspect

import pytest
import torch

from itda_core.config.evaluation import CE_RULES, DEFAULT_CE_RULE, LEGACY_CE_RULES, StoreEvalConfig
from itda_core.corpus import Corpus, Document
from itda_core.errors import ITDAError
from itda_core.evaluation import EvalResult, ce_loss_score, evaluate, position_masks, splice_forward
from itda_core.extraction import tokenize_documents
from itda_core.models import LoadedModel
from tests.evaluation.helpers import LAYER, random_itda
from tests.evaluation.test_ce_score import batch_size_tol

TEXTS = ["The capital of France is Paris.", "one <eos> two three four", "Short one."]


@pytest.fixture(scope="module")
def special_docs() -> Corpus:
    """Documents of three lengths (so the batch is padded), one with a literal EOS in the middle."""
    return Corpus("t", [Document(doc_id=i, text=t, source="t") for i, t in enumerate(TEXTS)], "t-v1")


def _batch(model: LoadedModel, corpus: Corpus):
    return tokenize_documents(model, corpus.documents, 128, skip_special_tokens=True)


def _reference(model: LoadedModel, ids: torch.Tensor, real: torch.Tensor, rule: str) -> dict[str, torch.Tensor]:
    """The masks a rule's definition gives, written out independently of ``position_masks``. SAEBench's
    ignored tokens are the tokenizer's BOS, EOS and PAD ids (``multiple_evals``' ``ignore_tokens``), which are
    the tiny tokenizer's only special tokens."""
    tok = model.tokenizer
    ignored = real & torch.isin(ids, torch.tensor([tok.bos_token_id, tok.eos_token_id, tok.pad_token_id]))
    predict = torch.zeros_like(real)
    if rule == "saebench":
        # the hook reconstructs where ``mask`` (not an ignored token) holds and keeps the activation elsewhere;
        # the zero-ablation hook zeroes the whole tensor; the per-token loss [b, t-1] is masked by
        # ``mask[:, :-1]``, i.e. by the input token of each prediction (padding: ours, SAEBench packs instead)
        splice, zero = real & ~ignored, real.clone()
        predict[:, :-1] = real[:, :-1] & ~ignored[:, :-1] & real[:, 1:]
    else:
        keep = rule == "skip-special"
        splice = real & ~ignored if keep else real.clone()
        zero = splice.clone()
        predict[:, :-1] = real[:, :-1] & ~ignored[:, :-1] & real[:, 1:] & ~ignored[:, 1:]
    return {"splice": splice, "zero": zero, "predict": predict}


def test_default_rule_is_saebench() -> None:
    assert DEFAULT_CE_RULE == "saebench" and CE_RULES == ("saebench", "splice-special", "skip-special")
    assert StoreEvalConfig().ce_rule == "saebench"
    assert inspect.signature(evaluate).parameters["ce_rule"].default == "saebench"
    assert inspect.signature(position_masks).parameters["rule"].default == "saebench"


@pytest.mark.parametrize("rule", CE_RULES)
def test_masks_follow_each_rule(llama: LoadedModel, special_docs: Corpus, rule: str) -> None:
    tb = _batch(llama, special_docs)
    real = tb.attention_mask.bool()
    assert real.sum() < real.numel()  # padded
    masks = position_masks(llama, tb, rule=rule) if rule != DEFAULT_CE_RULE else position_masks(llama, tb)
    ref = _reference(llama, tb.input_ids, real, rule)
    assert masks.rule == rule
    assert masks.special.equal(real & torch.isin(tb.input_ids, torch.tensor(
        [llama.tokenizer.bos_token_id, llama.tokenizer.eos_token_id, llama.tokenizer.pad_token_id])))
    assert int(masks.special[:, 0].sum()) == len(TEXTS) and int(masks.special.sum()) == len(TEXTS) + 1  # BOS, EOS
    for name in ("splice", "zero", "predict"):
        assert getattr(masks, name).equal(ref[name]), name
    assert masks.tokens.equal(real & ~masks.special)  # the reconstruction metrics: the same under every rule
    assert not (masks.splice & ~real).any() and not (masks.zero & ~real).any()  # padding never spliced


def test_saebench_keeps_special_activations_and_zeroes_everything(llama: LoadedModel, special_docs: Corpus) -> None:
    """What the block after the splice receives: under the default rule the original activation at BOS and
    EOS, the replacement elsewhere; the zero-ablated run zero at every real position, special ones included;
    under 'splice-special' the replacement at special positions too; under 'skip-special' nothing there."""
    tb = _batch(llama, special_docs)
    ids, att = tb.input_ids, tb.attention_mask
    seen: list[torch.Tensor] = []

    def grab(_module, args, kwargs):
        seen.append((args[0] if args else kwargs["hidden_states"]).detach().clone())

    handle = llama.blocks[LAYER + 1].register_forward_pre_hook(grab, with_kwargs=True)
    try:
        _, clean = splice_forward(llama, ids, att, LAYER, capture=True)
        runs = {}
        for rule in CE_RULES:
            masks = position_masks(llama, tb, rule=rule)
            seen.clear()
            splice_forward(llama, ids, att, LAYER, lambda x: torch.full_like(x, 7.0), masks.splice)
            spliced = seen[-1]
            seen.clear()
            splice_forward(llama, ids, att, LAYER, torch.zeros_like, masks.zero)
            runs[rule] = (masks, spliced, seen[-1])
    finally:
        handle.remove()
    assert clean is not None
    real = att.bool()
    masks, spliced, zeroed = runs["saebench"]
    special, plain = masks.special, real & ~masks.special
    assert spliced[special].equal(clean[special]) and spliced[plain].eq(7).all()
    assert zeroed[real].eq(0).all()
    _, spliced, zeroed = runs["splice-special"]
    assert spliced[real].eq(7).all() and zeroed[real].eq(0).all()
    _, spliced, zeroed = runs["skip-special"]
    assert spliced[special].equal(clean[special]) and zeroed[special].equal(clean[special])
    assert spliced[plain].eq(7).all() and zeroed[plain].eq(0).all()


def test_rules_differ_only_at_special_tokens(gpt2: LoadedModel, docs: Corpus) -> None:
    """GPT-2 adds no BOS and the tiny corpus writes no special token: the three rules are the same run."""
    itda = random_itda(gpt2)
    results = [evaluate(gpt2, itda, docs, k=3, ce_rule=rule).to_dict() for rule in CE_RULES]
    assert results[0]["special_positions"] == 0
    for other in results[1:]:
        assert {k: v for k, v in other.items() if k not in ("ce_rule", "wall_seconds")} == {
            k: v for k, v in results[0].items() if k not in ("ce_rule", "wall_seconds")}


def test_rules_on_special_tokens(llama: LoadedModel, special_docs: Corpus) -> None:
    """With BOS and a literal EOS the rules count other predictions and splice other positions; the score is
    the same formula of each rule's own losses, and the reconstruction metrics do not move."""
    itda = random_itda(llama)
    results = {rule: evaluate(llama, itda, special_docs, k=3, ce_rule=rule) for rule in CE_RULES}
    tol = batch_size_tol(llama, itda, special_docs, 3, None, results["saebench"].fvu)
    # the predictions of the EOS in the middle of document 1: counted by SAEBench's rule only
    assert results["saebench"].ce_positions == results["splice-special"].ce_positions + 1
    assert results["skip-special"].ce_positions == results["splice-special"].ce_positions
    for rule, r in results.items():
        assert r.ce_rule == rule
        assert r.ce_loss_score == ce_loss_score(r.ce_clean, r.ce_spliced, r.ce_zero)
        # SAEBench writes it (H0 - H*) / (H0 - H_orig): the same number
        assert r.ce_loss_score == pytest.approx((r.ce_zero - r.ce_spliced) / (r.ce_zero - r.ce_clean), rel=1e-12)
        for key in ("tokens", "special_positions", "atoms_used", "l0_distinct"):
            assert getattr(r, key) == getattr(results["saebench"], key), (rule, key)
        # the same tokens' reconstructions, from one MP run over more or fewer rows (BOS and EOS encoded too
        # or not), which may round differently: within the bound of two batchings
        for key in ("fvu", "mse", "cosine"):
            assert getattr(r, key) == pytest.approx(getattr(results["saebench"], key), abs=tol[key]), (rule, key)
    # zero-ablating the special tokens too, or not, is another H0; splicing them, another H*
    assert results["skip-special"].ce_zero != results["splice-special"].ce_zero
    assert results["skip-special"].ce_spliced != results["splice-special"].ce_spliced


def test_unknown_rule_and_old_results() -> None:
    with pytest.raises(ITDAError, match="unknown CE rule 'paper'"):
        StoreEvalConfig(ce_rule="paper")  # type: ignore[arg-type]
    with pytest.raises(ITDAError, match="unknown CE rule"):
        position_masks(None, None, rule="all")  # type: ignore[arg-type]
    fields = {f.name: None for f in dataclasses.fields(EvalResult)}
    old = {k: v for k, v in fields.items() if k != "ce_rule"}
    # a result written before the rule was recorded: its splice_special flag says which rule it used
    assert EvalResult.from_dict({**old, "splice_special": True}).ce_rule == "splice-special"
    assert EvalResult.from_dict({**old, "splice_special": False}).ce_rule == "skip-special"
    assert EvalResult.from_dict(old).ce_rule == LEGACY_CE_RULES[True]  # the old default
    assert EvalResult.from_dict({**old, "ce_rule": "saebench", "splice_special": False}).ce_rule == "saebench"
