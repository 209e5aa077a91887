"""Evaluation: splicing, zero-ablation, CE loss score, exclusions, reconstruction metrics, sweep and CLI."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
import typer
from torch import nn
from typer.testing import CliRunner

from itda_core.corpus import Corpus, Document
from itda_core.dictionary import ITDA, ITDAConfig
from itda_core.evaluation import (
    ReconstructionStats,
    ce_loss_score,
    default_sizes,
    evaluate,
    plot_sweep,
    position_masks,
    save_figure,
    special_token_ids,
    splice_forward,
    splice_hook,
    sweep,
)
from itda_core.evaluation.ce_score import cross_entropy, next_token_logprobs
from itda_core.extraction import residual_stream, tokenize_documents
from itda_core.models import LoadedModel
from itda_core.provenance import Provenance
from tests.tiny import TEXTS, tiny_corpus, tiny_model
from tests.tolerance import cosine_tol, forward_tol, gamma, log_softmax_tol, mean_tol, mp_tol, unit_roundoff

LAYER = 1


@pytest.fixture(scope="module")
def llama() -> LoadedModel:
    return tiny_model("llama")


@pytest.fixture(scope="module")
def gpt2() -> LoadedModel:
    return tiny_model("gpt2")


@pytest.fixture(scope="module")
def bert() -> LoadedModel:
    return tiny_model("bert")


@pytest.fixture(scope="module")
def docs() -> Corpus:
    return tiny_corpus()


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
    ours, _ = splice_forward(llama, tb.input_ids, tb.attention_mask, LAYER, torch.zeros_like, masks.splice)
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


# ---- the score -----------------------------------------------------------------------------------------
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


@pytest.mark.parametrize("kind", ["llama", "gpt2"])
def test_perfect_reconstruction_scores_one(kind: str, docs: Corpus) -> None:
    model = tiny_model(kind)
    result = evaluate(model, exact_itda(model, docs), docs, k=1)
    tol = perfect_reconstruction_tol(model, docs)
    assert result.ce_spliced == pytest.approx(result.ce_clean, abs=tol["ce"])
    # |score - 1| = |H* - H_orig| / |H_orig - H0|: the CE bound over the (small, on a random model) denominator
    assert result.ce_loss_score == pytest.approx(1.0, abs=tol["ce"] / abs(result.ce_clean - result.ce_zero))
    assert result.kl_div == pytest.approx(0.0, abs=tol["kl"])
    assert result.fvu == pytest.approx(0.0, abs=tol["fvu"])
    assert result.cosine == pytest.approx(1.0, abs=tol["cosine"])
    assert result.l0 == 1 and result.l0_distinct == 1
    assert result.kl_zero > 0


def test_ce_loss_score_formula() -> None:
    assert ce_loss_score(2.0, 2.0, 5.0) == 1.0
    assert ce_loss_score(2.0, 5.0, 5.0) == 0.0
    assert ce_loss_score(2.0, 3.5, 5.0) == 0.5  # exact binary operands: (-1.5) / (-3.0) is exact
    assert ce_loss_score(2.0, 3.0, 2.0) is None  # undefined when zero-ablation changes nothing
    assert ce_loss_score(None, 1.0, 2.0) is None


def test_reconstruction_metrics() -> None:
    torch.manual_seed(0)
    x = torch.randn(50, 8) + 3.0
    perfect = ReconstructionStats(n_atoms=4)
    perfect.update(x[:20], x[:20], torch.tensor([[0, 0, 1]] * 20))
    perfect.update(x[20:], x[20:], torch.tensor([[1, 1, 1]] * 30))
    out = perfect.result()
    n, d = x.shape
    # float64 cosines of 8-wide vectors with themselves, averaged over n tokens
    assert out["fvu"] == 0 and out["mse"] == 0
    assert out["cosine"] == pytest.approx(1.0, abs=cosine_tol(d, F64) + mean_tol(n, F64))
    # a sum of exact counts over n: one rounded division, the same as the literal's
    assert out["l0"] == 3 and out["l0_distinct"] == (20 * 2 + 30 * 1) / 50
    assert out["atoms_used"] == 2 and out["dead_fraction"] == 0.5
    # FVU = sum |x - x_hat|^2 / (sum |x|^2 - |sum x|^2 / n) in float64: the two n d-term sums are off by
    # gamma_{nd} relative, the denominator's difference by gamma_{nd+2} sum |x|^2 = gamma_{nd+2} rho of itself
    rho = variance_ratio(x)
    sums = gamma(n * d + 1, F64) + 2 * gamma(n * d + 2, F64) * rho
    mean_only = ReconstructionStats(n_atoms=1)
    mean_only.update(x, x.mean(dim=0).expand_as(x))
    # predicting the mean explains nothing; x's float32 mean is off by mean_tol, which adds
    # n |mean error|^2 / sum |x - mean|^2 to the FVU
    err = mean_tol(n, scale=float(x.abs().max()))
    total_var = float((x.double() - x.double().mean(0)).pow(2).sum())
    assert mean_only.result()["fvu"] == pytest.approx(1.0, abs=sums + n * d * err**2 / total_var)
    half = ReconstructionStats(n_atoms=1)
    half.update(x, x * 0.5)
    # the reference in float64 (x - x / 2 is exact): its centring and sums add the same kind of error
    x64 = x.double()
    expected = float((x64 * 0.5).pow(2).sum() / (x64 - x64.mean(0)).pow(2).sum())
    centring = 2 * (unit_roundoff(F64) + gamma(n + 1, F64) * math.sqrt(rho))
    assert half.result()["fvu"] == pytest.approx(expected, rel=2 * sums + centring)


# ---- what is counted -----------------------------------------------------------------------------------
def test_special_tokens_are_excluded(llama: LoadedModel) -> None:
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
        positions += sum(not is_special[t] and not is_special[t + 1] for t in range(len(ids) - 1))
        all_positions += len(ids) - 1
    assert sum(i == llama.tokenizer.eos_token_id for i in llama.tokenizer(texts[1])["input_ids"]) == 1
    result = evaluate(llama, exact_itda(llama, corpus), corpus, k=1)
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
    logits = [splice_forward(model, ids, att, LAYER, replace, masks.splice)[0]
              for replace in (None, torch.zeros_like, lambda h: itda.decode(*itda.encode(h, k)))]
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


# ---- real dictionaries ------------------------------------------------------------------------------
def test_trained_itda_gives_finite_score(llama: LoadedModel) -> None:
    from itda_core.trainer import train

    train_part, held = tiny_corpus(n_copies=3).split(0.25)
    itda = train(llama, train_part, layers=[LAYER], k=4, max_tokens=None, progress=False)[LAYER]
    result = evaluate(llama, itda, held, k=4)
    assert result.ce_loss_score is not None and math.isfinite(result.ce_loss_score)
    assert result.fvu is not None and 0 <= result.fvu < 1.5
    assert result.l0 == 4 and 1 <= result.l0_distinct <= 4
    assert 0 <= result.dead_fraction < 1 and result.atoms_used <= len(itda)
    assert result.corpus_id == held.corpus_id and result.dictionary_corpus_id == train_part.corpus_id
    data = result.to_dict()
    assert all(v is None or isinstance(v, (int, float, str, bool)) for v in data.values())


def test_encoder_gives_reconstruction_metrics_only(bert: LoadedModel, docs: Corpus) -> None:
    from itda_core.trainer import train

    itda = train(bert, docs, layers=[LAYER], k=4, max_tokens=None, progress=False)[LAYER]
    result = evaluate(bert, itda, docs, k=4)
    assert result.family == "encoder"
    assert result.ce_clean is None and result.ce_loss_score is None and result.kl_div is None
    assert result.ce_positions is None and "encoder" in result.note
    assert result.fvu is not None and math.isfinite(result.fvu) and result.cosine is not None
    # CLS and SEP are excluded: one of each per document.
    assert result.special_positions == 2 * len(docs)


def test_to_json_round_trip(llama: LoadedModel, docs: Corpus, tmp_path: Path) -> None:
    result = evaluate(llama, exact_itda(llama, docs), docs, k=1, max_tokens=30)
    path = result.to_json(tmp_path / "r.json")
    assert json.loads(path.read_text())["ce_loss_score"] == result.ce_loss_score  # JSON keeps a float's repr
    assert type(result).from_dict(json.loads(path.read_text())) == result


# ---- sweep -------------------------------------------------------------------------------------------
def test_sweep_grid(llama: LoadedModel, docs: Corpus, tmp_path: Path) -> None:
    itda = exact_itda(llama, docs)
    df = sweep(llama, itda, docs, ks=(1, 2, 4), max_tokens=80)
    sizes = default_sizes(len(itda))
    assert len(sizes) == 3 and sizes[-1] == len(itda)
    assert len(df) == len(sizes) * 3
    assert sorted(set(df["dictionary_size"])) == sizes and sorted(set(df["k"])) == [1, 2, 4]
    assert df["ce_clean"].nunique() == 1 and df["ce_zero"].nunique() == 1  # computed once
    assert (df["dictionary_full_size"] == len(itda)).all()
    full = df[(df["dictionary_size"] == len(itda)) & (df["k"] == 1)].iloc[0]
    ce = perfect_reconstruction_tol(llama, docs, 80)["ce"]
    assert full["ce_loss_score"] == pytest.approx(1.0, abs=ce / abs(full["ce_clean"] - full["ce_zero"]))
    # the k=1 full-size row agrees with a plain evaluation: the same batches, dictionary and k run the very
    # same computation, bit for bit
    single = evaluate(llama, itda, docs, k=1, max_tokens=80)
    assert full["ce_spliced"] == single.ce_spliced
    fig = plot_sweep(df)
    assert len(fig.data) == len(sizes)
    written, message = save_figure(fig, tmp_path / "sweep")
    assert (tmp_path / "sweep.html").is_file()
    assert (tmp_path / "sweep.png").is_file() or (message and "PNG" in message)
    assert written[0] == tmp_path / "sweep.html"


def test_sweep_on_encoder_plots_fvu(bert: LoadedModel, docs: Corpus) -> None:
    from itda_core.trainer import train

    itda = train(bert, docs, layers=[LAYER], k=4, max_tokens=None, progress=False)[LAYER]
    df = sweep(bert, itda, docs, ks=(2, 4), sizes=[len(itda)], max_tokens=60)
    assert len(df) == 2 and df["ce_loss_score"].isna().all()
    assert "variance" in plot_sweep(df).layout.yaxis.title.text


# ---- command line -------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def saved(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A tiny Llama saved to a folder, a .txt corpus, and a dictionary trained on its training split."""
    from itda_core.corpus import load_corpus
    from itda_core.models import load_model
    from itda_core.trainer import train

    root = tmp_path_factory.mktemp("eval_cli")
    tiny = tiny_model("llama")
    tiny.model.save_pretrained(root / "model")
    tiny.tokenizer.save_pretrained(root / "model")
    corpus_file = root / "corpus.txt"
    corpus_file.write_text("\n".join(f"{t} ({c})" for c in range(3) for t in TEXTS) + "\n")
    lm = load_model(str(root / "model"), device="cpu")
    train_part, _ = load_corpus(str(corpus_file)).split(0.25)
    itda = train(lm, train_part, layers=[LAYER], k=4, max_tokens=None, progress=False)[LAYER]
    itda.save(root / "dicts" / itda.config.site)
    return {
        "root": root,
        "model": root / "model",
        "corpus": corpus_file,
        "dictionary": root / "dicts" / itda.config.site,
    }


