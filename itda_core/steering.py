"""Steering a causal LM with a direction (an ITDA atom) added to the residual stream, beside the plain run.

:func:`steer_generate` continues one prompt twice, in two one-row runs: plainly (:func:`plain_continuation`,
which a caller may keep and pass back, since it depends on neither atom nor strength) and with
``strength x typical_norm x direction`` added to the output of block ``layer`` (the site the dictionary was
built on, ``blocks.{layer}.hook_resid_post``) at every position, prompt and generated, by a forward hook that
is removed in a ``finally``. Not one batch of two rows: a row's numbers would then depend on the other's (the
decode step's logits differ by ~3e-5 between a batch of one and of two), so a kept plain run and a fresh one
could disagree. ``typical_norm`` is the median residual norm at that layer over the
prompt's own tokens, leaving out special tokens (BOS) and the first position: in many causal LMs it is an
attention sink (SmolLM2-135M's first token has a norm ~150x the median from layer 12 on). Positions whose
norm exceeds :data:`OUTLIER_RATIO` x the typical norm (that sink, massive activations) are not steered, nor
are special tokens: adding to them changes little and only their own huge value.

Sampling is explicit and seeded (a ``torch.Generator`` on the model's device, never the global RNG, which
other threads of a server share): temperature, top-k and top-p as transformers' logits warpers apply them,
then inverse-CDF sampling with ONE uniform number per step from a generator seeded alike in both runs, so the
two runs draw the same random numbers (where the steered distribution equals the plain one they pick the same
token) and both continuations are deterministic for a seed. Greedy decoding takes the argmax.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from numbers import Integral, Real
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch import Tensor

from itda_core.errors import ITDAError

if TYPE_CHECKING:
    from itda_core.models import LoadedModel

MAX_PROMPT_CHARS = 2000  # longer prompts are refused, never truncated silently
MAX_PROMPT_TOKENS = 128  # special tokens included
MAX_NEW_TOKENS = 64
MAX_STRENGTH = 2.0  # |strength| in typical residual norms (SmolLM2: 0.2-0.5 steers, over ~0.7 degenerates)
MIN_TEMPERATURE, MAX_TEMPERATURE = 0.05, 2.0
MAX_TOP_K = 1000  # 0 turns top-k off
MAX_SEED = 2**32 - 1
OUTLIER_RATIO = 4.0  # positions with a norm above this many typical norms are not steered


@dataclass(frozen=True)
class Decoding:
    """How a continuation is decoded, the same for the plain and the steered run: its length, greedy or sampled
    (temperature, top-k with 0 for off, top-p, as transformers' logits warpers apply them), and the seed."""

    max_new_tokens: int = 30
    sample: bool = False
    temperature: float = 1.0
    top_k: int = 0
    top_p: float = 1.0
    seed: int = 0

    def check(self) -> None:
        """Raise one clear ITDAError for the first setting of the wrong type or out of its bounds."""
        for name, kind, what in (("max_new_tokens", Integral, "a whole number"), ("top_k", Integral, "a whole number"),
                                 ("seed", Integral, "a whole number"), ("temperature", Real, "a number"),
                                 ("top_p", Real, "a number")):  # fmt: skip
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, kind):  # numpy's scalars count, bools do not
                raise ITDAError(f"{name} must be {what} (got {value!r})")
        if not isinstance(self.sample, (bool, np.bool_)):
            raise ITDAError(f"sample must be True or False (got {self.sample!r})")
        if not 1 <= self.max_new_tokens <= MAX_NEW_TOKENS:
            raise ITDAError(f"new tokens must be 1 to {MAX_NEW_TOKENS} (got {self.max_new_tokens})")
        if not MIN_TEMPERATURE <= self.temperature <= MAX_TEMPERATURE:
            raise ITDAError(f"temperature must be {MIN_TEMPERATURE} to {MAX_TEMPERATURE} (got {self.temperature})")
        if not 0 <= self.top_k <= MAX_TOP_K:
            raise ITDAError(f"top-k must be 0 (off) to {MAX_TOP_K} (got {self.top_k})")
        if not 0 < self.top_p <= 1:
            raise ITDAError(f"top-p must be in (0, 1] (got {self.top_p})")
        if not 0 <= self.seed <= MAX_SEED:
            raise ITDAError(f"seed must be 0 to {MAX_SEED} (got {self.seed})")


