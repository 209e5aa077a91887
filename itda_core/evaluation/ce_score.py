"""Next-token loss with the residual stream after one block replaced: position masks, splice hooks, CE and KL.

The splice is a forward hook on ``model.blocks[layer]`` that returns a modified output: at the positions of
a mask, the block's output (the residual stream after the block) is replaced by ``replace(x)``, where ``x``
holds the original activations at those positions ([n, d]). Identity gives the clean run, ``torch.zeros_like``
the zero-ablation, and an ITDA reconstruction the spliced run of the CE loss score.

Which positions are spliced, zero-ablated and counted is the CE rule (:data:`itda_core.config.evaluation.CE_RULES`):

- ``saebench`` (default), as SAEBench's core evaluation (``sae_bench/evals/core/main.py``, ``get_recons_loss``
  with ``exclude_special_tokens_from_reconstruction=True``, as its run-all scripts call it): the reconstruction
  replaces the real non-special positions, special tokens keep their original activation; the zero-ablation
  covers every position; a prediction counts when its input token is not special (its target may be).
- ``splice-special``: reconstruction and zero-ablation at every real position; a prediction counts when
  neither its input nor its target is special.
- ``skip-special``: special tokens keep their original activation in both runs; counted as ``splice-special``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from itda_core.config.evaluation import DEFAULT_CE_RULE, check_ce_rule
from itda_core.errors import ITDAError
from itda_core.extraction import TokenizedBatch
from itda_core.models import LoadedModel

Replace = Callable[[Tensor], Tensor]

# Rows per chunk when turning logits into log-probabilities (bounds the float32 copies for big vocabularies).
LOGIT_CHUNK = 256


def special_token_ids(tokenizer: Any) -> list[int]:
    """Ids of the tokenizer's special tokens (BOS/EOS/PAD/CLS/SEP/MASK and extra ones), UNK excepted.

    UNK stands for real text the vocabulary cannot spell, so it is scored like any other token."""
    ids = {int(i) for i in (getattr(tokenizer, "all_special_ids", None) or [])}
    named = set()
    for attr in (
        "bos_token_id",
        "eos_token_id",
        "pad_token_id",
        "cls_token_id",
        "sep_token_id",
        "mask_token_id",
    ):
        value = getattr(tokenizer, attr, None)
        if isinstance(value, int):
            named.add(value)
    ids |= named
    unk = getattr(tokenizer, "unk_token_id", None)
    if isinstance(unk, int) and unk not in named:
        ids.discard(unk)
    return sorted(ids)


@dataclass
class PositionMasks:
    """Boolean [b, t] masks over a right-padded batch (documents are rows, in corpus order).

    ``real``: a token of the document (attention mask 1), never padding. ``special``: a real position holding
    a special token (added by the tokenizer, e.g. BOS/CLS/SEP, or a special token written in the text).
    ``splice``: positions whose activation the spliced run replaces by its reconstruction. ``zero``: positions
    the zero-ablated run sets to zero. ``tokens``: real, non-special positions inside the ``max_tokens``
    budget; the reconstruction metrics are over these. ``predict``: position t such that ``tokens[t]`` and
    token t+1 is real (and, except under the ``saebench`` rule, not special); the next-token losses are over
    these. ``rule``: the CE rule that chose ``splice``, ``zero`` and ``predict``.
    """

    real: Tensor
    special: Tensor
    splice: Tensor
    zero: Tensor
    tokens: Tensor
    predict: Tensor
    rule: str = DEFAULT_CE_RULE


def position_masks(
    model: LoadedModel,
    batch: TokenizedBatch,
    *,
    rule: str = DEFAULT_CE_RULE,
    exclude_first: bool = False,
    budget: int | None = None,
) -> PositionMasks:
    """Masks for one tokenised batch under the CE ``rule``. ``batch.keep`` must come from
    ``skip_special_tokens=True`` (it marks the tokenizer's own special positions); ``budget`` caps the counted
    tokens, in document-major order, so the counted set does not depend on the batch size. ``exclude_first``
    also drops each document's first position from the counted tokens (for models without BOS, whose first
    token is an attention sink); it is still spliced."""
    check_ce_rule(rule)
    ids = batch.input_ids
    real = batch.attention_mask.bool()
    special_ids = torch.tensor(special_token_ids(model.tokenizer), dtype=ids.dtype)
    special = real & (~batch.keep | torch.isin(ids, special_ids))
    tokens = real & ~special
    if exclude_first and tokens.shape[1]:
        tokens[:, 0] = False
    if budget is not None:
        order = tokens.flatten().long().cumsum(0).view_as(tokens)
        tokens = tokens & (order <= max(budget, 0))
    next_ok = torch.zeros_like(real)
    # SAEBench masks a prediction by its input token only; the other rules also drop special targets
    next_ok[:, :-1] = real[:, 1:] if rule == "saebench" else real[:, 1:] & ~special[:, 1:]
    predict = tokens & next_ok if model.family == "decoder" else torch.zeros_like(real)
    splice = real if rule == "splice-special" else real & ~special
    zero = real & ~special if rule == "skip-special" else real
    return PositionMasks(real=real, special=special, splice=splice, zero=zero, tokens=tokens, predict=predict,
                         rule=rule)


def splice_hook(
    replace: Replace | None, mask: Tensor | None, captured: list[Tensor] | None = None
) -> Callable:
    """A forward hook for a transformer block: records the block's output (in ``captured``) and, with
    ``replace``, returns the output with ``replace(x)`` written at ``mask``. Works whether the block returns
    a tensor (transformers 5) or a tuple whose first item is the hidden state (older versions)."""

    def hook(_module: Any, _inputs: Any, output: Any) -> Any:
        hidden = output[0] if isinstance(output, tuple) else output
        if captured is not None:
            captured.append(hidden.detach())
        if replace is None or mask is None:
            return None
        m = mask.to(hidden.device)
        x = hidden[m]
        new_rows = replace(x)
        if tuple(new_rows.shape) != tuple(x.shape):
            raise ValueError(f"replacement has shape {tuple(new_rows.shape)}, expected {tuple(x.shape)}")
        new = hidden.clone()
        new[m] = new_rows.to(device=hidden.device, dtype=hidden.dtype)
        return (new, *output[1:]) if isinstance(output, tuple) else new

    return hook


def splice_forward(
    model: LoadedModel,
    input_ids: Tensor,
    attention_mask: Tensor,
    layer: int,
    replace: Replace | None = None,
    mask: Tensor | None = None,
    *,
    capture: bool = False,
) -> tuple[Tensor, Tensor | None]:
    """Full causal-LM forward with the output of ``blocks[layer]`` replaced at ``mask`` by ``replace(x)``
    (no replacement when ``replace`` is None). Returns (logits [b, t, V], the block's original output
    [b, t, d] when ``capture``)."""
    if model.family != "decoder":
        raise ITDAError(f"{model.name} is an encoder: it has no next-token prediction to splice into")
    if not 0 <= layer < model.n_layers:
        raise ITDAError(f"layer {layer} out of range for {model.name} (layers 0-{model.n_layers - 1})")
    captured: list[Tensor] | None = [] if capture else None
    handle = model.blocks[layer].register_forward_hook(splice_hook(replace, mask, captured))
    try:
        with torch.inference_mode():
            out = model.model(
                input_ids=input_ids.to(model.device),
                attention_mask=attention_mask.to(model.device),
                use_cache=False,
            )
    finally:
        handle.remove()
    logits = out.logits if hasattr(out, "logits") else out[0]
    return logits, (captured[0] if captured else None)


def next_token_logprobs(logits: Tensor, input_ids: Tensor, predict: Tensor) -> tuple[Tensor, Tensor]:
    """(log-probabilities [n, V] float32, targets [n]) at the positions of ``predict`` (t predicts t+1)."""
    sel = predict[:, :-1].to(logits.device)
    rows = logits[:, :-1][sel]
    targets = input_ids[:, 1:].to(logits.device)[sel]
    out = torch.empty(rows.shape, dtype=torch.float32, device=rows.device)
    for start in range(0, rows.shape[0], LOGIT_CHUNK):
        out[start : start + LOGIT_CHUNK] = torch.log_softmax(
            rows[start : start + LOGIT_CHUNK].float(), dim=-1
        )
    return out, targets


def cross_entropy(logp: Tensor, targets: Tensor) -> Tensor:
    """Per-position cross-entropy -log p(target) [n]."""
    return -logp.gather(1, targets[:, None]).squeeze(1)


def kl_divergence(clean_logp: Tensor, logp: Tensor) -> Tensor:
    """Per-position KL(clean || other) = sum_v p_clean (log p_clean - log p_other), in nats [n]."""
    out = torch.empty(clean_logp.shape[0], dtype=torch.float32, device=clean_logp.device)
    for start in range(0, clean_logp.shape[0], LOGIT_CHUNK):
        c = clean_logp[start : start + LOGIT_CHUNK]
        o = logp[start : start + LOGIT_CHUNK]
        out[start : start + LOGIT_CHUNK] = (c.exp() * (c - o)).sum(dim=-1)
    return out