def cli() -> typer.Typer:
    from itda_core.cli.evaluate import register

    app = typer.Typer()
    register(app)

    @app.command()
    def other() -> None:  # a second command, so that typer keeps "eval" as a sub-command
        """Unused."""

    return app


def test_cli_eval_writes_results(saved: dict[str, Path]) -> None:
    out = saved["root"] / "results.json"
    args = [
        "eval",
        "--dictionary",
        str(saved["dictionary"]),
        "--corpus",
        str(saved["corpus"]),
        "--held-out",
        "0.25",
        "--max-tokens",
        "200",
        "--out",
        str(out),
        "--no-progress",
        "--device",
        "cpu",
    ]
    res = CliRunner().invoke(cli(), args)
    assert res.exit_code == 0, res.output
    data = json.loads(out.read_text())
    assert math.isfinite(data["ce_loss_score"]) and data["k"] == 4
    assert data["corpus_id"].endswith(data["dictionary_corpus_id"].split(":train:")[-1])
    assert "CE loss score" in res.output and "warning" not in res.output


def test_cli_eval_sweep(saved: dict[str, Path]) -> None:
    out = saved["root"] / "sweep.json"
    args = [
        "eval",
        "--dictionary",
        str(saved["dictionary"]),
        "--model",
        str(saved["model"]),
        "--corpus",
        str(saved["corpus"]),
        "--held-out",
        "0.25",
        "--k",
        "2",
        "--max-tokens",
        "100",
        "--sweep",
        "--ks",
        "1,3",
        "--out",
        str(out),
        "--no-progress",
        "--device",
        "cpu",
    ]
    res = CliRunner().invoke(cli(), args)
    assert res.exit_code == 0, res.output
    rows = json.loads(out.read_text())
    assert len(rows) == 2 * len(default_sizes(rows[0]["dictionary_full_size"]))
    assert (saved["root"] / "sweep_sweep.html").is_file()


def test_cli_eval_errors_and_help(saved: dict[str, Path]) -> None:
    res = CliRunner().invoke(cli(), ["eval", "--dictionary", str(saved["root"] / "dicts"), "--device", "cpu"])
    assert res.exit_code != 0 and "holds 1 dictionaries" in str(res.exception)
    res = CliRunner().invoke(cli(), ["eval", "--help"], env={"COLUMNS": "200"})
    assert res.exit_code == 0
    for option in (
        "--dictionary",
        "--model",
        "--corpus",
        "--held-out",
        "--k",
        "--max-tokens",
        "--sweep",
        "--ks",
        "--sizes",
        "--out",
        "--plot",
        "--seq-len",
        "--batch-size",
        "--splice-special",
        "--exclude-first",
        "--device",
    ):
        assert option in res.output, option