@dataclass(frozen=True)
class Continuation:
    """The model's own continuation of a prompt (no steering): what :func:`steer_generate` shows beside the
    steered one. It depends on neither the atom nor the strength, so a caller may keep it and pass it back."""

    prompt: str
    ids: list[int]
    text: str
    decoding: Decoding  # what it was made with (a kept one must match the steered run's)
    seconds: float


@dataclass
class SteeringResult:
    """Two continuations of one prompt, plain and steered, with what was added and where."""

    prompt: str
    unsteered: str  # the generated text only (not the prompt)
    steered: str
    unsteered_ids: list[int]
    steered_ids: list[int]
    norm: float  # the typical residual norm at the layer (median over the prompt's measured tokens)
    strength: float
    layer: int
    added_norm: float  # |strength| x norm: the length of the vector added at each steered position
    prompt_tokens: int
    measured: int  # prompt positions the norm was measured on
    skipped: list[int] = field(default_factory=list)  # prompt positions not steered (special, outliers)
    decoding: Decoding = field(default_factory=Decoding)  # both runs'
    seconds: float = 0.0  # this call, both runs (or the steered one alone when the plain one was passed in)
    plain_seconds: float = 0.0  # what the plain run took when it was made (perhaps by an earlier call)
    plain_reused: bool = False  # the plain continuation was passed in, not generated by this call


def check_request(prompt: str, strength: float) -> None:
    """Raise one clear ITDAError when the prompt is empty or too long or the strength out of its bounds."""
    if not prompt.strip():
        raise ITDAError("type a prompt to continue")
    if len(prompt) > MAX_PROMPT_CHARS:
        raise ITDAError(f"the prompt has {len(prompt):,} characters; at most {MAX_PROMPT_CHARS:,} fit: shorten it")
    if isinstance(strength, bool) or not isinstance(strength, Real):
        raise ITDAError(f"strength must be a number (got {strength!r})")
    if not np.isfinite(strength) or abs(strength) > MAX_STRENGTH:
        raise ITDAError(f"strength {strength} is out of range; use -{MAX_STRENGTH:g} to {MAX_STRENGTH:g} typical norms")


def _unit(direction: Tensor | np.ndarray, d_model: int) -> Tensor:
    """The direction as a float32 unit vector of the model's width, or a clear error."""
    v = torch.as_tensor(np.asarray(direction), dtype=torch.float32).reshape(-1)
    if v.numel() != d_model:
        raise ITDAError(f"the direction has {v.numel()} values but the model's residual stream has {d_model}")
    norm = float(v.norm())
    if not np.isfinite(norm) or norm == 0:
        raise ITDAError("the direction is zero or not finite; steer with an atom of the dictionary")
    return v / norm


def _prompt_ids(model: LoadedModel, prompt: str) -> tuple[list[int], list[bool]]:
    """Token ids of the prompt (special tokens added, as in training) and which are special."""
    enc = model.tokenizer(prompt, add_special_tokens=True, return_special_tokens_mask=True)
    ids, special = list(enc["input_ids"]), [bool(x) for x in enc["special_tokens_mask"]]
    if len(ids) > MAX_PROMPT_TOKENS:
        raise ITDAError(f"the prompt has {len(ids)} tokens; at most {MAX_PROMPT_TOKENS} fit: shorten it")
    measurable = [i for i, s in enumerate(special) if not s and i > 0]
    if not measurable:
        raise ITDAError("the prompt is too short to measure the typical norm: type at least two tokens")
    return ids, special


