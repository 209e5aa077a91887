"""The dashboard: the token renderer, live decomposition, atom maps, and every page through Streamlit's
AppTest on a small store built from tiny random models (a Llama with byte-level BPE, a BERT with
WordPiece), including an empty store, a missing one and bad inputs in the URL and the text box."""

from __future__ import annotations

import re
from pathlib import Path

import duckdb
import numpy as np
import pytest
from streamlit.testing.v1 import AppTest
from tiny import tiny_corpus, tiny_model

from dashboard import live
from dashboard.render import (
    Cell,
    cell_html,
    diverging_color,
    escape,
    label,
    md,
    pieces,
    quality_color,
    visible,
)
from dashboard.render import tokens_html as render_tokens
from itda_core.atom_map import compute_atom_maps, has_map, read_atom_map, store_atom_map
from itda_core.store.connection import connect_readonly, connect_write, transaction

APP = str(Path(__file__).resolve().parents[1] / "dashboard" / "app.py")
PAGES = ["views/overview.py", "views/atom_browser.py", "views/live_decomposition.py", "views/similarity.py",
         "views/atom_map.py"]  # fmt: skip
HELD_OUT = 0.25


def build_tiny_store(root: Path, *, atom_map: bool = True) -> dict:
    """A store with a 3-layer tiny Llama and a 2-layer tiny BERT (saved as model folders, so the dashboard
    loads them by name), every layer trained, written and indexed; an atom map for the Llama's layer 1."""
    from itda_core.models import load_model
    from itda_core.store.index import IndexConfig, index_model
    from itda_core.store.writer import write_dictionary
    from itda_core.trainer import TrainConfig, Trainer

    root.mkdir(parents=True, exist_ok=True)
    store = root / "itda.duckdb"
    corpus = tiny_corpus(n_copies=4)
    train, _ = corpus.split(HELD_OUT)
    ids: dict[tuple[str, int], int] = {}
    names: dict[str, str] = {}
    for kind, n_layers in (("llama", 3), ("bert", 2)):
        folder = root / f"tiny-{kind}"
        made = tiny_model(kind, n_layers=n_layers)
        made.model.save_pretrained(folder)
        made.tokenizer.save_pretrained(folder)
        model = load_model(str(folder), device="cpu")
        names[kind] = model.name
        config = TrainConfig(layers=list(range(n_layers)), k=4, max_tokens=None, progress=False)
        for layer, itda in Trainer(model, train, config).run().items():
            ids[(kind, layer)] = write_dictionary(store, itda, model, corpus)
        index_model(store, model, IndexConfig(max_tokens=None, top_n=5, n_quantiles=4, per_quantile=3,
                                              hist_bins=8, progress=False))  # fmt: skip
    if atom_map:
        store_atom_map(store, [ids[("llama", 1)]])
    return {"path": store, "ids": ids, "names": names, "root": root}


@pytest.fixture(scope="session")
def tiny_store(tmp_path_factory):
    return build_tiny_store(tmp_path_factory.mktemp("dash"))


@pytest.fixture
def store_env(tiny_store, monkeypatch):
    monkeypatch.setenv("ITDA_STORE", str(tiny_store["path"]))
    return tiny_store


def _app(page: str | None = None, query: dict[str, str] | None = None) -> AppTest:
    at = AppTest.from_file(APP, default_timeout=120)
    at.run()
    if page is not None:
        at.switch_page(page)
    for key, value in (query or {}).items():
        at.query_params[key] = value
    return at.run()


def _no_exception(at: AppTest) -> None:
    assert not at.exception, [e.value for e in at.exception]


def _html(at: AppTest) -> str:
    return "\n".join(h.proto.body for h in at.html)


def _shown(html: str) -> str:
    """The text of rendered HTML (tags removed, entities kept): what a token run reads like."""
    return re.sub(r"<[^>]+>", "", html)


def _texts(elements) -> str:
    return "\n".join(str(e.value) for e in elements)


