"""The dashboard's pages through Streamlit's AppTest on a small store of tiny random models (a Llama with
byte-level BPE, a BERT with WordPiece): every page, the overview, atom pages (from the URL, bad addresses,
search, initial-atom marks), live decomposition and its limits, a schema-v1 store, an empty store, a
missing one and a file that is not a store. The similarity page: test_similarity_page.py; atom maps:
test_atom_maps.py; the renderer: test_render.py."""

from __future__ import annotations

import shutil
from pathlib import Path

import duckdb
import pytest

from itda_core import decompose as D
from itda_core.store.connection import connect_readonly, connect_write
from tests.dashboard.helpers import PAGES, no_exception, page_html, run_page, shared_in_line, texts, visible_text


def _atom_where(store: dict, kind: str, layer: int, condition: str) -> int:
    with connect_readonly(store["path"]) as con:
        rows = con.execute(
            f"SELECT atom FROM atoms WHERE dict_id = ? AND {condition} ORDER BY atom", [store["ids"][(kind, layer)]]
        ).fetchall()
    assert rows, condition
    return int(rows[0][0])


def _atom_with(store: dict, kind: str, layer: int, pattern: str) -> int:
    with connect_readonly(store["path"]) as con:
        rows = con.execute(
            "SELECT atom FROM atoms WHERE dict_id = ? AND regexp_matches(token_text, ?) ORDER BY atom",
            [store["ids"][(kind, layer)], pattern],
        ).fetchall()
    assert rows, pattern
    return int(rows[0][0])


@pytest.mark.parametrize("page", PAGES)
def test_every_page_runs(store_env, page):
    at = run_page(page)
    no_exception(at)
    assert not at.error, [e.value for e in at.error]


def test_overview_lists_models_and_dictionaries(store_env):
    at = run_page()
    no_exception(at)
    metrics = {m.label: m.value for m in at.metric}
    assert metrics["Models"] == "2" and metrics["Dictionaries"] == "5"
    tables = [d.value for d in at.dataframe]
    assert any("tiny-llama" in set(t.get("model", [])) for t in tables)
    dicts = next(t for t in tables if "atoms" in t.columns)
    assert sorted(dicts["layer"].tolist()) == [0, 0, 1, 1, 2]


def test_atom_page_from_url_escapes_everything(store_env):
    dict_id = store_env["ids"][("llama", 0)]
    atom = _atom_with(store_env, "llama", 0, r"^\s*<$")
    at = run_page("views/atom_browser.py", {"dict": str(dict_id), "atom": str(atom)})
    no_exception(at)
    assert not at.warning, [w.value for w in at.warning]
    assert f"Atom {atom}" in at.header[0].value
    html = page_html(at)
    assert "<script" not in html and "</div><" not in html.replace("</div></td>", "")
    assert "&lt;script&gt;" in visible_text(html) and "&lt;/div&gt;" in visible_text(html)
    assert "🙂" in html and "⇥" in html
    tabs = [t.label for t in at.tabs]
    assert tabs == [
        "Top contexts",
        "Quantile samples",
        "Logit effect",
        "Nearest atoms",
        "Across dictionaries",
    ]
    # the logit effect (tiny Llama loaded from its folder) and the nearest atoms are tables
    frames = [d.value for d in at.dataframe]
    assert any("logit" in f.columns for f in frames)
    assert any("cosine" in f.columns for f in frames)
    # the same source token is an atom of other layers: listed with links
    shared = next(f for f in frames if "match" in f.columns)
    assert {0, 1, 2} & set(shared["layer"]) and shared["open"].str.startswith("atoms?dict=").all()


def test_atom_page_by_model_and_layer(store_env):
    at = run_page("views/atom_browser.py", {"model": "tiny-llama", "layer": "2", "atom": "3"})
    no_exception(at)
    assert "Atom 3" in at.header[0].value and "layer 2" in at.header[0].value


@pytest.mark.parametrize(
    ("query", "message"),
    [
        ({"dict": "1", "atom": "abc"}, "not a number"),
        ({"dict": "1", "atom": "999999"}, "there is no atom 999999"),
        ({"dict": "-4", "atom": "1"}, "no dictionary"),
        ({"dict": "<script>", "atom": "1"}, "no dictionary"),
        ({"model": "nope", "layer": "1", "atom": "1"}, "No dictionary for model"),
    ],
)
def test_atom_page_bad_urls(store_env, query, message):
    if query.get("dict") == "1":
        query = {**query, "dict": str(store_env["ids"][("llama", 0)])}
    at = run_page("views/atom_browser.py", query)
    no_exception(at)
    assert message in texts(at.warning)
    assert "<script>" not in texts(at.warning)  # echoed input is escaped for markdown
    assert at.subheader or at.header  # the page still shows a dictionary


