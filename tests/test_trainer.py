"""Greedy trainer invariants, determinism, interrupts, and the provenance check."""

from __future__ import annotations

import sys
import weakref

import pytest
import torch

from itda_core import layer_builder, mp
from itda_core.errors import ITDAError
from itda_core.extraction import extract
from itda_core.layer_builder import _first_unique_rows, normalised_error
from itda_core.mp import backends, dispatch, hugepages, reference
from itda_core.mp import gram as tiers
from itda_core.provenance import Provenance
from itda_core.provenance_check import check_provenance
from itda_core.trainer import TrainConfig, Trainer, train
from tests.tiny import tiny_corpus, tiny_model
from tests.tolerance import cosine_tol, gamma, mp_tol


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
    # two float32 cosines, each within cosine_tol(d) of the exact one; the error is 2 (1 - cos) / d
    torch.testing.assert_close(normalised_error(x, xh), (2 - 2 * cos) / 16, atol=2 * 2 * cosine_tol(16) / 16, rtol=0)
    assert torch.equal(normalised_error(x, torch.zeros_like(x)), torch.full((50,), 2 / 16))  # cos = 0 exactly


def test_first_unique_rows_most_frequent_first():
    x = torch.tensor([[1.0], [2.0], [2.0], [3.0], [3.0], [3.0], [4.0]])
    first, counts = _first_unique_rows(x)
    assert first.tolist() == [3, 1, 0, 6] and counts.tolist() == [3, 2, 1, 1]


def _err_margin(d: int, k: int) -> float:
    """How far the trainer's float32 error can sit from the exact one: its cosine's rounding, plus a
    reconstruction that is off by the MP rounding bound (k steps) relative to |x_hat| >= |x| / 2 (a token near
    the threshold has cos ~ 0.85, so |x_hat| = cos |x|). The error is 2 (1 - cos) / d."""
    return 2 * (cosine_tol(d) + 2 * k * mp_tol(d, k)) / d


def _reference_mp_error(x: torch.Tensor, atoms: torch.Tensor, k: int) -> torch.Tensor:
    """Textbook MP and the normalised error in float64, written out here, independent of itda_core."""
    x64, a64 = x.double(), atoms.double()
    r = x64.clone()
    for _ in range(k):
        corr = r @ a64.T
        j = corr.abs().argmax(dim=1)
        r -= corr.gather(1, j[:, None]) * a64[j]
    x_hat = x64 - r
    cos = (x64 * x_hat).sum(1) / (x64.norm(dim=1) * x_hat.norm(dim=1)).clamp_min(1e-300)
    return (2 - 2 * cos) / x.shape[1]


def test_invariants(gpt2, corpus16):
    k, batch_size = 8, 4
    dicts = train(gpt2, corpus16, layers=[0, 2], k=k, batch_size=batch_size, max_tokens=None, progress=False)
    assert sorted(dicts) == [0, 2]
    d = gpt2.d_model
    for layer, itda in dicts.items():
        norms = itda.atoms.norm(dim=-1)
        # x / |x|: a norm (d products), a square root and a division, then the norm of the result
        torch.testing.assert_close(norms, torch.ones_like(norms), atol=2 * gamma(d + 2), rtol=0)
        init = itda.config.init_atoms
        assert 0 < init <= d
        assert torch.isnan(itda.add_error[:init]).all()
        later = itda.add_error[init:]
        assert len(itda) > init, "a random model should need atoms beyond the initial ones"
        assert (later > itda.config.threshold).all(), "every atom added after init was over the threshold"
        assert len(set(itda.provenance.keys())) == len(itda), "no source token is added twice"
        _assert_batch_rule(itda, list(extract(gpt2, corpus16, [layer], batch_size=batch_size, progress=False)),
                           layer, k)


