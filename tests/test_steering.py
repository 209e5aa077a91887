"""Steering (itda_core.steering) on tiny random causal LMs: strength 0 is the plain continuation (and the plain
one is what transformers' generate gives), a large strength changes it, the hook goes away (even on an error),
greedy and seeded sampling are deterministic without touching the global RNG, a plain continuation kept from
an earlier call gives the same result (and one for other settings is refused), exactly strength x norm x
direction is added after the block at every steered position of the steered run and nothing to the plain
run, outliers and special tokens are left alone, and every bound is a clear ITDAError."""

from __future__ import annotations

import dataclasses
import math

import pytest
import torch

from itda_core import steering as S
from itda_core.errors import ITDAError
from itda_core.extraction import residual_stream
from tests.tiny import tiny_model
from tests.tolerance import unit_roundoff

PROMPT = "The capital of France is Paris. Matching pursuit picks"
LAYER = 1


@pytest.fixture(scope="module")
def llama():
    return tiny_model("llama")


@pytest.fixture(scope="module")
def gpt2():
    return tiny_model("gpt2")


def _atom(model, text: str = "A dictionary of real activations remembers", position: int = 3) -> torch.Tensor:
    """A unit direction that is a real activation at the layer (what an ITDA atom is)."""
    ids = torch.tensor([model.tokenizer(text)["input_ids"]])
    x = residual_stream(model, ids, torch.ones_like(ids), [LAYER])[LAYER][0, position]
    return x / x.norm()


def _no_hooks(model) -> bool:
    return all(not block._forward_hooks and not block._forward_pre_hooks for block in model.blocks)


@pytest.mark.parametrize("kind", ["llama", "gpt2"])
def test_strength_zero_is_the_plain_continuation_which_generate_gives(kind, llama, gpt2):
    model = {"llama": llama, "gpt2": gpt2}[kind]
    r = S.steer_generate(model, PROMPT, _atom(model), LAYER, 0.0, S.Decoding(max_new_tokens=12))
    assert r.steered_ids == r.unsteered_ids and r.steered == r.unsteered
    ids = torch.tensor([model.tokenizer(PROMPT)["input_ids"]])
    with torch.inference_mode():
        ref = model.model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), max_new_tokens=12,
                                   do_sample=False, pad_token_id=model.tokenizer.pad_token_id)  # fmt: skip
    assert r.unsteered_ids == ref[0, ids.shape[1] :].tolist()


@pytest.mark.parametrize("sample", [False, True])
def test_a_large_strength_changes_the_continuation(llama, sample):
    r = S.steer_generate(llama, PROMPT, _atom(llama), LAYER, S.MAX_STRENGTH, S.Decoding(12, sample=sample, seed=3))
    assert r.steered_ids != r.unsteered_ids
    assert r.added_norm == pytest.approx(S.MAX_STRENGTH * r.norm)


def test_the_hook_is_removed_and_the_model_is_unchanged(llama, monkeypatch):
    ids = torch.tensor([llama.tokenizer(PROMPT)["input_ids"]])
    with torch.inference_mode():
        before = llama.model(input_ids=ids).logits
    S.steer_generate(llama, PROMPT, _atom(llama), LAYER, 1.5, S.Decoding(4))
    assert _no_hooks(llama)
    with torch.inference_mode():
        after = llama.model(input_ids=ids).logits
    assert torch.equal(before, after)

    def broken(*_args, **_kwargs):
        raise RuntimeError("boom")

    plain = S.plain_continuation(llama, PROMPT, S.Decoding(4))
    monkeypatch.setattr(S, "_next_tokens", broken)
    with pytest.raises(RuntimeError, match="boom"):  # raised in the steered run, the hook in place
        S.steer_generate(llama, PROMPT, _atom(llama), LAYER, 1.5, S.Decoding(4), plain=plain)
    assert _no_hooks(llama)


def test_greedy_is_deterministic(llama):
    a = S.steer_generate(llama, PROMPT, _atom(llama), LAYER, 2.0, S.Decoding(10))
    b = S.steer_generate(llama, PROMPT, _atom(llama), LAYER, 2.0, S.Decoding(10))
    assert (a.unsteered_ids, a.steered_ids) == (b.unsteered_ids, b.steered_ids)


