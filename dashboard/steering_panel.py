"""The steering panel shared by atom pages and live decomposition: a prompt, a strength and decoding settings,
and the model's plain continuation beside the one with the atom's direction added to the residual stream.

The work is :func:`itda_core.steering.steer_generate` (two one-row runs, the same seed and settings); this
module lays out the form, keeps the last request per atom in the session so a rerun shows it again, and caches
results, which are deterministic for their settings: the plain continuation per model, prompt and settings
(it depends on neither atom nor strength, so moving the strength or picking another atom costs the steered run
alone), the steered one per model, atom, store version, strength and settings. The plain one is shown as soon
as it is ready, while the steered one is generated.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import streamlit as st

from itda_core import steering as S
from itda_dashboard import atom_data, data, live
from itda_dashboard.render import md

DEFAULT_PROMPT = "My favourite thing to do at the weekend is"
DEFAULT_STRENGTH = 0.0
STRENGTH_STEP = 0.05
DEFAULT_NEW_TOKENS = 30


@st.cache_data(show_spinner=False, max_entries=64)
def _plain(name: str, prompt: str, settings: dict[str, Any]) -> S.Continuation:
    """The model's own continuation (cached: the same prompt, settings and seed give the same one)."""
    return S.plain_continuation(live.get_model(name), prompt, S.Decoding(**settings))


@st.cache_data(show_spinner=False, max_entries=64)
def _generate(name: str, dict_id: int, atom: int, version: Any, layer: int, prompt: str, strength: float,
              settings: dict[str, Any]) -> S.SteeringResult:  # fmt: skip
    """One steering run of a stored atom beside the cached plain continuation (cached too)."""
    return S.steer_generate(live.get_model(name), prompt, atom_data.atom_vector(dict_id, atom), layer, strength,
                            S.Decoding(**settings), plain=_plain(name, prompt, settings))  # fmt: skip


def first_difference(a: list[int], b: list[int]) -> int | None:
    """The index of the first new token where two continuations differ (None when they are the same)."""
    for i, (x, y) in enumerate(zip(a, b, strict=False)):
        if x != y:
            return i
    return None if len(a) == len(b) else min(len(a), len(b))


def _form(key: str) -> dict[str, Any] | None:
    """The steering form; the request (prompt, strength, settings) when Generate was pressed, else None."""
    with st.form(f"{key}_form"):
        prompt = st.text_area(
            "Prompt",
            value=DEFAULT_PROMPT,
            max_chars=S.MAX_PROMPT_CHARS,
            height=80,
            key=f"{key}_prompt",
            help=f"At most {S.MAX_PROMPT_CHARS:,} characters and {S.MAX_PROMPT_TOKENS} tokens (special ones included).",
        )
        top = st.columns([3, 1, 1, 1])
        strength = top[0].slider(
            "Strength",
            min_value=-S.MAX_STRENGTH,
            max_value=S.MAX_STRENGTH,
            value=DEFAULT_STRENGTH,
            step=STRENGTH_STEP,
            key=f"{key}_strength",
            help="Multiples of the typical residual norm at this layer (the median over the prompt's tokens) "
            "added along the atom's unit direction; negative values push away from it.",
        )
        new_tokens = top[1].number_input("New tokens", 1, S.MAX_NEW_TOKENS, DEFAULT_NEW_TOKENS, key=f"{key}_new")
        seed = top[2].number_input("Seed", 0, S.MAX_SEED, 0, key=f"{key}_seed")
        mode = top[3].radio("Decoding", ["greedy", "sampled"], key=f"{key}_mode")
        low = st.columns(3)
        temperature = low[0].slider("Temperature (sampled)", S.MIN_TEMPERATURE, S.MAX_TEMPERATURE, 1.0, 0.05,
                                    key=f"{key}_temp")  # fmt: skip
        top_k = low[1].number_input("Top-k (sampled; 0 = off)", 0, S.MAX_TOP_K, 50, key=f"{key}_topk")
        top_p = low[2].slider("Top-p (sampled)", 0.05, 1.0, 0.95, 0.05, key=f"{key}_topp")
        pressed = st.form_submit_button("Generate", type="primary", key=f"{key}_go")
    st.caption(
        f"Limits: strength −{S.MAX_STRENGTH:g} to {S.MAX_STRENGTH:g}, at most {S.MAX_NEW_TOKENS} new tokens, "
        f"{S.MAX_PROMPT_TOKENS} prompt tokens. Runs on {live.device()}; the model is loaded once per server."
    )
    if not pressed:
        return None
    sample = mode == "sampled"
    decoding = S.Decoding(max_new_tokens=int(new_tokens), sample=sample, seed=int(seed),
                          **({"temperature": float(temperature), "top_k": int(top_k), "top_p": float(top_p)}
                             if sample else {}))  # fmt: skip
    return {"prompt": str(prompt), "strength": float(strength), "settings": dataclasses.asdict(decoding)}