def _assert_batch_rule(itda, batches, layer: int, k: int) -> None:
    """Replay the run batch by batch with an independent float64 rule. Against the atoms the trainer had when
    it encoded a batch (those from earlier batches and the batch's own initial atoms: a prefix, since atoms are
    kept in insertion order), every activation whose error exceeds the threshold is added, all of them
    together, and none of the others: a trainer that adds atoms one at a time, or drops some, fails. Up to
    rounding (a token within the float32 error margin of the threshold may go either way), and except exact
    copies of an activation already added (dedupe)."""
    thr, d = itda.config.threshold, itda.config.d_model
    margin = _err_margin(d, k)
    where = {key: i for i, key in enumerate(itda.provenance.keys())}
    is_init = torch.isnan(itda.add_error)
    seen: set[bytes] = set()
    done = checked = ambiguous = 0  # done: atoms from the batches replayed so far
    for batch in batches:
        x = batch.acts[layer].float()
        keys = batch.provenance.keys()
        rows = [where.get(key, -1) for key in keys]
        mine = [r for r in rows if r >= 0]
        size = done + sum(bool(is_init[r]) for r in mine)  # the dictionary this batch was encoded with
        assert all(r >= size for r in mine if not is_init[r]), "a batch's added atoms follow its initial ones"
        assert all(done <= r < size for r in mine if is_init[r])
        done += len(mine)
        if size == 0:
            continue
        err = _reference_mp_error(x, itda.atoms[:size], k)
        for i, r in enumerate(rows):
            raw = x[i].numpy().tobytes()
            copy = raw in seen
            if r >= 0:
                seen.add(raw)
            if r >= 0 and is_init[r]:
                continue  # an initial atom: chosen by frequency, not by error
            e = float(err[i])
            if abs(e - thr) <= margin:
                ambiguous += 1
            elif r >= 0:
                checked += 1
                assert e > thr, f"layer {layer}: token {keys[i]} was added with error {e:.3e} <= {thr:.3e}"
            elif not copy and bool(x[i].norm() > 0):
                checked += 1
                assert e <= thr, f"layer {layer}: token {keys[i]} has error {e:.3e} > {thr:.3e} but was not added"
    assert done == len(itda), "every atom comes from a replayed batch"
    assert checked > 100 and ambiguous <= checked // 20, (checked, ambiguous)


def test_atoms_reencode_to_zero_error(gpt2, corpus16):
    k = 8
    itda = train(gpt2, corpus16, layers=[1], k=k, batch_size=4, max_tokens=None, progress=False)[1]
    # the same batches as in training, so the activations are those the atoms were made from
    batches = list(extract(gpt2, corpus16, [1], batch_size=4, progress=False))
    acts = torch.cat([b.acts[1] for b in batches])
    prov = torch.cat([b.provenance.doc_id * 1000 + b.provenance.position for b in batches])
    keys = itda.provenance.doc_id * 1000 + itda.provenance.position
    rows = torch.stack([(prov == key).nonzero().flatten()[0] for key in keys])
    x = acts[rows]
    idx, coef = itda.encode(x)
    err = normalised_error(x, itda.decode(idx, coef))
    # exact arithmetic gives 0: the first step takes the atom x / |x| itself. In float32 the residual stays
    # within MP's rounding bound of |x| and the cosine within its own, and err = 2 (1 - cos) / d
    d = gpt2.d_model
    bound = 2 * (cosine_tol(d) + mp_tol(d, k) ** 2) / d
    assert float(err.max()) <= bound
    assert (idx[:, 0] == torch.arange(len(itda))).float().mean() > 0.9  # (a near-duplicate atom may win)


def test_deterministic_and_one_pass_equals_separate_runs(gpt2, corpus16):
    opts = {"k": 8, "batch_size": 4, "max_tokens": 300, "progress": False}
    both = train(gpt2, corpus16, layers=[0, 2], **opts)
    again = train(gpt2, corpus16, layers=[0, 2], **opts)
    alone = train(gpt2, corpus16, layers=[2], **opts)
    assert torch.equal(both[2].atoms, again[2].atoms)
    assert both[2].provenance.keys() == again[2].provenance.keys()
    assert torch.equal(both[2].atoms, alone[2].atoms)  # the same forward pass up to block 2, the same arithmetic
    assert both[2].provenance.keys() == alone[2].provenance.keys()


