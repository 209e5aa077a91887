"""End to end, in headless Chromium: the overview shows the quality table and the per-layer plot, and the metric
picker switches the plot. The server, browser and screenshot helpers are tests/dashboard/test_e2e.py's; the store
is a tiny indexed one without atom maps (faster to build), or $ITDA_E2E_STORE. Screenshot: overview_quality.png
in test-artifacts/e2e/ (and $ITDA_SCREENSHOTS_DIR)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from tests.dashboard.test_e2e import CHROMIUM, _idle, _shot, sync_api

# test_e2e's fixtures, imported under their own names so that pytest finds them here
from tests.dashboard.test_e2e import browser as browser
from tests.dashboard.test_e2e import page as page
from tests.dashboard.test_e2e import server as server
from tests.stores import e2e_store

pytestmark = [
    pytest.mark.skipif(
        not Path(CHROMIUM).exists(),
        reason=f"{CHROMIUM} is missing; install Debian's Chromium with `apt-get install -y chromium`",
    ),
    pytest.mark.timeout(300),
]


@pytest.fixture(scope="module")
def store(tmp_path_factory) -> Path:
    """The store the server shows (test_e2e's ``server`` asks for it by name)."""
    return e2e_store(tmp_path_factory, "e2e_quality")


def test_overview_quality_table_plot_and_metric_picker(server, page) -> None:
    page.goto(server + "/")
    _idle(page)
    sync_api.expect(page.get_by_role("heading", name="Reconstruction quality (held-out)")).to_be_visible()
    section = page.locator(".st-key-ov_quality")
    table = section.get_by_test_id("stDataFrame")
    sync_api.expect(table).to_be_visible()
    plot = section.locator(".js-plotly-plot")
    sync_api.expect(plot).to_be_visible()
    title = plot.locator(".g-ytitle")
    sync_api.expect(title).to_have_text(re.compile(r"^FVU \([\d,–]+ tok\)$"))
    assert plot.locator(".scatterlayer .trace").count() >= 1  # a line per model
    _shot(page, "overview_quality")
    section.get_by_test_id("stRadio").get_by_text(re.compile(r"^cosine \(")).click()
    _idle(page)
    sync_api.expect(title).to_have_text(re.compile(r"^cosine \([\d,–]+ tok\)$"))
    _shot(page, "overview_quality_cosine")
