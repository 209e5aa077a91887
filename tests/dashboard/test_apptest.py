"""The dashboard: the token renderer, live decomposition, atom maps, and every page through Streamlit's
AppTest on a small store built from tiny random models (a Llama with byte-level BPE, a BERT with
WordPiece), including an empty store, a missing one and bad inputs in the URL and the text box."""

from __future__ import annotations

import base64
import importlib
import json
import re
import shutil
from pathlib import Path

import duckdb
import numpy as np
import pytest
import torch
from streamlit.testing.v1 import AppTest

from itda_core.jobs.atom_maps import compute_atom_maps, has_map, read_atom_map, store_atom_map
from itda_core.similarity.jaccard import DEFAULT_OPTIONS, JaccardOptions
from itda_core.store.connection import connect_readonly, connect_write, transaction
from itda_dashboard import live
from itda_dashboard.render import (
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
from itda_dashboard.render import tokens_html as render_tokens
from tests.tiny import tiny_corpus, tiny_model
from tests.tolerance import cosine_tol, unit_roundoff

APP = str(Path(__file__).resolve().parents[2] / "dashboard" / "app.py")
PAGES = ["views/overview.py", "views/atom_browser.py", "views/live_decomposition.py", "views/similarity.py",
         "views/atom_map.py"]  # fmt: skip
HELD_OUT = 0.25


def build_tiny_store(root: Path, *, atom_map: bool = True) -> dict:
    """A store with a 3-layer tiny Llama and a 2-layer tiny BERT (saved as model folders, so the dashboard
    loads them by name), every layer trained, written and indexed; an atom map for the Llama's layer 1."""
    from itda_core.jobs.index import IndexConfig, index_model
    from itda_core.models import load_model
    from itda_core.store.writer import write_dictionary
    from itda_core.trainer import TrainConfig, Trainer

    root.mkdir(parents=True, exist_ok=True)
    store = root / "itda.duckdb"
    corpus = tiny_corpus(n_copies=4)
    train, _ = corpus.split(HELD_OUT)
    ids: dict[tuple[str, int], int] = {}
    names: dict[str, str] = {}
    # the Llama's threshold: at the default one it adds every distinct token of the training split in every
    # layer (242 atoms each), so every similarity between its layers would be 1 whatever the options; at 0.02
    # its layers keep 168-187 atoms and differ (raw Jaccard 0.72-0.82)
    thresholds = {"llama": 0.02, "bert": None}
    for kind, n_layers in (("llama", 3), ("bert", 2)):
        folder = root / f"tiny-{kind}"
        made = tiny_model(kind, n_layers=n_layers)
        made.model.save_pretrained(folder)
        made.tokenizer.save_pretrained(folder)
        model = load_model(str(folder), device="cpu")
        names[kind] = model.name
        config = TrainConfig(layers=list(range(n_layers)), k=4, threshold=thresholds[kind], max_tokens=None,
                             progress=False)
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


def _heatmaps(at: AppTest) -> list[dict]:
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


def _model_table(at: AppTest):
    """The model x model table (models as index and columns)."""
    return next(d.value for d in at.dataframe if d.value.index.name == "model")


def _shared_in_line(at: AppTest) -> int:
    """The shared-atom count in the line above the shared-atom list."""
    found = re.search(r"Jaccard \S+ \([a-z, ]+\), ([\d,]+) shared atoms", _texts(at.markdown))
    assert found, _texts(at.markdown)
    return int(found.group(1).replace(",", ""))


def _library_jaccard(store: dict, a: tuple[str, int], b: tuple[str, int], options: JaccardOptions) -> float:
    """itda_core's Jaccard of two of the store's dictionaries (same tokenizer), read back as ITDA objects."""
    from itda_core.similarity.jaccard import jaccard
    from itda_core.store.reader import read_dictionary

    with connect_readonly(store["path"]) as con:
        return jaccard(read_dictionary(con, store["ids"][a]), read_dictionary(con, store["ids"][b]), options)


def _library_model_jaccard(store: dict, options: JaccardOptions) -> float:
    """itda_core's model-level Jaccard of the tiny Llama and the tiny BERT (their layers 1..n-1)."""
    from itda_core.similarity.jaccard import model_jaccard
    from itda_core.store.reader import read_dictionary

    with connect_readonly(store["path"]) as con:
        models = {
            kind: {layer: read_dictionary(con, d) for (k, layer), d in store["ids"].items() if k == kind}
            for kind in ("llama", "bert")
        }
    return model_jaccard(models["llama"], models["bert"], options=options)


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
    from itda_core.store.reader import read_dictionary

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
    # a float32 cosine of d_model-wide vectors overshoots 1 by at most its rounding
    assert np.all(dec.cosine[dec.encoded] > 0.5)
    assert np.all(dec.cosine[dec.encoded] <= 1.0 + cosine_tol(model.d_model))
    stats = live.summary(dec)
    # the minimum is one of the values, picked, not computed
    assert stats["encoded"] == len(dec) and stats["min_cosine"] == dec.cosine[stats["worst"][0]]
    # an atom picked at two steps counts once, with the summed coefficient
    dec.indices[3] = [5, 7, 5, 9]
    dec.coefs[3] = [1.0, 0.5, 0.25, -0.1]
    atoms = live.token_atoms(dec, 3)
    # the coefficients are float32: each within one rounding of its literal (1.0 + 0.25 itself is exact)
    one_rounding = unit_roundoff(torch.float32)
    assert atoms["atom"].tolist() == [5, 7, 9]
    assert atoms["coef"].tolist() == pytest.approx([1.25, 0.5, -0.1], rel=one_rounding)
    assert live.atom_coefficients(dec, 5)[3] == pytest.approx(1.25, rel=one_rounding)


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
        sizes = dict(con.execute("SELECT dict_id, n_atoms FROM dictionaries").fetchall())
    n_atoms = sizes[llama1]
    assert frame is not None and len(frame) == n_atoms
    assert {"x", "y", "token_text", "before", "after", "layer", "density"} <= set(frame.columns)
    assert np.isfinite(frame[["x", "y"]].to_numpy()).all()
    # only the missing dictionaries are computed, and a second call has nothing to do
    done = compute_atom_maps(path, [llama1, llama2])
    assert done == [llama2] and compute_atom_maps(path, [llama1, llama2]) == []
    assert store_atom_map(path, [llama1, llama2]) == n_atoms + sizes[llama2] and has_map(path, [llama1, llama2])
    # a replaced dictionary (written again) no longer matches its old map
    with connect_write(path) as con, transaction(con):
        con.execute("UPDATE dictionaries SET written = now() + INTERVAL 1 SECOND WHERE dict_id = ?", [llama1])
    assert not has_map(path, [llama1]) and not has_map(path, [llama1, llama2])
    assert compute_atom_maps(path, [llama1, llama2]) == [llama1]


def test_cli_atom_map_and_serve_line(tmp_path, tiny_store):
    import shutil

    from typer.testing import CliRunner

    from itda_core.cli.app import app
    from itda_core.cli.dashboard import serve_command_line

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
    dict_id = store_env["ids"][("llama", 0)]
    with connect_readonly(store_env["path"]) as con:  # a word some atom comes from (which ones depends on MP)
        tokens = [t for (t,) in con.execute("SELECT token_text FROM atoms WHERE dict_id = ?", [dict_id]).fetchall()]
    word = max((t.strip() for t in tokens if t.strip().isalpha()), key=lambda t: (len(t), t))
    at = _app("views/atom_browser.py", {"dict": str(dict_id)})
    at.text_input(key="ab_search").input(word).run()
    _no_exception(at)
    assert "atoms whose source token contains" in _texts(at.caption)
    found = at.dataframe[0].value
    assert 0 < len(found) < len(tokens) and found["token_text"].str.contains(word).all()
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


def test_similarity_defaults_and_label(store_env):
    """The page shows DEFAULT_OPTIONS, says so on the heatmaps, and its values are the raw index of the
    evidence atoms (as `itda similarity --store` computes it)."""
    at = _app("views/similarity.py")
    _no_exception(at)
    label_text = DEFAULT_OPTIONS.label
    assert label_text == "Jaccard (raw, evidence atoms)"
    assert at.radio(key="sim_atoms").value == "evidence" and at.radio(key="sim_index").value == "raw"
    assert "(default)" in at.radio(key="sim_atoms").options[0] and "(default)" in at.radio(key="sim_index").options[0]
    assert at.query_params["atoms"] == "evidence" and at.query_params["index"] == "raw"
    assert f"Showing **{label_text}**: |A ∩ B| / |A ∪ B|, 0 to 1." in _texts(at.caption)
    maps = _heatmaps(at)
    assert len(maps) == 2  # layer x layer, model x model
    for trace in maps:  # raw: Viridis from 0, no centre, the label on the colour bar
        assert trace["zmin"] == 0 and "zmid" not in trace
        assert trace["colorbar"]["title"]["text"].replace("<br>", " ").replace(", ", ",") == (
            "Jaccard (raw,evidence atoms)")
    # the values are the library's (itda_core's jaccard of the dictionaries read from the store)
    for i, j in ((0, 1), (1, 2), (0, 2)):
        assert maps[0]["z"][i, j] == _library_jaccard(store_env, ("llama", i), ("llama", j), DEFAULT_OPTIONS)
    assert "Jaccard (raw, evidence atoms)" in _texts(at.markdown)
    assert re.search(r"Jaccard \d\.\d{3} \(raw, evidence atoms\), [\d,]+ shared atoms", _texts(at.markdown))
    # the model x model matrix is under the same options: the library's model-level Jaccard (layers 1..n-1,
    # matched by characters across the two tokenizers)
    table = _model_table(at)
    assert table.loc["tiny-llama", "tiny-llama"] == 1.0
    expected = _library_model_jaccard(store_env, DEFAULT_OPTIONS)
    # the table shows round(4): k / 1e4 in one correctly rounded division, the double Python's round gives too
    assert table.loc["tiny-llama", "tiny-bert"] == pytest.approx(round(expected, 4), rel=unit_roundoff(torch.float64))


def test_similarity_options_change_the_values(store_env):
    at = _app("views/similarity.py")
    at.selectbox(key="sim_a").select("tiny-llama").run()
    at.selectbox(key="sim_b").select("tiny-llama").run()
    raw = _heatmaps(at)[0]["z"]
    raw_models = _model_table(at)
    # corrected: (J - J0) / (Jmax - J0) on a diverging scale centred at chance; off the diagonal it differs
    at.radio(key="sim_index").set_value("corrected").run()
    _no_exception(at)
    assert at.query_params["index"] == "corrected" and at.query_params["atoms"] == "evidence"
    assert "Showing **Jaccard (corrected, evidence atoms)**: 0 = chance" in _texts(at.caption)
    corrected_map = _heatmaps(at)[0]
    corrected = corrected_map["z"]
    assert corrected_map["zmid"] == 0 and corrected_map["zmin"] == -corrected_map["zmax"]
    assert corrected_map["colorbar"]["title"]["text"].replace("<br>", " ").replace(", ", ",") == (
        "Jaccard (corrected,evidence atoms) 0 = chance")
    # a dictionary against itself: shared = union, so raw is n / n and corrected (1 - J0) / (1 - J0), both
    # exactly 1.0; an option that took effect changes values at all (the same computation twice would not)
    assert (np.diagonal(raw) == 1.0).all() and (np.diagonal(corrected) == 1.0).all()
    off = ~np.eye(len(raw), dtype=bool)
    assert (raw[off] >= 0).all() and (raw[off] <= 1).all() and not np.array_equal(raw[off], corrected[off])
    corrected_models = _model_table(at)
    assert raw_models.loc["tiny-llama", "tiny-bert"] != corrected_models.loc["tiny-llama", "tiny-bert"]
    expected = _library_model_jaccard(store_env, JaccardOptions("evidence", "corrected"))
    assert corrected_models.loc["tiny-llama", "tiny-bert"] == pytest.approx(round(expected, 4),
                                                                            rel=unit_roundoff(torch.float64))
    assert "Jaccard (corrected, evidence atoms)" in _texts(at.markdown)
    for i, j in ((0, 1), (1, 2), (0, 2)):
        assert corrected[i, j] == _library_jaccard(store_env, ("llama", i), ("llama", j),
                                                   JaccardOptions("evidence", "corrected"))
    # all atoms vs evidence atoms (raw again): the tiny BERT's initial atoms were each seen once, so they count
    # only in "all"
    at.radio(key="sim_index").set_value("raw").run()
    at.selectbox(key="sim_a").select("tiny-bert").run()
    at.selectbox(key="sim_b").select("tiny-bert").run()
    evidence = _heatmaps(at)[0]["z"]
    n_evidence = _shared_in_line(at)
    at.radio(key="sim_atoms").set_value("all").run()
    _no_exception(at)
    assert at.query_params["atoms"] == "all" and at.query_params["index"] == "raw"
    every = _heatmaps(at)[0]["z"]
    assert not np.array_equal(every, evidence)
    assert _shared_in_line(at) > n_evidence  # the initial atoms, shared by both BERT layers, count again
    assert "(raw, all atoms)" in _texts(at.markdown)
    assert not np.array_equal(_model_table(at).to_numpy(), raw_models.to_numpy(), equal_nan=True)
    # the library's value on the dictionaries themselves (ITDA.evidence, not the dashboard's reading)
    assert every[0, 1] == _library_jaccard(store_env, ("bert", 0), ("bert", 1), JaccardOptions("all", "raw"))
    assert evidence[0, 1] == _library_jaccard(store_env, ("bert", 0), ("bert", 1), JaccardOptions("evidence", "raw"))


def test_similarity_too_few_atoms_are_empty_and_said(store_env, monkeypatch):
    """A pair where a dictionary counts fewer than min_atoms atoms has an empty cell and a warning says why."""
    jaccard_module = importlib.import_module("itda_core.similarity.jaccard")  # the package exports jaccard()

    with connect_readonly(store_env["path"]) as con:
        sizes = dict(con.execute(
            "SELECT dict_id, COUNT(*) FILTER (WHERE init_count = 0 OR init_count >= 2) FROM atoms GROUP BY dict_id"
        ).fetchall())
    bert = [store_env["ids"][("bert", layer)] for layer in range(2)]
    bound = min(sizes[d] for d in bert) + 1  # the smaller BERT layer falls under it
    monkeypatch.setattr(jaccard_module, "DEFAULT_OPTIONS", JaccardOptions(min_atoms=bound))
    at = _app("views/similarity.py")
    at.selectbox(key="sim_a").select("tiny-bert").run()
    at.selectbox(key="sim_b").select("tiny-bert").run()
    _no_exception(at)
    z = _heatmaps(at)[0]["z"]
    small = np.array([[min(sizes[a], sizes[b]) < bound for b in bert] for a in bert])
    assert small.any() and (np.isnan(z) == small).all()  # empty exactly where a set is too small
    warnings = [w.value for w in at.warning]
    expected = f"{int(small.sum())} pair(s) have no value (empty cells)"
    assert any(expected in w and f"fewer than {bound} evidence atoms" in w for w in warnings), warnings
    assert "Jaccard – (raw, evidence atoms)" in _texts(at.markdown) or np.isfinite(z).all()


def test_similarity_options_from_the_url(store_env):
    at = _app("views/similarity.py", {"atoms": "all", "index": "raw"})
    _no_exception(at)
    assert not at.warning, [w.value for w in at.warning]
    assert at.radio(key="sim_atoms").value == "all" and at.radio(key="sim_index").value == "raw"
    assert "Jaccard (raw, all atoms)" in _texts(at.markdown)
    # an unknown value falls back to the default with a one-line warning (the other parameter is kept)
    at = _app("views/similarity.py", {"atoms": "<b>most</b>", "index": "raw"})
    _no_exception(at)
    warnings = [w.value for w in at.warning]
    assert len(warnings) == 1 and "\n" not in warnings[0] and "atoms=" in warnings[0] and "<b>" not in warnings[0]
    assert at.radio(key="sim_atoms").value == "evidence" and at.radio(key="sim_index").value == "raw"
    assert at.query_params["atoms"] == "evidence"
    at = _app("views/similarity.py", {"index": "cosine"})
    _no_exception(at)
    assert "index=raw" in _texts(at.warning) and at.radio(key="sim_index").value == "raw"


def test_similarity_not_comparable_cells_are_empty(store_env, tmp_path, monkeypatch):
    """Dictionaries trained on other documents of the corpus: their cells are empty and the page says why."""
    path = tmp_path / "other_docs.duckdb"
    shutil.copy(store_env["path"], path)
    bert = [store_env["ids"][("bert", layer)] for layer in range(2)]
    with connect_write(path) as con, transaction(con):
        for dict_id in bert:
            row = con.execute("SELECT config FROM dictionaries WHERE dict_id = ?", [dict_id]).fetchone()
            config = json.loads(row[0])
            config["documents_sha256"] = "0" * 64
            con.execute("UPDATE dictionaries SET config = ? WHERE dict_id = ?", [json.dumps(config), dict_id])
    monkeypatch.setenv("ITDA_STORE", str(path))
    at = _app("views/similarity.py")
    at.selectbox(key="sim_a").select("tiny-llama").run()
    at.selectbox(key="sim_b").select("tiny-bert").run()
    _no_exception(at)
    assert not at.error, [e.value for e in at.error]
    warnings = [w.value for w in at.warning]
    assert len(warnings) == 2 and all("different documents" in w and "cannot be compared" in w for w in warnings)
    layer_map, model_map = _heatmaps(at)
    assert np.isnan(layer_map["z"]).all()
    assert np.isnan(model_map["z"][0, 1]) and model_map["z"][0, 0] == 1.0
    assert "Jaccard – (raw, evidence atoms), 0 shared atoms" in _texts(at.markdown)
    assert "Not comparable" in _texts(at.caption)
    assert np.isnan(_model_table(at).loc["tiny-llama", "tiny-bert"])


def test_atom_pages_mark_initial_atoms(store_env):
    # the tiny Llama's initial atoms repeated in their batch (BOS, copies of documents): evidence, with a count
    atom = _atom_where(store_env, "llama", 1, "init_count >= 2")
    with connect_readonly(store_env["path"]) as con:
        count = con.execute("SELECT init_count FROM atoms WHERE dict_id = ? AND atom = ?",
                            [store_env["ids"][("llama", 1)], atom]).fetchone()[0]  # fmt: skip
    at = _app("views/atom_browser.py", {"dict": str(store_env["ids"][("llama", 1)]), "atom": str(atom)})
    _no_exception(at)
    assert f"Initial atom (its activation occurred {count} times in its batch)." in _texts(at.info)
    # the tiny BERT's were each seen once: arbitrary picks
    atom = _atom_where(store_env, "bert", 1, "init_count = 1")
    at = _app("views/atom_browser.py", {"dict": str(store_env["ids"][("bert", 1)]), "atom": str(atom)})
    _no_exception(at)
    assert (
        "Initial atom, picked arbitrarily among rows seen once (not counted as evidence in Jaccard)."
        in _texts(at.info)
    )
    # an atom added by the error rule is not marked
    atom = _atom_where(store_env, "bert", 1, "init_count = 0")
    at = _app("views/atom_browser.py", {"dict": str(store_env["ids"][("bert", 1)]), "atom": str(atom)})
    _no_exception(at)
    assert "Initial atom" not in _texts(at.info)
    # the dictionary's atom list has the init count column and counts the initial atoms
    at = _app("views/atom_browser.py", {"dict": str(store_env["ids"][("bert", 1)])})
    _no_exception(at)
    table = next(d.value for d in at.dataframe if "init_count" in d.value.columns)
    with connect_readonly(store_env["path"]) as con:
        stored = dict(con.execute("SELECT atom, init_count FROM atoms WHERE dict_id = ?",
                                  [store_env["ids"][("bert", 1)]]).fetchall())  # fmt: skip
    assert dict(zip(table["atom"], table["init_count"], strict=True)) == stored
    n_once = sum(1 for c in stored.values() if c == 1)
    assert f"initial atoms (init count ≠ 0), {n_once:,} of them arbitrary picks" in _texts(at.caption)


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
        at = _app(page)
        _no_exception(at)
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
    at = _app("views/atom_browser.py", {"dict": str(llama1), "atom": str(first_initial)})
    _no_exception(at)
    assert not at.error, [e.value for e in at.error]
    assert "Initial atom (count not recorded: older store)." in _texts(at.info)
    # ... so by default they do not count: the evidence sets are smaller than the atoms
    at = _app("views/similarity.py")
    _no_exception(at)
    assert _shared_in_line(at) < _shared_in_line(at.radio(key="sim_atoms").set_value("all").run())


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
