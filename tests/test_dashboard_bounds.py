"""Untrusted input reaching the dashboard: every URL parameter is bounded (a shared link with
``layers=0-10000000`` once grew the server by 1.3 GB for 131 s), and names read from a store are shown
literally, never as Markdown or HTML."""

from __future__ import annotations

import pytest
from test_dashboard_apptest import _app, _no_exception, _texts, store_env, tiny_store  # noqa: F401

from dashboard.nav import MAX_PARAM_CHARS, MAX_PARAMS

MESSAGE_CHARS = 400  # a warning may quote a clipped parameter, never the whole of a long one


def _warnings(at) -> str:
    text = _texts(at.warning).replace("\\", "")  # markdown escapes removed
    assert len(text) < MESSAGE_CHARS * max(1, len(at.warning)), text[:500]
    return text


@pytest.mark.parametrize("layers", ["0-10000000", f"0-{10**12}", f"{-(10**12)}--1", "1,5-99999999999"])
def test_atom_map_huge_layer_range(store_env, layers):
    at = _app("views/atom_map.py", {"model": "tiny-llama", "layers": layers})
    _no_exception(at)
    shown = _warnings(at)
    assert "Cannot read layers" in shown and "out of range" in shown and "layers 0-2" in shown


def test_atom_map_overlong_layers_are_ignored(store_env):
    layers = ",".join(["1"] * 2000)  # 3,999 characters of valid layers
    at = _app("views/atom_map.py", {"model": "tiny-llama", "layers": layers, "colour": "density"})
    _no_exception(at)
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
    at = _app("views/atom_browser.py", query)
    _no_exception(at)
    shown = _warnings(at)
    assert "Ignored 1 address parameter(s)" in shown
    assert at.subheader or at.header  # the page still shows a dictionary
    assert all(len(str(at.query_params[k])) <= MAX_PARAM_CHARS for k in at.query_params)


def test_atom_browser_out_of_range_numbers_are_quoted_short(store_env):
    dict_id = store_env["ids"][("llama", 0)]
    at = _app("views/atom_browser.py", {"dict": str(dict_id), "atom": "9" * (MAX_PARAM_CHARS - 1)})
    _no_exception(at)
    shown = _warnings(at)
    assert "there is no atom" in shown and "…" in shown


@pytest.mark.parametrize("page", ["views/atom_browser.py", "views/atom_map.py"])
def test_too_many_parameters(store_env, page):
    query = {f"p{i}": "x" for i in range(MAX_PARAMS + 30)}
    at = _app(page, query)
    _no_exception(at)
    assert "Ignored 30 address parameter(s)" in _warnings(at)
