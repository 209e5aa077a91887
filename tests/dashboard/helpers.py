"""What the dashboard's AppTest tests share: the app and its pages, running a page, and reading what it shows
(HTML, texts, heatmaps, the shared-atom line of the similarity page)."""

from __future__ import annotations

import base64
import json
import re
from pathlib import Path
from typing import Any

import numpy as np
from streamlit.testing.v1 import AppTest

APP = str(Path(__file__).resolve().parents[2] / "dashboard" / "app.py")
PAGES = ["views/overview.py", "views/atom_browser.py", "views/live_decomposition.py", "views/similarity.py",
         "views/atom_map.py", "views/diff.py"]  # fmt: skip


def run_page(page: str | None = None, query: dict[str, str] | None = None) -> AppTest:
    """Run the app as the server does, on ``page`` (None: the overview) with these address parameters."""
    at = AppTest.from_file(APP, default_timeout=120)
    at.run()
    if page is not None:
        at.switch_page(page)
    for key, value in (query or {}).items():
        at.query_params[key] = value
    return at.run()


def no_exception(at: AppTest) -> None:
    """The page ran without an exception (the exceptions' messages otherwise)."""
    assert not at.exception, [e.value for e in at.exception]


def page_html(at: AppTest) -> str:
    """Every st.html body of the page, one after another."""
    return "\n".join(h.proto.body for h in at.html)


def visible_text(html: str) -> str:
    """The text of rendered HTML (tags removed, entities kept): what a token run reads like."""
    return re.sub(r"<[^>]+>", "", html)


def texts(elements: Any) -> str:
    """The values of elements (warnings, captions, markdown...), one per line."""
    return "\n".join(str(e.value) for e in elements)


def heatmaps(at: AppTest) -> list[dict]:
    """The page's plotly charts as dicts, with each first trace's ``z`` decoded (plotly sends numpy arrays as
    base64 typed arrays)."""
    out = []
    for chart in at.get("plotly_chart"):
        spec = json.loads(chart.proto.spec)
        trace = spec["data"][0]
        z = trace.get("z")
        if isinstance(z, dict):
            shape = [int(n) for n in str(z["shape"]).split(",")]
            z = np.frombuffer(base64.b64decode(z["bdata"]), dtype=z["dtype"]).reshape(shape)
        trace["z"] = np.asarray(z, dtype=float)
        out.append(trace)
    return out


def shared_in_line(at: AppTest) -> int:
    """The shared-atom count in the line above the shared-atom list."""
    found = re.search(r"Jaccard \S+ \([a-z, ]+\), ([\d,]+) shared atoms", texts(at.markdown))
    assert found, texts(at.markdown)
    return int(found.group(1).replace(",", ""))