def test_sampling_is_seeded_shared_by_both_runs_and_leaves_the_global_rng_alone(llama):
    kw = {"max_new_tokens": 10, "sample": True, "temperature": 1.5, "top_k": 200, "top_p": 0.95}
    state = torch.get_rng_state()
    a = S.steer_generate(llama, PROMPT, _atom(llama), LAYER, 2.0, S.Decoding(seed=7, **kw))
    assert torch.equal(torch.get_rng_state(), state)
    torch.manual_seed(123)  # the global RNG plays no part
    b = S.steer_generate(llama, PROMPT, _atom(llama), LAYER, 2.0, S.Decoding(seed=7, **kw))
    assert (a.unsteered_ids, a.steered_ids) == (b.unsteered_ids, b.steered_ids)
    others = [S.plain_continuation(llama, PROMPT, S.Decoding(seed=s, **kw)).ids for s in (8, 9)]
    assert any(o != a.unsteered_ids for o in others)  # the seed is used
    # strength 0: the plain continuation, with the same random numbers
    zero = S.steer_generate(llama, PROMPT, _atom(llama), LAYER, 0.0, S.Decoding(seed=7, **kw))
    assert zero.steered_ids == zero.unsteered_ids == a.unsteered_ids


def test_the_steered_run_draws_the_plain_runs_random_numbers(llama, monkeypatch):
    """Two runs with one seed draw the same uniform at each step (so a token both distributions agree on is
    picked by both): the numbers each run draws are recorded and compared."""
    drawn: list[list[float]] = []
    real = S._next_tokens

    def recording(logits, seen, warpers, gen):
        if seen.shape[1] == len(llama.tokenizer(PROMPT)["input_ids"]):
            drawn.append([])
        state = gen.get_state()
        drawn[-1].append(float(torch.rand((), generator=gen)))
        gen.set_state(state)
        return real(logits, seen, warpers, gen)

    monkeypatch.setattr(S, "_next_tokens", recording)
    S.steer_generate(llama, PROMPT, _atom(llama), LAYER, 2.0, S.Decoding(8, sample=True, seed=11))
    plain, steered = drawn
    n = min(len(plain), len(steered))
    assert n > 1 and plain[:n] == steered[:n]


def test_a_kept_plain_continuation_gives_the_same_result_and_must_match(llama):
    kw = {"max_new_tokens": 8, "sample": True, "temperature": 1.2, "top_k": 50, "top_p": 0.9, "seed": 5}
    fresh = S.steer_generate(llama, PROMPT, _atom(llama), LAYER, 1.5, S.Decoding(**kw))
    plain = S.plain_continuation(llama, PROMPT, S.Decoding(**kw))
    assert plain.ids == fresh.unsteered_ids and not fresh.plain_reused
    again = S.steer_generate(llama, PROMPT, _atom(llama), LAYER, 1.5, S.Decoding(**kw), plain=plain)
    assert (again.unsteered_ids, again.steered_ids) == (fresh.unsteered_ids, fresh.steered_ids)
    assert again.plain_reused and again.plain_seconds == plain.seconds
    for other in ({**kw, "seed": 6}, {**kw, "max_new_tokens": 9}):
        with pytest.raises(ITDAError, match="other settings"):
            S.steer_generate(llama, PROMPT, _atom(llama), LAYER, 1.5, S.Decoding(**other), plain=plain)
    with pytest.raises(ITDAError, match="another prompt"):
        S.steer_generate(llama, PROMPT + " x", _atom(llama), LAYER, 1.5, S.Decoding(**kw), plain=plain)


def test_strength_zero_runs_only_the_prompt_pass(llama):
    plain, atom = S.plain_continuation(llama, PROMPT, S.Decoding(6)), _atom(llama)
    calls: list[int] = []
    handle = llama.blocks[LAYER].register_forward_hook(lambda _m, _i, _o: calls.append(1))
    try:
        r = S.steer_generate(llama, PROMPT, atom, LAYER, 0.0, S.Decoding(6), plain=plain)
    finally:
        handle.remove()
    assert len(calls) == 1 and r.steered_ids == plain.ids and r.norm > 0


def _capture(model, layer: int, before: list, after: list, scale_position: int | None = None):
    """Hooks that see block ``layer``'s output before the steering hook (registered first) and after it (the
    next block's input); ``scale_position`` makes that prompt position an outlier (x50) before steering."""

    def pre(_m, _i, output):
        hidden = output[0] if isinstance(output, tuple) else output
        if scale_position is not None and hidden.shape[1] > 1:
            hidden = hidden.clone()
            hidden[:, scale_position] *= 50
        before.append(hidden.clone())
        return (hidden, *output[1:]) if isinstance(output, tuple) else hidden

    def post(_m, args, kwargs):
        after.append((args[0] if args else kwargs["hidden_states"]).clone())

    return [model.blocks[layer].register_forward_hook(pre),
            model.blocks[layer + 1].register_forward_pre_hook(post, with_kwargs=True)]  # fmt: skip