class _GramMemory:
    """Counts the Gram matrices MP and the Gram cache hold (square arrays from hugepages.empty; the [chunk, m]
    correlation buffer is MP's work memory, not a Gram matrix) and the most bytes alive at once."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.live: list[tuple[weakref.ref, int]] = []
        self.peak = 0
        real = hugepages.empty

        def empty(shape, dtype, device="cpu"):
            t = real(shape, dtype, device)
            if len(shape) == 2 and shape[0] == shape[1] and sys._getframe(1).f_code.co_name != "_kernel_outputs":
                self.live = [(ref, b) for ref, b in self.live if ref() is not None]
                self.live.append((weakref.ref(t), t.numel() * t.element_size()))
                self.peak = max(self.peak, sum(b for _, b in self.live))
            return t

        monkeypatch.setattr(hugepages, "empty", empty)

    def reset(self) -> None:
        self.live, self.peak = [], 0


def test_gram_memory_tiers_run_their_paths_within_their_memory(gpt2, corpus16, monkeypatch):
    # a float32 Gram matrix, one that moves to float16 when float32 no longer fits (m^2 halves always
    # fit), and the textbook loop once neither fits: each tier runs the MP path it names, never holds more
    # Gram memory than its budget, and builds the same atoms from the same source tokens
    opts = {"k": 8, "batch_size": 4, "max_tokens": None, "progress": False}
    paths: list[str] = []
    paths_at = [(dispatch, "_gram_mp_numba"), (dispatch, "_gram_mp_screened"), (dispatch, "_gram_mp_torch"),
                (reference, "_textbook_chunked")]  # patched where they live, so that every caller sees the spy
    for module, name in paths_at:
        real = getattr(module, name)
        monkeypatch.setattr(module, name,
                            lambda *a, _real=real, _name=name, **kw: paths.append(_name) or _real(*a, **kw))
    for name in ("gram_matrix", "gram_matrix_half", "auto_gram"):  # the trainer's only Gram matrix is its cache
        monkeypatch.setattr(tiers, name, lambda *a, _name=name, **kw: pytest.fail(f"MP built its own Gram ({_name})"))
    roomy = train(gpt2, corpus16, layers=[1], **opts)[1]
    assert paths and set(paths) <= {"_gram_mp_numba", "_gram_mp_torch"}, paths
    m = len(roomy)
    numba = backends._screened_kernel() is not None
    memory = _GramMemory(monkeypatch)
    # float16: the last batches' float32 matrix does not fit, their float16 one does; textbook: the float16
    # matrix of two thirds of the final atoms fits, so the layer runs the Gram paths first, then outgrows them
    for name, budget in {"float16": m * m * 2, "textbook": (2 * m // 3) ** 2 * 2}.items():
        paths.clear()
        memory.reset()
        tight = train(gpt2, corpus16, layers=[1], gram_memory_gib=budget / 2**30, **opts)[1]
        assert tight.provenance.keys() == roomy.provenance.keys(), name
        assert torch.equal(tight.atoms, roomy.atoms)  # the same activations, normalised the same way
        assert 0 < memory.peak <= budget, (name, memory.peak, budget)
        if name == "float16":
            assert "_textbook_chunked" not in paths, paths
            if numba:
                assert paths[-1] == "_gram_mp_screened", paths
        else:
            assert paths[-1] == "_textbook_chunked", paths
            first = paths.index("_textbook_chunked")
            assert first > 0, "the Gram paths ran while the matrix fit"
            assert set(paths[first:]) == {"_textbook_chunked"}, "past its share the layer keeps to the textbook loop"


def test_early_stop_builds_the_same_dictionary(gpt2, corpus16, monkeypatch):
    # MP stops a token once its residual proves it stays under the threshold: the atoms, their sources and
    # their recorded errors are those of the run that encodes every token with all k steps
    opts = {"k": 8, "batch_size": 4, "max_tokens": None, "progress": False}
    full = train(gpt2, corpus16, layers=[0, 2], early_stop=False, **opts)
    cut_rows: list[int] = []
    original = layer_builder.matching_pursuit

    def spy(x, atoms, k, **kw):
        idx, coef = original(x, atoms, k, **kw)
        if kw.get("stop_residual") is not None:
            cut_rows.append(int((coef[:, -1] == 0).sum()))
        return idx, coef

    monkeypatch.setattr(layer_builder, "matching_pursuit", spy)
    fast = train(gpt2, corpus16, layers=[0, 2], **opts)
    assert sum(cut_rows) > 0, "some tokens stopped early"
    for layer in (0, 2):
        assert fast[layer].provenance.keys() == full[layer].provenance.keys()
        assert torch.equal(fast[layer].atoms, full[layer].atoms)
        # the added tokens ran all k steps in both runs: their errors differ at most by rounding
        margin = 2 * 2 * cosine_tol(gpt2.d_model) / gpt2.d_model
        torch.testing.assert_close(fast[layer].add_error, full[layer].add_error, equal_nan=True, atol=margin, rtol=0)


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
        b = layer_builder.LayerBuilder(d, k, 0.3 / d, None, True, torch.device("cpu"), 1 << 20, early_stop=early)
        b.initialise(base, seed_prov)
        builders.append(b)
    idx, coef = mp.matching_pursuit(x, builders[0].atoms, k)
    full_err = normalised_error(x, mp.reconstruct(idx, coef, builders[0].atoms))
    (added_fast, mean_fast), (added_full, mean_full) = (b.step(x, prov) for b in builders)
    assert added_fast == added_full > 0
    assert torch.equal(builders[0].atoms, builders[1].atoms)
    # the builder's MP (its Gram cache) and this one round differently: the errors agree within the margin
    margin = _err_margin(d, k)
    assert mean_full == pytest.approx(float(full_err.mean()), abs=margin, rel=0)
    assert mean_fast == pytest.approx(float(full_err[:: layer_builder.ERROR_SAMPLE].mean()), abs=margin, rel=0)


def test_stop_fraction_guarantees_the_threshold():
    d, thr = 64, 0.3 / 64
    frac = layer_builder.stop_fraction(thr, d)
    assert frac is not None and 0 < frac < 1 - 0.85**2
    # the worst reconstruction with |x - x_hat|^2 = frac |x|^2 is still under the threshold
    x = torch.zeros(1, d)
    x[0, 0] = 1.0
    r = torch.zeros(1, d)
    r[0, 0], r[0, 1] = frac, (frac * (1 - frac)) ** 0.5  # |r|^2 = frac, r tangent to the cone of x_hat
    assert float(normalised_error(x, x - r)) < thr
    assert layer_builder.stop_fraction(0.0, d) is None  # threshold 0: every inexact token is added
    assert layer_builder.stop_fraction(1.0, d) == 1 - layer_builder.STOP_MARGIN  # cos_needed is 0: the same float64 sum


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
    real_step = layer_builder.LayerBuilder.step
    calls = {"n": 0}

    def flaky(self, x, prov):
        calls["n"] += 1
        if calls["n"] == 3:
            raise KeyboardInterrupt
        return real_step(self, x, prov)

    monkeypatch.setattr(layer_builder.LayerBuilder, "step", flaky)
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
        # different kernels round the forward pass differently: per block, products of length d_model and
        # d_ff and an attention over the sequence, each within gamma of its length (relative to unit atoms)
        cfg = cpu_model.model.config
        tol = gamma(cfg.num_hidden_layers * (cfg.hidden_size + cfg.intermediate_size + 128))
        torch.testing.assert_close(on_gpu[layer].atoms, on_cpu[layer].atoms, rtol=0, atol=tol)


def test_config_records_the_precision_of_the_activations(gpt2, corpus16):
    config = TrainConfig(layers=[1], k=4, batch_size=4, max_tokens=64, progress=False)
    plain = Trainer(gpt2, corpus16, config).run()[1].config
    assert (plain.activation_dtype, plain.cache_dtype) == ("float32", "")
    # what a remote (NDIF) run hands over: the activations in the precision the model ran in there
    batches = list(extract(gpt2, corpus16, [1], batch_size=4, max_tokens=64, progress=False))
    for batch in batches:
        batch.acts[1] = batch.acts[1].to(torch.bfloat16)
    half = Trainer(gpt2, corpus16, config).run(source=batches)[1].config
    assert (half.activation_dtype, half.cache_dtype) == ("bfloat16", "")