def _show(result: S.SteeringResult, right: Any) -> None:
    """The steered continuation in the column ``right`` (the plain one is already shown), and what was added
    where."""
    with right:
        st.markdown(f"**Steered** (strength {result.strength:+g})")
        st.code(result.prompt + result.steered, language=None, wrap_lines=True)
    diff = first_difference(result.unsteered_ids, result.steered_ids)
    same = "The two continuations are identical." if diff is None else f"They first differ at new token {diff + 1}."
    skipped = (
        f"; prompt position(s) {', '.join(map(str, result.skipped))} not steered (special tokens, or a norm over "
        f"{S.OUTLIER_RATIO:g}× the typical one: an attention sink)"
        if result.skipped
        else ""
    )
    d = result.decoding
    mode = "greedy" if not d.sample else f"sampled (temperature {d.temperature:g}, top-k {d.top_k}, top-p {d.top_p:g})"
    st.caption(
        f"{same} Added {result.strength:+g} × typical norm {result.norm:.2f} = a vector of norm "
        f"{result.added_norm:.2f} after block {result.layer}, at every position{skipped}. The norm is the median "
        f"over {result.measured} of the prompt's {result.prompt_tokens} tokens (special tokens and the first "
        f"position left out). Both runs: {mode}, seed {d.seed}; {_timing(result)}."
    )


def _timing(result: S.SteeringResult) -> str:
    """What each run took when it was made (the plain one is cached on its own, see the module's docstring)."""
    steered = result.seconds if result.plain_reused else result.seconds - result.plain_seconds
    return f"generated in {result.plain_seconds:.1f} s (plain) and {max(steered, 0.0):.1f} s (steered)"


def steering_panel(*, model_name: str, family: str, layer: int, dict_id: int, atom: int, key: str) -> None:
    """The whole panel for one atom of a dictionary at ``layer`` (a one-line note for encoders)."""
    if family != "decoder":
        st.caption("Steering generates text, so it is for causal language models; this dictionary's model is an "
                   "encoder.")  # fmt: skip
        return
    failed = live.load_error(model_name)
    if failed:
        st.warning(f"Could not load {md(model_name)} for steering: {md(failed)}")
        return
    request = _form(key)
    last = f"{key}_last"
    if request is not None:
        st.session_state[last] = {**request, "dict_id": int(dict_id), "atom": int(atom)}
    shown = st.session_state.get(last)
    if not shown or shown["dict_id"] != int(dict_id) or shown["atom"] != int(atom):
        st.caption("Type a prompt, choose a strength and press Generate.")
        return
    left, right = st.columns(2)
    try:
        with left, st.spinner(f"Loading {md(model_name)} (once per server) and generating..."):
            plain = _plain(model_name, shown["prompt"], shown["settings"])
        with left:
            st.markdown("**Unsteered**")
            st.code(plain.prompt + plain.text, language=None, wrap_lines=True)
        with right, st.spinner("Generating the steered continuation..."):
            result = _generate(model_name, int(dict_id), int(atom), data.store_key()[1], int(layer), shown["prompt"],
                               shown["strength"], shown["settings"])  # fmt: skip
    except Exception as err:  # a bound (ITDAError), the model cannot be loaded...
        st.error(md(str(err).splitlines()[0]) if str(err) else type(err).__name__)
        return
    _show(result, right)
