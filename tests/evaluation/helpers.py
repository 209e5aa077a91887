"""What the evaluation tests share: the splice layer, exact and random dictionaries of the tiny models, the
batches' position masks, and the rounding tolerances the tests compare with."""

from __future__ import annotations

import torch

from itda_core.corpus import Corpus
from itda_core.dictionary import ITDA, ITDAConfig
from itda_core.evaluation import position_masks, splice_forward
from itda_core.extraction import residual_stream, tokenize_documents
from itda_core.models import LoadedModel
from itda_core.provenance import Provenance
from tests.tolerance import cosine_tol, forward_tol, gamma, log_softmax_tol, mean_tol, mp_tol

LAYER = 1


def exact_itda(model: LoadedModel, corpus: Corpus, layer: int = LAYER, seq_len: int = 128) -> ITDA:
    """A dictionary holding every activation of ``corpus`` itself: MP with k=1 reconstructs exactly."""
    rows = []
    for doc in corpus.documents:
        tb = tokenize_documents(model, [doc], seq_len)
        rows.append(residual_stream(model, tb.input_ids, tb.attention_mask, [layer])[layer][0])
    acts = torch.unique(torch.cat(rows).float(), dim=0)
    n = acts.shape[0]
    prov = Provenance(*(torch.zeros(n, dtype=torch.long) for _ in range(5)), token_str=[""] * n)
    config = ITDAConfig(
        model_id=model.model_id, model_name=model.name, layer=layer, d_model=model.d_model, k=1
    )
    return ITDA(acts / acts.norm(dim=-1, keepdim=True), prov, config)


def random_itda(model: LoadedModel, n: int = 40, layer: int = LAYER, seed: int = 0) -> ITDA:
    """A dictionary of random unit atoms (an imperfect reconstruction with no exact ties)."""
    gen = torch.Generator().manual_seed(seed)
    atoms = torch.randn(n, model.d_model, generator=gen)
    prov = Provenance(*(torch.zeros(n, dtype=torch.long) for _ in range(5)), token_str=[""] * n)
    config = ITDAConfig(
        model_id=model.model_id, model_name=model.name, layer=layer, d_model=model.d_model, k=3
    )
    return ITDA(atoms / atoms.norm(dim=-1, keepdim=True), prov, config)


def batch_masks(model: LoadedModel, corpus: Corpus, seq_len: int = 128):
    tb = tokenize_documents(model, corpus.documents, seq_len, skip_special_tokens=True)
    return tb, position_masks(model, tb)


# ---- tolerances ----------------------------------------------------------------------------------------
F64 = torch.float64


def batch_forward_tol(model: LoadedModel, corpus: Corpus, n_blocks: int) -> float:
    """tolerance.forward_tol of ``n_blocks`` blocks of this model over at most the longest document: how far
    (per token, relative to its norm) a float32 forward of these documents is from exact."""
    cfg = model.model.config
    d_ff = getattr(cfg, "intermediate_size", None) or getattr(cfg, "n_inner", None) or 4 * model.d_model
    seq_len = tokenize_documents(model, corpus.documents, 128).input_ids.shape[1]
    return forward_tol(n_blocks, model.d_model, d_ff, seq_len)


def ce_tol(model: LoadedModel, corpus: Corpus, logits: list[torch.Tensor], extra: float = 0.0,
           blocks: int | None = None) -> float:
    """Bound on the difference of two mean next-token CEs over the same positions (or of the KLs to the
    clean run) whose logits come from float32 forwards that round differently in ``blocks`` blocks (default
    all, and the unembedding counted as one more), and whose spliced activations may differ by ``extra`` |x|:
    every logit row then moves by at most (2 forward_tol + extra) |z|, which moves a position's CE,
    -z_t + logsumexp(z), by at most twice that; each run's float32 log-softmax over the vocabulary adds its
    own error (tolerance.log_softmax_tol). The float64 sums over positions add ~n u64."""
    rows = torch.cat([z.reshape(-1, z.shape[-1]) for z in logits])
    blocks = model.n_layers + 1 if blocks is None else blocks
    dz = (2 * batch_forward_tol(model, corpus, blocks) + extra) * float(rows.norm(dim=-1).max())
    return 2 * dz + 2 * log_softmax_tol(rows.shape[-1], scale=float(rows.abs().max()))


def counted_activations(model: LoadedModel, corpus: Corpus, budget: int | None = None) -> torch.Tensor:
    """The layer's activations at the tokens the reconstruction metrics count (document-major budget)."""
    tb = tokenize_documents(model, corpus.documents, 128, skip_special_tokens=True)
    masks = position_masks(model, tb, budget=budget)
    return residual_stream(model, tb.input_ids, tb.attention_mask, [LAYER])[LAYER][masks.tokens].float()


def variance_ratio(x: torch.Tensor) -> float:
    """rho = sum |x|^2 / sum |x - mean|^2: how much FVU's denominator cancels (it scales FVU's errors)."""
    x = x.double()
    return float(x.pow(2).sum() / (x - x.mean(0)).pow(2).sum())


def perfect_reconstruction_tol(model: LoadedModel, corpus: Corpus, max_tokens: int | None = None) -> dict:
    """Tolerances of evaluating :func:`exact_itda` at k = 1. Each token's own atom (or a duplicate of it) is
    its activation from a per-document forward: the batched activation x is within eps = 2 forward_tol of
    it, so MP's one step leaves |x - x_hat| <= eps |x| (plus the step's and the atom's normalisation's
    rounding). FVU and 1 - cosine are second order in eps (x_hat is x's projection); the spliced CE and KL
    are first order (ce_tol with that perturbation; the clean and spliced runs share every batch and every
    block before the splice)."""
    d = model.d_model
    eps = 2 * batch_forward_tol(model, corpus, LAYER + 1) + mp_tol(d, 1) + 2 * gamma(d + 2)
    tb = tokenize_documents(model, corpus.documents, 128, skip_special_tokens=True)
    clean, _ = splice_forward(model, tb.input_ids, tb.attention_mask, LAYER)
    ce = ce_tol(model, corpus, [clean], extra=eps, blocks=model.n_layers - LAYER)
    x = counted_activations(model, corpus, max_tokens)
    n = x.shape[0]
    return {
        "ce": ce,
        "kl": ce * (1 + gamma(clean.shape[-1] + 2)),  # sum_v p_v (c_v - o_v): the same per-position bound
        # sum |x - x_hat|^2 <= eps^2 sum |x|^2 = eps^2 rho sum |x - mean|^2 (float64 sums: relative errors)
        "fvu": eps**2 * variance_ratio(x) * (1 + 2 * gamma(n * d + 2, F64)),
        # 1 - cos = 1 - sqrt(1 - sin^2) <= sin^2 <= eps^2, plus the float64 cosines and their mean
        "cosine": eps**2 + cosine_tol(d, F64) + mean_tol(n, F64),
    }