def test_search_by_token_and_by_id(store_env):
    dict_id = store_env["ids"][("llama", 0)]
    with connect_readonly(store_env["path"]) as con:  # a word some atom comes from (which ones depends on MP)
        tokens = [t for (t,) in con.execute("SELECT token_text FROM atoms WHERE dict_id = ?", [dict_id]).fetchall()]
    word = max((t.strip() for t in tokens if t.strip().isalpha()), key=lambda t: (len(t), t))
    at = run_page("views/atom_browser.py", {"dict": str(dict_id)})
    at.text_input(key="ab_search").input(word).run()
    no_exception(at)
    assert "atoms whose source token contains" in texts(at.caption)
    found = at.dataframe[0].value
    assert 0 < len(found) < len(tokens) and found["token_text"].str.contains(word).all()
    at.text_input(key="ab_search").input("999999").run()
    assert "there is no atom 999999" in texts(at.warning)
    at.text_input(key="ab_search").input("#4").run()
    no_exception(at)
    assert "Atom 4 " in at.header[0].value and at.query_params["atom"] == "4"
    assert at.text_input(key="ab_search").value == ""
    at.button(key="ab_next").click().run()
    assert "Atom 5 " in at.header[0].value and at.query_params["atom"] == "5"
    at.text_input(key="ab_search").input("x" * 500).run()
    assert "limited to 200" in texts(at.warning)


def test_live_decomposition_page(store_env):
    at = run_page("views/live_decomposition.py")
    at.selectbox(key="live_run").select("tiny-llama").run()
    at.text_area(key="live_input").input("Paris <script>alert(1)</script> &amp; 🙂\tend\nline")
    at.button(key="live_go").click().run()
    no_exception(at)
    assert not at.error, [e.value for e in at.error]
    metrics = {m.label: m.value for m in at.metric}
    assert int(metrics["Tokens"]) > 5 and 0 < float(metrics["Mean cosine"]) <= 1.0
    html = page_html(at)
    assert "<script" not in html and "🙂" in html
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in visible_text(html) and "&amp;amp;" in visible_text(html)
    assert "atoms?dict=" in html  # each of the token's atoms links to its page
    # colour by one atom's coefficient
    colour = at.selectbox(key=next(k for k in at.session_state if str(k).startswith("live_colour_")))
    colour.select_index(1).run()
    no_exception(at)
    assert "coefficient of atom" in page_html(at)