def _eos_ids(model: LoadedModel) -> set[int]:
    """Token ids that end a continuation (the generation config's, else the tokenizer's)."""
    eos = getattr(getattr(model.model, "generation_config", None), "eos_token_id", None)
    if eos is None:
        eos = getattr(model.tokenizer, "eos_token_id", None)
    if eos is None:
        return set()
    return {int(e) for e in (eos if isinstance(eos, list | tuple) else [eos])}


def _warpers(temperature: float, top_k: int, top_p: float) -> list[Any]:
    """transformers' logits warpers for these sampling settings (the ones ``generate`` applies)."""
    from transformers.generation.logits_process import TemperatureLogitsWarper, TopKLogitsWarper, TopPLogitsWarper

    out: list[Any] = []
    if temperature != 1.0:
        out.append(TemperatureLogitsWarper(temperature))
    if top_k:
        out.append(TopKLogitsWarper(top_k))
    if top_p < 1.0:
        out.append(TopPLogitsWarper(top_p))
    return out


def _next_tokens(logits: Tensor, seen: Tensor, warpers: list[Any], gen: torch.Generator | None) -> Tensor:
    """The next token of each row: argmax (``gen`` None), or inverse-CDF sampling with one shared uniform."""
    if gen is None:
        return logits.argmax(dim=-1)
    scores = logits.float()
    for warp in warpers:
        scores = warp(seen, scores)
    cdf = torch.softmax(scores, dim=-1).cumsum(dim=-1)
    u = torch.rand((), generator=gen, device=logits.device)
    picked = torch.searchsorted(cdf, (u * cdf[:, -1:]).contiguous(), right=True).squeeze(-1)
    return picked.clamp_max(logits.shape[-1] - 1)


class _Steer:
    """The forward hook of the steered run: measures the typical norm on the prompt pass, then adds the vector
    at each steered position of that pass and of every generated one."""

    def __init__(self, unit: Tensor, strength: float, special: list[bool]) -> None:
        self.unit, self.strength = unit, strength
        self.special = torch.tensor(special, dtype=torch.bool)
        self.norm: float | None = None
        self.skipped: list[int] = []
        self.measured = 0

    def __call__(self, _module: Any, _inputs: Any, output: Any) -> Any:
        hidden = output[0] if isinstance(output, tuple) else output
        norms = hidden[0].float().norm(dim=-1)  # [t]: the residual before steering
        if self.norm is None:  # the prompt pass
            special = self.special.to(hidden.device)
            measure = ~special
            measure[0] = False
            self.measured = int(measure.sum())
            self.norm = float(norms[measure].quantile(0.5))
            steer = ~special & (norms <= OUTLIER_RATIO * self.norm)
            self.skipped = torch.nonzero(~steer).flatten().tolist()
        else:  # one generated position
            steer = norms <= OUTLIER_RATIO * self.norm
        if self.strength == 0:
            return output
        delta = (self.strength * self.norm) * self.unit.to(device=hidden.device, dtype=hidden.dtype)
        hidden = hidden + steer.to(hidden.dtype)[None, :, None] * delta
        return (hidden, *output[1:]) if isinstance(output, tuple) else hidden


def _decode(model: LoadedModel, ids: list[int], decoding: Decoding, max_new_tokens: int | None = None) -> list[int]:
    """New token ids continuing ``ids`` (one row, KV cache, stopping at an end-of-text token), greedy or
    sampled from a generator seeded with ``decoding.seed``: one uniform number per step, so two runs with the
    same seed draw the same numbers and pick the same token wherever their distributions agree."""
    steps = decoding.max_new_tokens if max_new_tokens is None else max_new_tokens
    sample = decoding.sample
    warpers = _warpers(decoding.temperature, decoding.top_k, decoding.top_p) if sample else []
    gen = torch.Generator(device=model.device).manual_seed(decoding.seed) if sample else None
    eos = _eos_ids(model)
    seen = torch.tensor([ids], dtype=torch.long, device=model.device)
    step_input, past, out = seen, None, []
    with torch.inference_mode():
        for _ in range(steps):
            result = model.model(input_ids=step_input, cache=past, use_cache=True, logits_to_keep=1)
            past = result.cache
            nxt = _next_tokens(result.logits[:, -1, :], seen, warpers, gen)
            out.append(int(nxt[0]))
            if out[-1] in eos:
                break
            step_input = nxt[:, None]
            seen = torch.cat([seen, step_input], dim=1)
    return out


