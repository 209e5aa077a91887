"""End to end: start the real dashboard server (the command line ``itda serve`` runs) on a free port and
drive headless Chromium through every page with Playwright: decompose a typed text, open atom pages from
links, click a heatmap cell and a point of the atom map. Screenshots go to ``test-artifacts/e2e/``.

Needs Debian's Chromium at /usr/bin/chromium (``apt-get install -y chromium``; Playwright's own browser
download does not work here); skipped with that message otherwise. The store is a tiny one built from
random models, or the store named by $ITDA_E2E_STORE (e.g. data/itda.duckdb, for real screenshots);
$ITDA_SCREENSHOTS_DIR (e.g. docs/screenshots) receives a copy of each page's screenshot.
"""

from __future__ import annotations

import os
import re
import shutil
import socket
import subprocess
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
]  # fmt: skip
ARTIFACTS = Path(__file__).resolve().parents[2] / "test-artifacts" / "e2e"
IDLE = '[data-testid="stApp"][data-test-script-state="notRunning"]'
TIMEOUT_MS = 180_000
TYPED = 'Paris is the capital of France. <img src=x onerror="window.__xss=1"> <script>window.__xss=2</script> &'
TYPED += " 🙂"

pytestmark = [
    pytest.mark.skipif(
        not Path(CHROMIUM).exists(),
        reason=f"{CHROMIUM} is missing; install Debian's Chromium with `apt-get install -y chromium`",
    ),
    pytest.mark.timeout(900),
]
sync_api = pytest.importorskip("playwright.sync_api", reason="playwright is not installed (pip install playwright)")


NICE_ATOM = r"""
    WITH d AS (SELECT d.dict_id, d.layer, d.n_atoms FROM dictionaries d JOIN models m USING (model_id)
               WHERE m.added = (SELECT min(added) FROM models)),
         mid AS (SELECT dict_id, n_atoms FROM d ORDER BY abs(layer - (SELECT max(layer) FROM d) / 2), layer LIMIT 1)
    SELECT s.dict_id, s.atom FROM atom_stats s JOIN mid USING (dict_id)
    JOIN atoms a ON a.dict_id = s.dict_id AND a.atom = s.atom
    WHERE s.atom > 0 AND s.atom < mid.n_atoms - 1 AND s.density BETWEEN 0.002 AND 0.05
      AND regexp_matches(a.token_text, '^ ?[A-Za-z]{5,}$')
    ORDER BY s.n_active DESC, s.atom LIMIT 1"""


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture(scope="module")
def store(tmp_path_factory) -> Path:
    chosen = os.environ.get("ITDA_E2E_STORE")
    if chosen:
        return Path(chosen)
    from tests.stores import build_tiny_store

    return build_tiny_store(tmp_path_factory.mktemp("e2e"))["path"]


@pytest.fixture(scope="module")
def server(store) -> Iterator[str]:
    from itda_core.cli.dashboard import serve_command_line

    port = _free_port()
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    log = open(ARTIFACTS / "server.log", "w")  # noqa: SIM115 - closed below
    env = {**os.environ, "ITDA_STORE": str(store)}
    proc = subprocess.Popen(serve_command_line(store, port, "127.0.0.1"), stdout=log, stderr=subprocess.STDOUT,
                            env=env)  # fmt: skip
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 90
        while True:
            try:
                if urllib.request.urlopen(f"{url}/_stcore/health", timeout=2).read() == b"ok":
                    break
            except OSError:
                pass
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"the dashboard server did not start; see {ARTIFACTS / 'server.log'}")
            time.sleep(0.3)
        yield url
    finally:
        proc.terminate()
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            proc.kill()
        log.close()


@pytest.fixture(scope="module")
def browser(server):
    with sync_api.sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS, headless=True)
        yield b
        b.close()


@pytest.fixture
def page(browser):
    context = browser.new_context(viewport={"width": 1400, "height": 1000})
    pg = context.new_page()
    # a loaded 2-core machine can take far longer than Playwright's 5 s defaults for a Streamlit rerun: every
    # wait (actions and expect) gets the suite's own bound
    pg.set_default_timeout(TIMEOUT_MS)
    sync_api.expect.set_options(timeout=TIMEOUT_MS)
    errors: list[str] = []
    pg.on("pageerror", lambda err: errors.append(str(err)))
    yield pg
    context.close()
    assert not [e for e in errors if "__xss" in e], errors