def _atom_with(store: dict, kind: str, layer: int, pattern: str) -> int:
    with connect_readonly(store["path"]) as con:
        rows = con.execute(
            "SELECT atom FROM atoms WHERE dict_id = ? AND regexp_matches(token_text, ?) ORDER BY atom",
            [store["ids"][(kind, layer)], pattern],
        ).fetchall()
    assert rows, pattern
    return int(rows[0][0])


# ---- renderer --------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "raw",
    ["<script>alert(1)</script>", "</div><div>", "&amp;", "a\"b'c", "<img src=x onerror=alert(1)>", "🙂"],
)
def test_tokens_are_escaped(raw):
    html = render_tokens([Cell(raw, 1.0, title=raw), Cell(raw, -0.5, target=True, gap=raw)], 1.0)
    assert "<script" not in html and "<img" not in html and "</div><div>" not in html
    assert escape(raw) in html
    if raw == "&amp;":
        assert "&amp;amp;" in html
    if raw == "🙂":
        assert "🙂" in html
    # titles are attribute-safe: no raw quote can end the attribute
    for title in re.findall(r'title="([^"]*)"', html):
        assert "<" not in title and '"' not in title


def test_whitespace_and_tokenizer_markers_are_visible():
    assert visible("a\nb\tc\r\nd") == "a↵b⇥c↵d"
    assert visible("ĠParis", markers=True) == " Paris"
    assert visible("▁Paris", markers=True) == " Paris"
    assert visible("Ċ", markers=True) == "↵"
    assert visible("ĠParis") == "ĠParis"  # real text keeps the character
    assert label("ĠParis") == "“ Paris”"
    html = cell_html(Cell("x\ny"), 1.0)
    assert "x↵y" in html and "\n" not in html
    assert "⟨&lt;bos&gt;⟩" in cell_html(Cell("<bos>", special=True), 1.0)


def test_markdown_escaping():
    assert md("**bold** <b>x</b> [a](b)") == r"\*\*bold\*\* \<b\>x\</b\> \[a\]\(b\)"
    assert md("a\nb") == "a↵b"


def test_pieces_show_split_characters_once():
    text = "Hi 🙂 there"
    spans = [(0, 0), (0, 2), (2, 4), (3, 4), (3, 4), (4, 10)]
    got = pieces(text, spans, ["<bos>", "Hi", " ?", "?", "?", " there"])
    assert got[0] == ("", "<bos>", True)
    assert [p for _, p, _ in got[1:]] == ["Hi", " 🙂", "", "", " there"]
    # a tokenizer that leaves spaces out of its offsets (WordPiece): the space is a gap, not the token
    assert pieces("a b", [(0, 1), (2, 3)], ["a", "b"]) == [("", "a", False), (" ", "b", False)]


def test_colour_scales():
    assert diverging_color(0.0, 1.0) == "transparent"
    assert diverging_color(2.0, 1.0).startswith("rgba(214,39,40,0.800")  # saturates
    assert diverging_color(-0.5, 1.0).startswith("rgba(31,119,180")
    assert diverging_color(float("nan"), 1.0) == "transparent"
    assert quality_color(1.0) == "transparent"
    assert quality_color(0.3).startswith("rgba(214,39,40,0.800")


# ---- live decomposition and logit effects ----------------------------------------------------------------


@pytest.fixture(scope="module")
def loaded(tiny_store):
    from itda_core.models import load_model
    from itda_core.store.writer import read_dictionary

    model = load_model(tiny_store["names"]["llama"], device="cpu")
    with connect_readonly(tiny_store["path"]) as con:
        itda = read_dictionary(con, tiny_store["ids"][("llama", 1)])
    return model, itda