def test_the_added_vector_is_strength_times_norm_times_direction_at_every_position(llama):
    unit, strength = _atom(llama), -1.5
    before: list = []
    after: list = []
    handles = _capture(llama, LAYER, before, after)
    try:
        plain = S.plain_continuation(llama, PROMPT, S.Decoding(6))
        assert len(before) == len(after) == len(plain.ids)  # one pass per new token, nothing added
        assert all(torch.equal(a, b) for a, b in zip(before, after, strict=True))
        before.clear()
        after.clear()
        r = S.steer_generate(llama, PROMPT, unit, LAYER, strength, S.Decoding(6), plain=plain)
    finally:
        for h in handles:
            h.remove()
    special = llama.tokenizer(PROMPT, return_special_tokens_mask=True)["special_tokens_mask"]
    assert special[0] == 1 and r.skipped == [0]  # the tiny Llama's BOS is not steered
    # the norm: the median over the prompt's own tokens, BOS and the first position left out
    assert r.measured == r.prompt_tokens - 1
    assert r.norm == before[0][0, 1:].norm(dim=-1).quantile(0.5).item()
    delta = strength * r.norm * unit
    assert len(before) == len(after) == len(r.steered_ids)  # the steered run alone: one pass per new token
    u = unit_roundoff(torch.float32)
    for pre, post in zip(before, after, strict=True):
        steered = torch.ones(pre.shape[1], dtype=torch.bool)
        if pre.shape[1] > 1:
            steered[r.skipped] = False
        added = post[0] - pre[0]
        bound = 2 * u * (pre[0].abs() + delta.abs())
        assert ((added[steered] - delta).abs() <= bound[steered]).all()
        assert torch.equal(post[0][~steered], pre[0][~steered])


def test_outlier_positions_are_not_steered_nor_measured(gpt2):
    unit = _atom(gpt2)
    before: list = []
    after: list = []
    plain = S.plain_continuation(gpt2, PROMPT, S.Decoding(2))
    handles = _capture(gpt2, LAYER, before, after, scale_position=4)
    try:
        r = S.steer_generate(gpt2, PROMPT, unit, LAYER, 1.0, S.Decoding(2), plain=plain)
    finally:
        for h in handles:
            h.remove()
    assert r.skipped == [4]  # GPT-2 has no BOS: only the outlier is skipped
    norms = before[0][0].norm(dim=-1)
    assert norms[4] > S.OUTLIER_RATIO * r.norm
    assert r.norm == norms[1:].quantile(0.5).item()  # the median is robust to the outlier
    assert torch.equal(after[0][0, 4], before[0][0, 4])


BAD = [
    ({"prompt": "  "}, "type a prompt"),
    ({"prompt": "x" * (S.MAX_PROMPT_CHARS + 1)}, "characters"),
    ({"prompt": "Paris " * 200}, "tokens"),
    ({"prompt": "a"}, "at least two tokens"),
    ({"strength": S.MAX_STRENGTH + 0.5}, "strength"),
    ({"strength": math.nan}, "strength"),
    ({"max_new_tokens": 0}, "new tokens"),
    ({"max_new_tokens": S.MAX_NEW_TOKENS + 1}, "new tokens"),
    ({"temperature": 0.0}, "temperature"),
    ({"temperature": 3.0}, "temperature"),
    ({"top_k": -1}, "top-k"),
    ({"top_k": S.MAX_TOP_K + 1}, "top-k"),
    ({"top_p": 0.0}, "top-p"),
    ({"top_p": 1.5}, "top-p"),
    ({"seed": -1}, "seed"),
    ({"max_new_tokens": 5.0}, "max_new_tokens must be a whole number"),
    ({"seed": "1"}, "seed must be a whole number"),
    ({"top_k": True}, "top_k must be a whole number"),
    ({"temperature": "hot"}, "temperature must be a number"),
    ({"sample": "yes"}, "sample must be True or False"),
    ({"strength": "2"}, "strength must be a number"),
    ({"layer": 3}, "out of range"),
    ({"direction": torch.zeros(32)}, "zero"),
    ({"direction": torch.ones(31)}, "31 values"),
]


@pytest.mark.parametrize(("change", "message"), BAD)
def test_bounds_raise_one_clear_error(gpt2, change, message):
    fields = {f.name for f in dataclasses.fields(S.Decoding)}
    decoding = S.Decoding(**{k: v for k, v in change.items() if k in fields})
    kw = {"prompt": PROMPT, "direction": torch.ones(32), "layer": LAYER, "strength": 1.0,
          **{k: v for k, v in change.items() if k not in fields}}  # fmt: skip
    with pytest.raises(ITDAError, match=message):
        S.steer_generate(gpt2, decoding=decoding, **kw)
    if decoding != S.Decoding():  # the plain run checks its decoding alone too
        with pytest.raises(ITDAError, match=message):
            S.plain_continuation(gpt2, PROMPT, decoding)
    assert _no_hooks(gpt2)


def test_an_encoder_is_refused():
    with pytest.raises(ITDAError, match="encoder"):
        S.steer_generate(tiny_model("bert", n_layers=2), PROMPT, torch.ones(32), 0, 1.0)