def _idle(page) -> None:
    """Wait until the script has run (it may start running again a moment after loading)."""
    page.wait_for_selector(IDLE, timeout=TIMEOUT_MS)
    time.sleep(0.7)
    page.wait_for_selector(IDLE, timeout=TIMEOUT_MS)


def _shot(page, name: str) -> Path:
    """A screenshot of the whole page (the viewport grows to the content's height)."""
    height = page.evaluate(
        "() => { const m = document.querySelector('[data-testid=\"stMain\"]'); return m ? m.scrollHeight : 1000; }"
    )
    page.set_viewport_size({"width": 1400, "height": max(800, min(int(height) + 40, 4000))})
    time.sleep(0.8)
    path = ARTIFACTS / f"{name}.png"
    page.screenshot(path=str(path))
    page.set_viewport_size({"width": 1400, "height": 1000})
    target = os.environ.get("ITDA_SCREENSHOTS_DIR")
    if target:
        Path(target).mkdir(parents=True, exist_ok=True)
        shutil.copy(path, Path(target) / path.name)
    return path


def _wait_url(page, pattern: str) -> None:
    """Wait for an in-app navigation: Streamlit changes the address with the History API, which
    ``page.url`` does not always follow, so read ``location.href``."""
    page.wait_for_function("p => new RegExp(p).test(location.href)", arg=pattern, timeout=TIMEOUT_MS)


def _no_xss(page) -> None:
    assert page.evaluate("() => window.__xss === undefined")


def test_overview(server, page):
    page.goto(server + "/")
    _idle(page)
    sync_api.expect(page.get_by_role("heading", name="ITDA dictionaries")).to_be_visible()
    sync_api.expect(page.get_by_text("Atoms per layer")).to_be_visible()
    # a local research tool: no Deploy button (client.toolbarMode minimal, which the server line passes)
    assert page.locator('[data-testid="stAppDeployButton"]').count() == 0
    assert page.get_by_role("button", name="Deploy").count() == 0
    assert _shot(page, "overview").stat().st_size > 10_000


def test_atom_browser_and_shared_url(server, page, store):
    from itda_core.store.connection import connect_readonly

    with connect_readonly(store) as con:
        # a word atom of the first model's middle layer, active on held-out text (a readable page)...
        rows = con.execute(NICE_ATOM).fetchall()
        # ... or any atom with top contexts (tiny stores)
        rows = (
            rows
            or con.execute(
                "SELECT dict_id, atom FROM atom_top_contexts WHERE atom > 0 ORDER BY dict_id, rank, atom LIMIT 1"
            ).fetchall()
        )
    dict_id, atom = rows[0]
    page.goto(f"{server}/atoms?dict={dict_id}&atom={atom}")
    _idle(page)
    sync_api.expect(page.get_by_role("heading", name=f"Atom {atom}")).to_be_visible()
    sync_api.expect(page.get_by_text("Where it came from")).to_be_visible()
    sync_api.expect(page.get_by_text("tokens coloured by this atom")).to_be_visible()
    _no_xss(page)
    _shot(page, "atom_page")
    # the next-atom button moves the URL along, so the address can be shared
    page.get_by_role("button", name=f"atom {atom + 1} →").click()
    _wait_url(page, rf"/atoms\?dict={dict_id}&atom={atom + 1}$")
    _idle(page)
    sync_api.expect(page.get_by_role("heading", name=f"Atom {atom + 1}")).to_be_visible()
    # a bad atom id in the URL: a message, not a crash
    page.goto(f"{server}/atoms?dict={dict_id}&atom=99999999")
    _idle(page)
    sync_api.expect(page.get_by_text("there is no atom 99999999")).to_be_visible()
    _shot(page, "atom_browser")