def test_decompose_reconstructs_and_aggregates(loaded):
    model, itda = loaded
    text = "The capital of France is Paris. <script> & </div> 🙂\ttabs\nnewline"
    dec = live.decompose(model, itda, text, k=4)
    assert len(dec) == len(dec.pieces) == dec.indices.shape[0]
    assert dec.special[0] and dec.token_strs[0] == "<bos>"
    assert "".join(g + p for g, p, s in zip(dec.gaps, dec.pieces, dec.special, strict=True) if not s) == text
    assert np.all(dec.cosine[dec.encoded] > 0.5) and np.all(dec.cosine[dec.encoded] <= 1.0 + 1e-5)
    stats = live.summary(dec)
    assert stats["encoded"] == len(dec) and stats["min_cosine"] == pytest.approx(dec.cosine[stats["worst"][0]])
    # an atom picked at two steps counts once, with the summed coefficient
    dec.indices[3] = [5, 7, 5, 9]
    dec.coefs[3] = [1.0, 0.5, 0.25, -0.1]
    atoms = live.token_atoms(dec, 3)
    assert atoms["atom"].tolist() == [5, 7, 9] and atoms["coef"].tolist() == pytest.approx([1.25, 0.5, -0.1])
    assert live.atom_coefficients(dec, 5)[3] == pytest.approx(1.25)


