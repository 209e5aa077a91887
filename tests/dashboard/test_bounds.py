"""Untrusted input reaching the dashboard: every URL parameter is bounded (a shared link with
``layers=0-10000000`` once grew the server by 1.3 GB for 131 s), and names read from a store are shown
literally, never as Markdown or HTML."""

from __future__ import annotations

import json
import re
import shutil

import pytest

from itda_dashboard.nav import MAX_PARAM_CHARS, MAX_PARAMS
from tests.dashboard.helpers import no_exception, run_page, texts

MESSAGE_CHARS = 400  # a warning may quote a clipped parameter, never the whole of a long one


def _warnings(at) -> str:
    text = texts(at.warning).replace("\\", "")  # markdown escapes removed
    assert len(text) < MESSAGE_CHARS * max(1, len(at.warning)), text[:500]
    return text


@pytest.mark.parametrize("layers", ["0-10000000", f"0-{10**12}", f"{-(10**12)}--1", "1,5-99999999999"])
def test_atom_map_huge_layer_range(store_env, layers):
    at = run_page("views/atom_map.py", {"model": "tiny-llama", "layers": layers})
    no_exception(at)
    shown = _warnings(at)
    assert "Cannot read layers" in shown and "out of range" in shown and "layers 0-2" in shown


def test_atom_map_overlong_layers_are_ignored(store_env):
    layers = ",".join(["1"] * 2000)  # 3,999 characters of valid layers
    at = run_page("views/atom_map.py", {"model": "tiny-llama", "layers": layers, "colour": "density"})
    no_exception(at)
    shown = _warnings(at)
    assert "Ignored 1 address parameter(s) (layers)" in shown
    assert at.radio(key="map_colour").value == "density"  # the bounded parameters are still read
    assert "layers" in at.query_params and len(at.query_params["layers"]) < MAX_PARAM_CHARS  # rewritten


@pytest.mark.parametrize(
    "query",
    [
        {"dict": "1", "atom": "9" * 5000},
        {"dict": "7" * 5000, "atom": "1"},
        {"model": "m" * 10_000, "layer": "1", "atom": "1"},
        {"model": "tiny-llama", "layer": "1" * 3000, "atom": "1"},
    ],
)
def test_atom_browser_overlong_parameters(store_env, query):
    if query.get("dict") == "1":
        query = {**query, "dict": str(store_env["ids"][("llama", 0)])}
    at = run_page("views/atom_browser.py", query)
    no_exception(at)
    shown = _warnings(at)
    assert "Ignored 1 address parameter(s)" in shown
    assert at.subheader or at.header  # the page still shows a dictionary
    assert all(len(str(at.query_params[k])) <= MAX_PARAM_CHARS for k in at.query_params)


def test_atom_browser_out_of_range_numbers_are_quoted_short(store_env):
    dict_id = store_env["ids"][("llama", 0)]
    at = run_page("views/atom_browser.py", {"dict": str(dict_id), "atom": "9" * (MAX_PARAM_CHARS - 1)})
    no_exception(at)
    shown = _warnings(at)
    assert "there is no atom" in shown and "…" in shown


@pytest.mark.parametrize("page", ["views/atom_browser.py", "views/atom_map.py"])
def test_too_many_parameters(store_env, page):
    query = {f"p{i}": "x" for i in range(MAX_PARAMS + 30)}
    at = run_page(page, query)
    no_exception(at)
    assert "Ignored 30 address parameter(s)" in _warnings(at)


HOSTILE = "![x](http://example.invalid/a.png) <img src=x> **bold** [link](http://example.invalid/b)"
# Patterns of what would render: Markdown (an image, a tag not backslash-escaped, a link) and HTML (st.html,
# plotly legends and hovers); md-escaped and html-escaped text never matches them.
MARKDOWN_MARKS = (r"!\[", r"(?<!\\)<img", r"\]\(http")
HTML_MARKS = (r"<img", r"<a ")