def _checked(model: LoadedModel, prompt: str, strength: float, decoding: Decoding) -> tuple[list[int], list[bool]]:
    """The prompt's ids and special-token mask once every setting is within its bounds (else ITDAError)."""
    if model.family != "decoder":
        raise ITDAError(f"steering needs a causal language model; {model.name} is an encoder")
    check_request(prompt, strength)
    decoding.check()
    return _prompt_ids(model, prompt)


def plain_continuation(model: LoadedModel, prompt: str, decoding: Decoding | None = None) -> Continuation:
    """The model's own continuation of ``prompt`` (what steering is compared with); default: 30 greedy tokens."""
    decoding = Decoding() if decoding is None else decoding
    ids, _ = _checked(model, prompt, 0.0, decoding)
    start = time.perf_counter()
    out = _decode(model, ids, decoding)
    text = model.tokenizer.decode(out, skip_special_tokens=True)
    return Continuation(prompt=prompt, ids=out, text=text, decoding=decoding, seconds=time.perf_counter() - start)


def steer_generate(
    model: LoadedModel,
    prompt: str,
    direction: Tensor | np.ndarray,
    layer: int,
    strength: float,
    decoding: Decoding | None = None,
    *,
    plain: Continuation | None = None,
) -> SteeringResult:
    """Continue ``prompt`` plainly and with ``strength x typical norm x unit(direction)`` added after block
    ``layer``, both with ``decoding`` (default: 30 greedy tokens).

    The two runs are separate one-row generations (a row's numbers then never depend on the other row), so
    ``plain``, a :func:`plain_continuation` of the same prompt and decoding kept from an earlier call, is
    used as it is: moving the strength or changing the atom then costs the steered run alone. At strength 0
    the steered continuation is the plain one; only the prompt pass runs, to measure the norm."""
    decoding = Decoding() if decoding is None else decoding
    ids, special = _checked(model, prompt, strength, decoding)
    model.check_layers([layer])
    unit = _unit(direction, model.d_model)
    if plain is not None and (plain.prompt != prompt or plain.decoding != decoding):
        raise ITDAError("the plain continuation passed in was made for another prompt or other settings; "
                        "pass one made with these, or none")  # fmt: skip
    start = time.perf_counter()
    reused = plain is not None
    if plain is None:
        plain = plain_continuation(model, prompt, decoding)
    hook = _Steer(unit, float(strength), special)
    handle = model.blocks[layer].register_forward_hook(hook)
    try:  # at strength 0 one step: the prompt pass, where the norm is measured
        steered = _decode(model, ids, decoding, max_new_tokens=1 if strength == 0 else None)
    finally:
        handle.remove()
    if strength == 0:
        steered = list(plain.ids)
    assert hook.norm is not None
    return SteeringResult(
        prompt=prompt,
        unsteered=plain.text,
        steered=model.tokenizer.decode(steered, skip_special_tokens=True),
        unsteered_ids=list(plain.ids),
        steered_ids=steered,
        norm=hook.norm,
        strength=float(strength),
        layer=int(layer),
        added_norm=abs(float(strength)) * hook.norm,
        prompt_tokens=len(ids),
        measured=hook.measured,
        skipped=hook.skipped,
        decoding=decoding,
        seconds=time.perf_counter() - start,
        plain_seconds=plain.seconds,
        plain_reused=reused,
    )
