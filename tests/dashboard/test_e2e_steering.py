"""End to end, as a person would: open an atom page of a causal LM's dictionary in headless Chromium, type a
prompt, move the strength slider, press Generate and see the plain and the steered continuations side by side,
different. The server, browser and screenshot helpers are test_e2e.py's (screenshots in test-artifacts/e2e/,
copied to $ITDA_SCREENSHOTS_DIR when set); the store is a tiny one without an atom map (faster to build), or
$ITDA_E2E_STORE."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.dashboard.test_e2e import TIMEOUT_MS, _idle, _shot, browser, page, pytestmark, server, sync_api
from tests.stores import e2e_store

__all__ = ["browser", "page", "pytestmark", "server"]  # fixtures and marks shared with test_e2e.py
PROMPT = "The capital of France is"


@pytest.fixture(scope="module")
def store(tmp_path_factory) -> Path:
    return e2e_store(tmp_path_factory, "e2e_steer")


def _decoder_atom(store: Path) -> tuple[int, int]:
    """An atom the error rule added to a causal LM's dictionary (the middle layer of the first such model)."""
    from itda_core.store.connection import connect_readonly

    with connect_readonly(store) as con:
        row = con.execute(
            """SELECT a.dict_id, min(a.atom) FROM atoms a JOIN dictionaries d USING (dict_id)
               JOIN models m USING (model_id) WHERE m.family = 'decoder' AND a.init_count = 0
               GROUP BY a.dict_id, d.layer ORDER BY a.dict_id LIMIT 1 OFFSET 1"""
        ).fetchone()
    assert row is not None, "the store has no causal LM dictionary"
    return int(row[0]), int(row[1])


def test_steering_on_an_atom_page(server, page, store):
    dict_id, atom = _decoder_atom(store)
    page.goto(f"{server}/atoms?dict={dict_id}&atom={atom}")
    _idle(page)
    sync_api.expect(page.get_by_role("heading", name="Steering")).to_be_visible()
    page.get_by_role("textbox", name="Prompt").fill(PROMPT)
    thumb = page.locator('[data-testid="stSlider"]').filter(has_text="Strength").get_by_role("slider")
    thumb.focus()
    thumb.press("End")  # the keyboard moves it as far as it goes
    sync_api.expect(thumb).to_have_attribute("aria-valuetext", "2.00")
    page.get_by_role("button", name="Generate").click()
    sync_api.expect(page.get_by_text("They first differ at new token")).to_be_visible(timeout=TIMEOUT_MS)
    _idle(page)
    codes = page.locator('[data-testid="stCode"]')
    sync_api.expect(codes).to_have_count(2)
    plain, steered = (codes.nth(i).inner_text() for i in range(2))
    assert plain.startswith(PROMPT) and steered.startswith(PROMPT)
    assert plain != steered
    codes.first.scroll_into_view_if_needed()
    assert _shot(page, "steering").stat().st_size > 10_000