@pytest.fixture
def hostile_store(tiny_store, tmp_path, monkeypatch):
    """A copy of the session store whose Llama is named with Markdown and HTML (a hostile or careless store)."""
    import duckdb

    path = tmp_path / "hostile.duckdb"
    shutil.copy(tiny_store["path"], path)
    con = duckdb.connect(str(path))
    try:
        old = tiny_store["names"]["llama"]
        con.execute("UPDATE models SET name = ? WHERE name = ?", [HOSTILE, old])
        con.execute("UPDATE dictionaries SET model_name = ? WHERE model_name = ?", [HOSTILE, old])
    finally:
        con.close()
    monkeypatch.setenv("ITDA_STORE", str(path))
    return {**tiny_store, "path": path}


def _strings(value) -> list[str]:
    """Every string inside a decoded JSON value."""
    if isinstance(value, str):
        return [value]
    if isinstance(value, dict):
        return [t for v in value.values() for t in _strings(v)]
    if isinstance(value, list):
        return [t for v in value for t in _strings(v)]
    return []


def _outside_code(markdown: str) -> str:
    """Markdown without its code spans (whose text is shown literally)."""
    return re.sub(r"`[^`\n]*`", "", markdown)


def _rendered(at) -> list[tuple[str, str, tuple[str, ...]]]:
    """(where, text, marks it must not hold) of everything the page renders as Markdown or HTML: text elements,
    alerts, widget labels, radio and slider options (Markdown in Streamlit), HTML blocks and the strings of plotly
    specs (HTML in legends and hovers)."""
    out: list[tuple[str, str]] = []
    for kind in ("title", "header", "subheader", "markdown", "caption", "warning", "info", "error", "success"):
        out += [(kind, str(e.value), MARKDOWN_MARKS) for e in at.get(kind)]
    for kind in ("selectbox", "multiselect", "radio", "select_slider", "text_input", "checkbox", "toggle", "button"):
        out += [(f"{kind} label", str(e.label), MARKDOWN_MARKS) for e in at.get(kind)]
    for kind in ("radio", "select_slider"):
        out += [(f"{kind} option", str(o), MARKDOWN_MARKS) for e in at.get(kind) for o in e.options]
    out += [("metric label", str(m.label), MARKDOWN_MARKS) for m in at.metric]
    out += [("html", h.proto.body, HTML_MARKS) for h in at.html]
    out += [("plotly", t, HTML_MARKS) for c in at.get("plotly_chart") for t in _strings(json.loads(c.proto.spec))]
    return out


def _assert_literal(at) -> None:
    no_exception(at)
    bad = [(where, text[:200]) for where, text, marks in _rendered(at)
           if any(re.search(m, _outside_code(text) if marks is MARKDOWN_MARKS else text) for m in marks)]
    assert not bad, bad


def test_hostile_model_name_is_shown_literally(hostile_store):
    at = run_page()  # overview
    _assert_literal(at)
    assert any(HOSTILE in set(d.value.get("model", [])) for d in at.dataframe)  # tables show it as plain text
    dict_id = hostile_store["ids"][("llama", 1)]
    at = run_page("views/atom_browser.py", {"dict": str(dict_id)})  # a dictionary: heading, table
    _assert_literal(at)
    assert at.selectbox(key="ab_run").value == HOSTILE  # select boxes show options as plain text
    at.text_input(key="ab_search").set_value("99999").run()  # "<label> has atoms 0 to ..."
    _assert_literal(at)
    at = run_page("views/atom_browser.py", {"dict": str(dict_id), "atom": "0"})  # an atom page, its logit effect
    _assert_literal(at)
    assert "example\\.invalid" in at.header[0].value
    at = run_page("views/live_decomposition.py")
    at.selectbox(key="live_run").set_value(HOSTILE).run()
    _assert_literal(at)
    at.button(key="live_go").click().run()  # the model cannot load under that name: the error quotes it
    _assert_literal(at)
    at = run_page("views/similarity.py")
    _assert_literal(at)
    at = run_page("views/atom_map.py", {"model": HOSTILE, "layers": "0"})  # no stored map: the command to compute it
    _assert_literal(at)
    assert "itda atom-map" in texts(at.info)
