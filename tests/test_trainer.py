"""Greedy trainer invariants, determinism, interrupts, and the provenance check."""

from __future__ import annotations

import pytest
import torch
from tiny import tiny_corpus, tiny_model

from itda_core import mp
from itda_core import trainer as trainer_mod
from itda_core.errors import ITDAError
from itda_core.extraction import extract
from itda_core.provenance import Provenance
from itda_core.provenance_check import check_provenance
from itda_core.trainer import TrainConfig, Trainer, _first_unique_rows, normalised_error, train


@pytest.fixture(scope="module")
def gpt2():
    return tiny_model("gpt2")


@pytest.fixture(scope="module")
def corpus16():
    return tiny_corpus(n_copies=2)


def test_normalised_error_matches_cosine_formula():
    x = torch.randn(50, 16)
    xh = x + 0.3 * torch.randn(50, 16)
    cos = torch.nn.functional.cosine_similarity(x, xh, dim=-1)
    torch.testing.assert_close(normalised_error(x, xh), (2 - 2 * cos) / 16)
    assert torch.allclose(normalised_error(x, torch.zeros_like(x)), torch.full((50,), 2 / 16))


def test_first_unique_rows_most_frequent_first():
    x = torch.tensor([[1.0], [2.0], [2.0], [3.0], [3.0], [3.0], [4.0]])
    first, counts = _first_unique_rows(x)
    assert first.tolist() == [3, 1, 0, 6] and counts.tolist() == [3, 2, 1, 1]


def test_invariants(gpt2, corpus16):
    dicts = train(gpt2, corpus16, layers=[0, 2], k=8, batch_size=4, max_tokens=None, progress=False)
    assert sorted(dicts) == [0, 2]
    for itda in dicts.values():
        norms = itda.atoms.norm(dim=-1)
        torch.testing.assert_close(norms, torch.ones_like(norms))
        init = itda.config.init_atoms
        assert 0 < init <= gpt2.d_model
        assert torch.isnan(itda.add_error[:init]).all()
        later = itda.add_error[init:]
        assert len(itda) > init, "a random model should need atoms beyond the initial ones"
        assert (later > itda.config.threshold).all(), "every atom added after init was over the threshold"
        assert len(set(itda.provenance.keys())) == len(itda), "no source token is added twice"


def test_atoms_reencode_to_zero_error(gpt2, corpus16):
    itda = train(gpt2, corpus16, layers=[1], k=8, batch_size=4, max_tokens=None, progress=False)[1]
    acts = torch.cat([b.acts[1] for b in extract(gpt2, corpus16, [1], progress=False)])
    prov = torch.cat(
        [b.provenance.doc_id * 1000 + b.provenance.position for b in extract(gpt2, corpus16, [1], progress=False)]
    )
    keys = itda.provenance.doc_id * 1000 + itda.provenance.position
    rows = torch.stack([(prov == key).nonzero().flatten()[0] for key in keys])
    x = acts[rows]
    idx, coef = itda.encode(x)
    err = normalised_error(x, itda.decode(idx, coef))
    assert float(err.max()) < 1e-8


def test_deterministic_and_one_pass_equals_separate_runs(gpt2, corpus16):
    opts = {"k": 8, "batch_size": 4, "max_tokens": 300, "progress": False}
    both = train(gpt2, corpus16, layers=[0, 2], **opts)
    again = train(gpt2, corpus16, layers=[0, 2], **opts)
    alone = train(gpt2, corpus16, layers=[2], **opts)
    assert torch.equal(both[2].atoms, again[2].atoms)
    assert both[2].provenance.keys() == again[2].provenance.keys()
    torch.testing.assert_close(both[2].atoms, alone[2].atoms)
    assert both[2].provenance.keys() == alone[2].provenance.keys()


