"""End to end, the diff page: the real server and headless Chromium (tests/dashboard/test_e2e.py's server,
browser and page fixtures and helpers, imported): open the diff of two layers, pick another model for B, see
the library's counts, click an atom link and land on its atom page. Screenshots go to ``test-artifacts/e2e/``
(and $ITDA_SCREENSHOTS_DIR when set)."""

from __future__ import annotations

import re
from pathlib import Path
from urllib.parse import parse_qs, urlparse

import pytest

from tests.dashboard import test_e2e as e2e
from tests.dashboard.test_e2e import _idle, _shot, _wait_url, browser, page, server  # noqa: F401 - fixtures
from tests.stores import e2e_store

pytestmark = e2e.pytestmark
expect = e2e.sync_api.expect


@pytest.fixture(scope="module")
def store(tmp_path_factory) -> Path:
    """test_e2e.py's store ($ITDA_E2E_STORE, or the tiny one) without the atom map this page does not show."""
    return e2e_store(tmp_path_factory, "e2e-diff")


def _pair(pg) -> tuple[int, int]:
    """The (a, b) dictionary ids in the address."""
    query = parse_qs(urlparse(pg.evaluate("() => location.href")).query)
    return int(query["a"][0]), int(query["b"][0])


def _summary(pg) -> str:
    """The line under the metrics: Jaccard, shared, only in A, only in B."""
    line = pg.get_by_text(re.compile(r"Jaccard \S+ \([a-z, ]+\), [\d,]+ shared atoms")).first
    expect(line).to_be_visible()
    return line.inner_text()


def test_diff_of_two_models_and_an_atom_link(server, page, store):  # noqa: F811 - the imported fixtures
    from itda_core.similarity.diff import diff_dictionaries

    page.goto(server + "/diff")
    _idle(page)
    expect(page.get_by_role("heading", name="Dictionary diff")).to_be_visible()
    _wait_url(page, r"/diff\?a=\d+&b=\d+")
    a, b = _pair(page)
    found = diff_dictionaries(store, a, b)
    assert f"{found.shared:,} shared atoms, {len(found.only_a):,} only in A" in _summary(page)
    # pick another model for B: the address and the counts follow
    page.locator('[data-testid="stSelectbox"]').filter(has_text="Model B").click()
    page.get_by_role("option").last.click()
    _wait_url(page, rf"/diff\?a={a}&b=(?!{b}&)\d+")
    _idle(page)
    a2, b2 = _pair(page)
    assert a2 == a and b2 != b
    found = diff_dictionaries(store, a2, b2)
    assert f"{found.shared:,} shared atoms, {len(found.only_a):,} only in A, {len(found.only_b):,} only in B" in (
        _summary(page))
    expect(page.get_by_text(f"Atoms matched by {found.method}")).to_be_visible()
    _shot(page, "diff")
    # the first token group of "Only in A" is open: its first atom's link opens that atom's page
    link = page.get_by_role("link", name=re.compile(r" atom \d+$")).first
    atom = int(re.search(r"atom (\d+)$", link.inner_text()).group(1))
    assert atom in set(found.only_a.tolist())
    link.click()
    _wait_url(page, rf"/atoms\?dict={a}&atom={atom}$")
    _idle(page)
    expect(page.get_by_role("heading", name=re.compile(rf"^Atom {atom} · "))).to_be_visible()
    _shot(page, "diff_atom_page")