def test_live_decomposition_limits(store_env):
    at = run_page("views/live_decomposition.py")
    at.text_area(key="live_input").input("x" * (D.MAX_CHARS + 10))
    at.button(key="live_go").click().run()
    no_exception(at)
    assert "characters" in texts(at.error) and str(D.MAX_CHARS)[:1] in texts(at.error)
    at.selectbox(key="live_run").select("tiny-llama").run()
    at.text_area(key="live_input").input("a b " * (D.MAX_TOKENS // 2 + 20))
    at.button(key="live_go").click().run()
    no_exception(at)
    assert "tokens" in texts(at.error)


def test_atom_pages_mark_initial_atoms(store_env):
    # the tiny Llama's initial atoms repeated in their batch (BOS, copies of documents): evidence, with a count
    atom = _atom_where(store_env, "llama", 1, "init_count >= 2")
    with connect_readonly(store_env["path"]) as con:
        count = con.execute("SELECT init_count FROM atoms WHERE dict_id = ? AND atom = ?",
                            [store_env["ids"][("llama", 1)], atom]).fetchone()[0]  # fmt: skip
    at = run_page("views/atom_browser.py", {"dict": str(store_env["ids"][("llama", 1)]), "atom": str(atom)})
    no_exception(at)
    assert f"Initial atom (its activation occurred {count} times in its batch)." in texts(at.info)
    # the tiny BERT's were each seen once: arbitrary picks
    atom = _atom_where(store_env, "bert", 1, "init_count = 1")
    at = run_page("views/atom_browser.py", {"dict": str(store_env["ids"][("bert", 1)]), "atom": str(atom)})
    no_exception(at)
    assert (
        "Initial atom, picked arbitrarily among rows seen once (not counted as evidence in Jaccard)."
        in texts(at.info)
    )
    # an atom added by the error rule is not marked
    atom = _atom_where(store_env, "bert", 1, "init_count = 0")
    at = run_page("views/atom_browser.py", {"dict": str(store_env["ids"][("bert", 1)]), "atom": str(atom)})
    no_exception(at)
    assert "Initial atom" not in texts(at.info)
    # the dictionary's atom list has the init count column and counts the initial atoms
    at = run_page("views/atom_browser.py", {"dict": str(store_env["ids"][("bert", 1)])})
    no_exception(at)
    table = next(d.value for d in at.dataframe if "init_count" in d.value.columns)
    with connect_readonly(store_env["path"]) as con:
        stored = dict(con.execute("SELECT atom, init_count FROM atoms WHERE dict_id = ?",
                                  [store_env["ids"][("bert", 1)]]).fetchall())  # fmt: skip
    assert dict(zip(table["atom"], table["init_count"], strict=True)) == stored
    n_once = sum(1 for c in stored.values() if c == 1)
    assert f"initial atoms (init count ≠ 0), {n_once:,} of them arbitrary picks" in texts(at.caption)


def _as_v1(source: Path, path: Path) -> Path:
    """A copy of a store as schema version 1 wrote it: no atoms.init_count."""
    shutil.copy(source, path)
    con = duckdb.connect(str(path))
    con.execute("ALTER TABLE atoms DROP COLUMN init_count")
    con.execute("UPDATE meta SET value = '1' WHERE key = 'schema_version'")
    con.close()
    return path


def test_v1_store_one_line_error_then_upgrade(store_env, tmp_path, monkeypatch):
    path = _as_v1(store_env["path"], tmp_path / "v1.duckdb")
    monkeypatch.setenv("ITDA_STORE", str(path))
    for page in [None, *PAGES[1:]]:
        at = run_page(page)
        no_exception(at)
        errors = [e.value for e in at.error]
        assert len(errors) == 1 and "\n" not in errors[0], errors
        assert "schema version 1" in errors[0] and f"itda store-info --store {path} --upgrade" in errors[0]
        assert not at.get("plotly_chart") and not at.dataframe
    # upgraded in place (what `itda store-info --upgrade` does): initial atoms' counts are unknown
    with connect_write(path):
        pass
    llama1 = store_env["ids"][("llama", 1)]
    with connect_readonly(path) as con:
        first_initial = con.execute("SELECT min(atom) FROM atoms WHERE dict_id = ? AND init_count = -1",
                                    [llama1]).fetchone()[0]  # fmt: skip
    at = run_page("views/atom_browser.py", {"dict": str(llama1), "atom": str(first_initial)})
    no_exception(at)
    assert not at.error, [e.value for e in at.error]
    assert "Initial atom (count not recorded: older store)." in texts(at.info)
    # ... so by default they do not count: the evidence sets are smaller than the atoms
    at = run_page("views/similarity.py")
    no_exception(at)
    assert shared_in_line(at) < shared_in_line(at.radio(key="sim_atoms").set_value("all").run())


def test_empty_store(tmp_path, monkeypatch):
    path = tmp_path / "empty.duckdb"
    with connect_write(path):
        pass  # a valid store with no dictionaries
    monkeypatch.setenv("ITDA_STORE", str(path))
    for page in [None, *PAGES[1:]]:
        at = run_page(page)
        no_exception(at)
        assert "no dictionaries" in texts(at.info)
        assert "demo-build" in texts(at.markdown)


def test_missing_and_foreign_store(tmp_path, monkeypatch):
    monkeypatch.setenv("ITDA_STORE", str(tmp_path / "nothing.duckdb"))
    at = run_page()
    no_exception(at)
    assert "no store" in texts(at.info) and "demo-build" in texts(at.markdown)
    foreign = tmp_path / "foreign.duckdb"
    con = duckdb.connect(str(foreign))
    con.execute("CREATE TABLE t (x INTEGER)")
    con.close()
    monkeypatch.setenv("ITDA_STORE", str(foreign))
    at = run_page("views/atom_browser.py")
    no_exception(at)
    assert "not an ITDA store" in texts(at.error)