def test_gram_memory_tiers_build_the_same_dictionary(gpt2, corpus16, monkeypatch):
    # a float32 Gram matrix, one that moves to float16 when float32 no longer fits (m^2 halves always
    # fit), and the textbook fallback once neither fits: the same atoms from the same source tokens
    opts = {"k": 8, "batch_size": 4, "max_tokens": None, "progress": False}
    roomy = train(gpt2, corpus16, layers=[1], **opts)[1]
    m = len(roomy)
    screened: list[int] = []
    original = mp._gram_mp_screened
    monkeypatch.setattr(mp, "_gram_mp_screened", lambda *a: screened.append(1) or original(*a))
    for name, budget in {"float16": m * m * 2, "textbook": (m // 4) ** 2 * 2}.items():
        screened.clear()
        tight = train(gpt2, corpus16, layers=[1], gram_memory_gib=budget / 2**30, **opts)[1]
        assert tight.provenance.keys() == roomy.provenance.keys(), name
        torch.testing.assert_close(tight.atoms, roomy.atoms)
        if name == "float16" and mp._screened_kernel() is not None:
            assert screened, "the float16 tier was used"


def test_early_stop_builds_the_same_dictionary(gpt2, corpus16, monkeypatch):
    # MP stops a token once its residual proves it stays under the threshold: the atoms, their sources and
    # their recorded errors are those of the run that encodes every token with all k steps
    opts = {"k": 8, "batch_size": 4, "max_tokens": None, "progress": False}
    full = train(gpt2, corpus16, layers=[0, 2], early_stop=False, **opts)
    cut_rows: list[int] = []
    original = trainer_mod.matching_pursuit

    def spy(x, atoms, k, **kw):
        idx, coef = original(x, atoms, k, **kw)
        if kw.get("stop_residual") is not None:
            cut_rows.append(int((coef[:, -1] == 0).sum()))
        return idx, coef

    monkeypatch.setattr(trainer_mod, "matching_pursuit", spy)
    fast = train(gpt2, corpus16, layers=[0, 2], **opts)
    assert sum(cut_rows) > 0, "some tokens stopped early"
    for layer in (0, 2):
        assert fast[layer].provenance.keys() == full[layer].provenance.keys()
        assert torch.equal(fast[layer].atoms, full[layer].atoms)
        torch.testing.assert_close(fast[layer].add_error, full[layer].add_error, equal_nan=True)


def test_early_stop_mean_error_is_the_sampled_tokens_full_error():
    # the reported mean error comes from every ERROR_SAMPLE-th token, which runs all k steps
    d, k, n = 16, 6, 200
    g = torch.Generator().manual_seed(3)
    base = torch.randn(d, d, generator=g)
    x = torch.cat([base[torch.randint(0, d, (n // 2,), generator=g)] + 0.05 * torch.randn(n // 2, d, generator=g),
                   torch.randn(n // 2, d, generator=g)])[torch.randperm(n, generator=g)]
    prov = Provenance(doc_id=torch.zeros(n, dtype=torch.long), position=torch.arange(n),
                      token_id=torch.zeros(n, dtype=torch.long), char_start=torch.zeros(n, dtype=torch.long),
                      char_end=torch.zeros(n, dtype=torch.long), token_str=[""] * n)
    seed_prov = prov.select(torch.arange(d))
    builders = []
    for early in (True, False):
        b = trainer_mod.LayerBuilder(d, k, 0.3 / d, None, True, torch.device("cpu"), 1 << 20, early_stop=early)
        b.initialise(base, seed_prov)
        builders.append(b)
    idx, coef = mp.matching_pursuit(x, builders[0].atoms, k)
    full_err = normalised_error(x, mp.reconstruct(idx, coef, builders[0].atoms))
    (added_fast, mean_fast), (added_full, mean_full) = (b.step(x, prov) for b in builders)
    assert added_fast == added_full > 0
    assert torch.equal(builders[0].atoms, builders[1].atoms)
    assert mean_full == pytest.approx(float(full_err.mean()), rel=1e-5)
    assert mean_fast == pytest.approx(float(full_err[:: trainer_mod.ERROR_SAMPLE].mean()), rel=1e-5)


def test_stop_fraction_guarantees_the_threshold():
    d, thr = 64, 0.3 / 64
    frac = trainer_mod.stop_fraction(thr, d)
    assert frac is not None and 0 < frac < 1 - 0.85**2
    # the worst reconstruction with |x - x_hat|^2 = frac |x|^2 is still under the threshold
    x = torch.zeros(1, d)
    x[0, 0] = 1.0
    r = torch.zeros(1, d)
    r[0, 0], r[0, 1] = frac, (frac * (1 - frac)) ** 0.5  # |r|^2 = frac, r tangent to the cone of x_hat
    assert float(normalised_error(x, x - r)) < thr
    assert trainer_mod.stop_fraction(0.0, d) is None  # threshold 0: every inexact token is added
    assert trainer_mod.stop_fraction(1.0, d) == pytest.approx(1 - trainer_mod.STOP_MARGIN)


def test_max_size_and_crop(gpt2, corpus16):
    itda = train(gpt2, corpus16, layers=[1], k=8, batch_size=4, max_tokens=None, max_size=40, progress=False)[1]
    assert len(itda) == 40
    full = train(gpt2, corpus16, layers=[1], k=8, batch_size=4, max_tokens=None, progress=False)[1]
    cropped = full.crop(35)
    assert len(cropped) == 35
    assert torch.equal(cropped.atoms, full.atoms[:35])
    assert cropped.provenance.keys() == full.provenance.keys()[:35]
    with pytest.raises(ITDAError):
        full.crop(0)


def test_dedupe_within_batch(gpt2):
    corpus = tiny_corpus()
    doubled = type(corpus)(
        name="dup",
        corpus_id="dup",
        sha256="x",
        documents=[
            type(corpus.documents[0])(doc_id=i, text=corpus.documents[i // 2].text, source="dup") for i in range(8)
        ],
    )
    with_dedupe = train(gpt2, doubled, layers=[1], k=4, batch_size=8, threshold=0.0, progress=False)[1]
    without = train(gpt2, doubled, layers=[1], k=4, batch_size=8, threshold=0.0, dedupe=False, progress=False)[1]
    unique = torch.unique(with_dedupe.atoms, dim=0).shape[0]
    assert unique == len(with_dedupe)
    assert len(without) > len(with_dedupe)


def test_interrupt_keeps_partial_only_when_asked(gpt2, corpus16, monkeypatch):
    real_step = trainer_mod.LayerBuilder.step
    calls = {"n": 0}

    def flaky(self, x, prov):
        calls["n"] += 1
        if calls["n"] == 3:
            raise KeyboardInterrupt
        return real_step(self, x, prov)

    monkeypatch.setattr(trainer_mod.LayerBuilder, "step", flaky)
    with pytest.raises(KeyboardInterrupt):
        Trainer(gpt2, corpus16, TrainConfig(layers=[0], k=4, batch_size=2, progress=False)).run()
    calls["n"] = 0
    trainer = Trainer(
        gpt2, corpus16, TrainConfig(layers=[0], k=4, batch_size=2, progress=False, save_on_interrupt=True)
    )
    dicts = trainer.run()
    assert dicts[0].config.interrupted and trainer.report.interrupted
    assert 0 < dicts[0].config.tokens_seen < sum(1 for _ in corpus16.documents) * 128


def test_bad_options(gpt2, corpus16):
    for opts, msg in [({"k": 0}, "k must"), ({"threshold": -1.0}, "threshold"), ({"max_size": 0}, "max_size"),
                      ({"gram_memory_gib": 0.0}, "gram_memory_gib")]:
        with pytest.raises(ITDAError, match=msg):
            Trainer(gpt2, corpus16, TrainConfig(layers=[0], **opts))


def test_gram_memory_beyond_ram_warns(gpt2, corpus16, caplog):
    with caplog.at_level("WARNING", logger="itda_core.trainer"):
        Trainer(gpt2, corpus16, TrainConfig(layers=[0], gram_memory_gib=1e6))
    assert "more than the" in caplog.text
    caplog.clear()
    with caplog.at_level("WARNING", logger="itda_core.trainer"):
        Trainer(gpt2, corpus16, TrainConfig(layers=[0]))
    assert "gram_memory_gib" not in caplog.text


def test_provenance_check_passes_and_catches_drift(gpt2, corpus16):
    itda = train(gpt2, corpus16, layers=[2], k=8, batch_size=4, max_tokens=None, progress=False)[2]
    result = check_provenance(itda, gpt2, corpus16)
    assert result.ok, result.summary()
    assert float(result.cosine.min()) > 0.9999
    # shift the provenance by one atom, as the reference code once did by accident
    itda.provenance = itda.provenance.select(torch.roll(torch.arange(len(itda)), 1))
    assert not check_provenance(itda, gpt2, corpus16).ok


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_cuda_training_matches_cpu(corpus16):
    """Device-agnostic: the same run on CUDA gives the same atoms and provenance as on CPU."""
    cpu_model = tiny_model("llama")
    cuda_model = tiny_model("llama")
    cuda_model.model.to("cuda")
    cuda_model.device = torch.device("cuda")
    opts = {"layers": [0, 2], "k": 8, "batch_size": 4, "max_tokens": None, "progress": False}
    on_cpu = train(cpu_model, corpus16, **opts)
    on_gpu = train(cuda_model, corpus16, **opts)
    for layer in (0, 2):
        assert on_gpu[layer].provenance.keys() == on_cpu[layer].provenance.keys()
        torch.testing.assert_close(on_gpu[layer].atoms, on_cpu[layer].atoms, rtol=1e-4, atol=1e-5)