def test_length_limits(loaded):
    model, itda = loaded
    from itda_core.errors import ITDAError

    assert "at most" in live.length_problem("x" * (live.MAX_CHARS + 1))
    assert live.length_problem("   ") is not None
    with pytest.raises(ITDAError, match="tokens"):
        live.decompose(model, itda, "a b " * (live.MAX_TOKENS // 2 + 10))


def test_logit_effect(loaded, tiny_store):
    model, itda = loaded
    effect = live.logit_effect(model, itda.atoms[2].numpy(), top=5)
    assert effect is not None and effect["normed"]
    assert len(effect["promoted"]) == 5 and len(effect["suppressed"]) == 5
    assert effect["promoted"]["logit"].min() > effect["suppressed"]["logit"].max()
    from itda_core.models import load_model

    bert = load_model(tiny_store["names"]["bert"], device="cpu")
    assert live.logit_effect(bert, np.ones(bert.d_model)) is None


# ---- atom maps -------------------------------------------------------------------------------------------


def test_atom_map_is_stored_once_and_goes_stale(tmp_path, tiny_store):
    import shutil

    path = tmp_path / "copy.duckdb"
    shutil.copy(tiny_store["path"], path)
    llama1, llama2 = tiny_store["ids"][("llama", 1)], tiny_store["ids"][("llama", 2)]
    with connect_readonly(path) as con:
        frame = read_atom_map(con, [llama1])
        n_atoms = con.execute("SELECT n_atoms FROM dictionaries WHERE dict_id = ?", [llama1]).fetchall()[0][0]
    assert frame is not None and len(frame) == n_atoms
    assert {"x", "y", "token_text", "before", "after", "layer", "density"} <= set(frame.columns)
    assert np.isfinite(frame[["x", "y"]].to_numpy()).all()
    # only the missing dictionaries are computed, and a second call has nothing to do
    done = compute_atom_maps(path, [llama1, llama2])
    assert done == [llama2] and compute_atom_maps(path, [llama1, llama2]) == []
    assert store_atom_map(path, [llama1, llama2]) == 2 * n_atoms and has_map(path, [llama1, llama2])
    # a replaced dictionary (written again) no longer matches its old map
    with connect_write(path) as con, transaction(con):
        con.execute("UPDATE dictionaries SET written = now() + INTERVAL 1 SECOND WHERE dict_id = ?", [llama1])
    assert not has_map(path, [llama1]) and not has_map(path, [llama1, llama2])
    assert compute_atom_maps(path, [llama1, llama2]) == [llama1]


def test_cli_atom_map_and_serve_line(tmp_path, tiny_store):
    import shutil

    from typer.testing import CliRunner

    from itda_core.cli import app
    from itda_core.commands.dashboard import serve_command_line

    path = tmp_path / "copy.duckdb"
    shutil.copy(tiny_store["path"], path)
    run = CliRunner().invoke(app, ["atom-map", "--store", str(path), "--model", "tiny-bert", "--layers", "1"])
    assert run.exit_code == 0, run.output
    assert "mapped 1 dictionaries" in run.output and has_map(path, [tiny_store["ids"][("bert", 1)]])
    run = CliRunner().invoke(app, ["atom-map", "--store", str(path), "--model", "tiny-bert", "--joint"])
    assert run.exit_code == 0 and "joint map of 2 dictionaries" in run.output
    line = serve_command_line(path, 8765)
    assert line[-2:] == ["--store", str(path)] and Path(line[4]).name == "app.py"
    assert line[line.index("--server.address") + 1] == "localhost"


# ---- pages (AppTest) -------------------------------------------------------------------------------------


@pytest.mark.parametrize("page", PAGES)
def test_every_page_runs(store_env, page):
    at = _app(page)
    _no_exception(at)
    assert not at.error, [e.value for e in at.error]


def test_overview_lists_models_and_dictionaries(store_env):
    at = _app()
    _no_exception(at)
    metrics = {m.label: m.value for m in at.metric}
    assert metrics["Models"] == "2" and metrics["Dictionaries"] == "5"
    tables = [d.value for d in at.dataframe]
    assert any("tiny-llama" in set(t.get("model", [])) for t in tables)
    dicts = next(t for t in tables if "atoms" in t.columns)
    assert sorted(dicts["layer"].tolist()) == [0, 0, 1, 1, 2]


def test_atom_page_from_url_escapes_everything(store_env):
    dict_id = store_env["ids"][("llama", 0)]
    atom = _atom_with(store_env, "llama", 0, r"^\s*<$")
    at = _app("views/atom_browser.py", {"dict": str(dict_id), "atom": str(atom)})
    _no_exception(at)
    assert not at.warning, [w.value for w in at.warning]
    assert f"Atom {atom}" in at.header[0].value
    html = _html(at)
    assert "<script" not in html and "</div><" not in html.replace("</div></td>", "")
    assert "&lt;script&gt;" in _shown(html) and "&lt;/div&gt;" in _shown(html)
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
    at = _app("views/atom_browser.py", {"model": "tiny-llama", "layer": "2", "atom": "3"})
    _no_exception(at)
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
    at = _app("views/atom_browser.py", query)
    _no_exception(at)
    assert message in _texts(at.warning)
    assert "<script>" not in _texts(at.warning)  # echoed input is escaped for markdown
    assert at.subheader or at.header  # the page still shows a dictionary


def test_search_by_token_and_by_id(store_env):
    at = _app("views/atom_browser.py", {"dict": str(store_env["ids"][("llama", 0)])})
    at.text_input(key="ab_search").input("Paris").run()
    _no_exception(at)
    assert "atoms whose source token contains" in _texts(at.caption)
    found = at.dataframe[0].value
    assert len(found) and found["token_text"].str.contains("Paris").all()
    at.text_input(key="ab_search").input("999999").run()
    assert "there is no atom 999999" in _texts(at.warning)
    at.text_input(key="ab_search").input("#4").run()
    _no_exception(at)
    assert "Atom 4 " in at.header[0].value and at.query_params["atom"] == "4"
    assert at.text_input(key="ab_search").value == ""
    at.button(key="ab_next").click().run()
    assert "Atom 5 " in at.header[0].value and at.query_params["atom"] == "5"
    at.text_input(key="ab_search").input("x" * 500).run()
    assert "limited to 200" in _texts(at.warning)


def test_live_decomposition_page(store_env):
    at = _app("views/live_decomposition.py")
    at.selectbox(key="live_run").select("tiny-llama").run()
    at.text_area(key="live_input").input("Paris <script>alert(1)</script> &amp; 🙂\tend\nline")
    at.button(key="live_go").click().run()
    _no_exception(at)
    assert not at.error, [e.value for e in at.error]
    metrics = {m.label: m.value for m in at.metric}
    assert int(metrics["Tokens"]) > 5 and 0 < float(metrics["Mean cosine"]) <= 1.0
    html = _html(at)
    assert "<script" not in html and "🙂" in html
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in _shown(html) and "&amp;amp;" in _shown(html)
    assert "atoms?dict=" in html  # each of the token's atoms links to its page
    # colour by one atom's coefficient
    colour = at.selectbox(key=next(k for k in at.session_state if str(k).startswith("live_colour_")))
    colour.select_index(1).run()
    _no_exception(at)
    assert "coefficient of atom" in _html(at)


def test_live_decomposition_limits(store_env):
    at = _app("views/live_decomposition.py")
    at.text_area(key="live_input").input("x" * (live.MAX_CHARS + 10))
    at.button(key="live_go").click().run()
    _no_exception(at)
    assert "characters" in _texts(at.error) and str(live.MAX_CHARS)[:1] in _texts(at.error)
    at.selectbox(key="live_run").select("tiny-llama").run()
    at.text_area(key="live_input").input("a b " * (live.MAX_TOKENS // 2 + 20))
    at.button(key="live_go").click().run()
    _no_exception(at)
    assert "tokens" in _texts(at.error)


def test_similarity_page(store_env):
    at = _app("views/similarity.py")
    _no_exception(at)
    at.selectbox(key="sim_a").select("tiny-llama").run()
    at.selectbox(key="sim_b").select("tiny-llama").run()
    _no_exception(at)
    assert "shared atoms" in _texts(at.markdown)
    frames = [d.value for d in at.dataframe]
    pairs = next(f for f in frames if "token_a" in f.columns)
    assert len(pairs) and pairs.iloc[:, 0].str.startswith("atoms?dict=").all()
    # across tokenizers (Llama rows, BERT columns) atoms are matched by characters
    at.selectbox(key="sim_b").select("tiny-bert").run()
    _no_exception(at)
    assert "spans" in _texts(at.caption)


def test_atom_map_page(store_env):
    at = _app("views/atom_map.py")
    at.selectbox(key="map_run").select("tiny-llama").run()
    at.multiselect(key="map_layers_tiny-llama").set_value([1]).run()
    _no_exception(at)
    assert not at.info, [i.value for i in at.info]
    assert "UMAP" in _texts(at.caption)
    for colour in ("density", "source token"):
        at.radio(key="map_colour").set_value(colour).run()
        _no_exception(at)
    # a layer without a stored map: the command to compute it, and a button to compute it in memory
    at.multiselect(key="map_layers_tiny-llama").set_value([0]).run()
    assert "itda atom-map" in _texts(at.info)
    at.button(key="map_compute_btn").click().run()
    _no_exception(at)
    assert "Computed in memory" in _texts(at.caption)


def test_atom_map_url(store_env):
    at = _app("views/atom_map.py", {"model": "tiny-llama", "layers": "1", "colour": "density"})
    _no_exception(at)
    assert at.radio(key="map_colour").value == "density" and not at.info
    assert at.multiselect(key="map_layers_tiny-llama").value == [1]
    at.radio(key="map_colour").set_value("layer").run()
    assert at.query_params["colour"] == "layer" and at.query_params["layers"] == "1"
    at = _app("views/atom_map.py", {"model": "tiny-llama", "layers": "9-x"})
    _no_exception(at)
    assert "Cannot read layers" in _texts(at.warning)


def test_empty_store(tmp_path, monkeypatch):
    path = tmp_path / "empty.duckdb"
    with connect_write(path):
        pass  # a valid store with no dictionaries
    monkeypatch.setenv("ITDA_STORE", str(path))
    for page in [None, *PAGES[1:]]:
        at = _app(page)
        _no_exception(at)
        assert "no dictionaries" in _texts(at.info)
        assert "demo-build" in _texts(at.markdown)


def test_missing_and_foreign_store(tmp_path, monkeypatch):
    monkeypatch.setenv("ITDA_STORE", str(tmp_path / "nothing.duckdb"))
    at = _app()
    _no_exception(at)
    assert "no store" in _texts(at.info) and "demo-build" in _texts(at.markdown)
    foreign = tmp_path / "foreign.duckdb"
    con = duckdb.connect(str(foreign))
    con.execute("CREATE TABLE t (x INTEGER)")
    con.close()
    monkeypatch.setenv("ITDA_STORE", str(foreign))
    at = _app("views/atom_browser.py")
    _no_exception(at)
    assert "not an ITDA store" in _texts(at.error)
