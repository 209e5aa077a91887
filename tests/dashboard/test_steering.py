"""The steering panel through Streamlit's AppTest on the tiny store: on an atom page of a causal LM it generates
two continuations that differ at a large strength and agree at strength 0 (greedy and sampled); an encoder's
atom page has a one-line note instead; the live decomposition page steers with a decomposed token's atom;
a prompt over the token limit gives one clear message."""

from __future__ import annotations

import pytest

from itda_core import steering as S
from itda_core.store.connection import connect_readonly
from tests.dashboard.helpers import no_exception, run_page, texts

pytestmark = pytest.mark.usefixtures("store_env")


def _atom(store: dict, kind: str, layer: int) -> tuple[int, int]:
    """(dict id, atom) of an atom the error rule added (a real activation of the training text)."""
    dict_id = store["ids"][(kind, layer)]
    with connect_readonly(store["path"]) as con:
        atom = con.execute("SELECT min(atom) FROM atoms WHERE dict_id = ? AND init_count = 0", [dict_id]).fetchone()[0]
    return dict_id, int(atom)


def _continuations(at) -> tuple[str, str]:
    """The unsteered and steered texts (prompt and continuation) the panel shows."""
    codes = [c.value for c in at.code]
    assert len(codes) == 2, codes
    return codes[0], codes[1]


def _generate(at, key: str, strength: float, **settings) -> None:
    """Fill the panel's form as a person would and press Generate."""
    at.slider(key=f"{key}_strength").set_value(strength)
    for name, value in settings.items():
        element = at.radio(key=f"{key}_{name}") if name == "mode" else at.number_input(key=f"{key}_{name}")
        element.set_value(value)
    at.button(key=f"{key}_go").click().run()
    no_exception(at)


@pytest.mark.parametrize("mode", ["greedy", "sampled"])
def test_atom_page_steers_a_causal_lm(store_env, mode):
    dict_id, atom = _atom(store_env, "llama", 1)
    at = run_page("views/atom_browser.py", {"dict": str(dict_id), "atom": str(atom)})
    no_exception(at)
    assert "Steering" in [s.value for s in at.subheader]
    assert "Type a prompt" in texts(at.caption)
    at.text_area(key="ab_steer_prompt").input("The capital of France is")
    _generate(at, "ab_steer", S.MAX_STRENGTH, new=12, mode=mode, seed=5)
    plain, steered = _continuations(at)
    assert plain.startswith("The capital of France is") and steered.startswith("The capital of France is")
    assert plain != steered
    assert "They first differ at new token" in texts(at.caption)
    _generate(at, "ab_steer", 0.0)
    plain0, steered0 = _continuations(at)
    assert plain0 == steered0 == plain  # the same seed and settings: the plain run does not change
    assert "The two continuations are identical." in texts(at.caption)


def test_an_encoder_atom_page_has_a_note_instead(store_env):
    dict_id, atom = _atom(store_env, "bert", 0)
    at = run_page("views/atom_browser.py", {"dict": str(dict_id), "atom": str(atom)})
    no_exception(at)
    assert "causal language models; this dictionary's model is an encoder" in texts(at.caption)
    assert not [b for b in at.button if b.key == "ab_steer_go"]


def test_a_prompt_over_the_token_limit_is_one_clear_message(store_env):
    dict_id, atom = _atom(store_env, "llama", 0)
    at = run_page("views/atom_browser.py", {"dict": str(dict_id), "atom": str(atom)})
    at.text_area(key="ab_steer_prompt").input("Paris " * (S.MAX_PROMPT_TOKENS + 10))
    _generate(at, "ab_steer", 1.0)
    assert any(f"at most {S.MAX_PROMPT_TOKENS} fit" in e.value for e in at.error), texts(at.error)
    assert not at.code


def test_live_decomposition_steers_with_a_token_atom(store_env):
    at = run_page("views/live_decomposition.py")
    at.text_area(key="live_input").input("The capital of France is Paris.")
    at.button(key="live_go").click().run()
    no_exception(at)
    assert "Steering" in [s.value for s in at.subheader]
    at.text_area(key="live_steer_prompt").input("Matching pursuit picks the")
    _generate(at, "live_steer", -S.MAX_STRENGTH, new=10)
    plain, steered = _continuations(at)
    assert plain != steered