def test_live_decomposition_and_atom_link(server, page):
    page.goto(server + "/live")
    _idle(page)
    box = page.get_by_role("textbox", name="Text")
    box.fill(TYPED)
    page.get_by_role("button", name="Decompose").click()
    sync_api.expect(page.get_by_text("Mean cosine")).to_be_visible(timeout=TIMEOUT_MS)
    _idle(page)
    _no_xss(page)
    # the typed markup shows as text
    sync_api.expect(page.get_by_text("A token's atoms")).to_be_visible()
    body = page.inner_text('[data-testid="stMain"]')
    assert "script" in body and "🙂" in body
    _shot(page, "live_decomposition")
    # open the largest atom of the chosen token from its link
    page.get_by_role("link", name="Open the largest atom's page").click()
    _wait_url(page, r"/atoms\?dict=\d+&atom=\d+$")
    _idle(page)
    sync_api.expect(page.get_by_role("heading", name=re.compile(r"^Atom \d+ · "))).to_be_visible()
    _shot(page, "atom_page_from_link")
    # too long a text: a clear message
    page.goto(server + "/live")
    _idle(page)
    page.get_by_role("textbox", name="Text").fill("x" * 4100)
    page.get_by_role("button", name="Decompose").click()
    sync_api.expect(page.get_by_text("Shorten it")).to_be_visible(timeout=TIMEOUT_MS)


def _plot_point(page, trace: int, index: int) -> tuple[float, float]:
    """Screen coordinates of point ``index`` of a plotly chart's trace ``trace`` (first chart on the page)."""
    return page.evaluate(
        """([t, i]) => {
            const gd = document.querySelector('.js-plotly-plot');
            const fl = gd._fullLayout, box = gd.getBoundingClientRect(), d = gd._fullData[t];
            const x = fl.xaxis.l2p(d.x[i]) + fl._size.l + box.left;
            const y = fl.yaxis.l2p(d.y[i]) + fl._size.t + box.top;
            return [x, y];
        }""",
        [trace, index],
    )


def test_similarity_heatmap_cell_lists_shared_atoms(server, page):
    page.goto(server + "/similarity")
    _idle(page)
    sync_api.expect(page.get_by_text("shared atoms").first).to_be_visible()
    page.wait_for_selector(".js-plotly-plot", timeout=TIMEOUT_MS)
    time.sleep(1.0)
    x, y = _plot_point(page, 1, 0)  # the cell (first row, first column): the diagonal
    page.mouse.click(x, y)
    _idle(page)
    # the default variant, named on the page: raw, evidence atoms (1 on the diagonal)
    sync_api.expect(page.get_by_text("Jaccard 1.000 (raw, evidence atoms)").first).to_be_visible(timeout=TIMEOUT_MS)
    _shot(page, "similarity")
    page.get_by_text("chance-corrected", exact=True).click()  # the index radio: the URL and the values follow
    _idle(page)
    sync_api.expect(page.get_by_text("Jaccard 1.000 (corrected, evidence atoms)").first).to_be_visible(
        timeout=TIMEOUT_MS
    )
    assert "index=corrected" in page.url
    page.get_by_role("tab", name="Model × model").click()
    time.sleep(0.5)
    _shot(page, "similarity_models")


def test_atom_map_point_opens_atom(server, page):
    page.goto(server + "/map")
    _idle(page)
    # the page shows either the stored map or a button to compute one: wait for whichever it is (checking
    # the plot at once raced its rendering on a loaded machine)
    page.wait_for_selector(".js-plotly-plot, button:has-text('Compute it now')", timeout=TIMEOUT_MS)
    plot = page.locator(".js-plotly-plot")
    if plot.count() == 0:  # no stored map for the default layer: compute it in memory
        page.get_by_role("button", name="Compute it now").click()
        page.wait_for_selector(".js-plotly-plot", timeout=TIMEOUT_MS)
        _idle(page)
    time.sleep(1.5)
    _shot(page, "atom_map")
    x, y = _plot_point(page, 0, 0)
    page.mouse.click(x, y)
    _wait_url(page, r"/atoms\?dict=\d+&atom=\d+$")
    _idle(page)
    sync_api.expect(page.get_by_role("heading", name=re.compile(r"^Atom \d+ · "))).to_be_visible()
