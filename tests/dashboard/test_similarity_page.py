"""The similarity page through AppTest: the default Jaccard and its label, the values equal to the library's,
the options (radios, URL) changing them, too few atoms, and pairs that cannot be compared."""

from __future__ import annotations

import importlib
import json
import re
import shutil

import numpy as np
import pytest
import torch
from streamlit.testing.v1 import AppTest

from itda_core.similarity.jaccard import DEFAULT_OPTIONS, JaccardOptions
from itda_core.store.connection import connect_readonly, connect_write, transaction
from tests.dashboard.helpers import heatmaps, no_exception, run_page, shared_in_line, texts
from tests.tolerance import unit_roundoff


def _model_table(at: AppTest):
    """The model x model table (models as index and columns)."""
    return next(d.value for d in at.dataframe if d.value.index.name == "model")


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


def test_similarity_page(store_env):
    at = run_page("views/similarity.py")
    no_exception(at)
    at.selectbox(key="sim_a").select("tiny-llama").run()
    at.selectbox(key="sim_b").select("tiny-llama").run()
    no_exception(at)
    assert "shared atoms" in texts(at.markdown)
    frames = [d.value for d in at.dataframe]
    pairs = next(f for f in frames if "token_a" in f.columns)
    assert len(pairs) and pairs.iloc[:, 0].str.startswith("atoms?dict=").all()
    # across tokenizers (Llama rows, BERT columns) atoms are matched by characters
    at.selectbox(key="sim_b").select("tiny-bert").run()
    no_exception(at)
    assert "spans" in texts(at.caption)


def test_similarity_defaults_and_label(store_env):
    """The page shows DEFAULT_OPTIONS, says so on the heatmaps, and its values are the raw index of the
    evidence atoms (as `itda similarity --store` computes it)."""
    at = run_page("views/similarity.py")
    no_exception(at)
    label_text = DEFAULT_OPTIONS.label
    assert label_text == "Jaccard (raw, evidence atoms)"
    assert at.radio(key="sim_atoms").value == "evidence" and at.radio(key="sim_index").value == "raw"
    assert "(default)" in at.radio(key="sim_atoms").options[0] and "(default)" in at.radio(key="sim_index").options[0]
    assert at.query_params["atoms"] == "evidence" and at.query_params["index"] == "raw"
    assert f"Showing **{label_text}**: |A ∩ B| / |A ∪ B|, 0 to 1." in texts(at.caption)
    maps = heatmaps(at)
    assert len(maps) == 2  # layer x layer, model x model
    for trace in maps:  # raw: Viridis from 0, no centre, the label on the colour bar
        assert trace["zmin"] == 0 and "zmid" not in trace
        assert trace["colorbar"]["title"]["text"].replace("<br>", " ").replace(", ", ",") == (
            "Jaccard (raw,evidence atoms)")
    # the values are the library's (itda_core's jaccard of the dictionaries read from the store)
    for i, j in ((0, 1), (1, 2), (0, 2)):
        assert maps[0]["z"][i, j] == _library_jaccard(store_env, ("llama", i), ("llama", j), DEFAULT_OPTIONS)
    assert "Jaccard (raw, evidence atoms)" in texts(at.markdown)
    assert re.search(r"Jaccard \d\.\d{3} \(raw, evidence atoms\), [\d,]+ shared atoms", texts(at.markdown))
    # the model x model matrix is under the same options: the library's model-level Jaccard (layers 1..n-1,
    # matched by characters across the two tokenizers)
    table = _model_table(at)
    assert table.loc["tiny-llama", "tiny-llama"] == 1.0
    expected = _library_model_jaccard(store_env, DEFAULT_OPTIONS)
    # the table shows round(4): k / 1e4 in one correctly rounded division, the double Python's round gives too
    assert table.loc["tiny-llama", "tiny-bert"] == pytest.approx(round(expected, 4), rel=unit_roundoff(torch.float64))


def test_similarity_options_change_the_values(store_env):
    at = run_page("views/similarity.py")
    at.selectbox(key="sim_a").select("tiny-llama").run()
    at.selectbox(key="sim_b").select("tiny-llama").run()
    raw = heatmaps(at)[0]["z"]
    raw_models = _model_table(at)
    # corrected: (J - J0) / (Jmax - J0) on a diverging scale centred at chance; off the diagonal it differs
    at.radio(key="sim_index").set_value("corrected").run()
    no_exception(at)
    assert at.query_params["index"] == "corrected" and at.query_params["atoms"] == "evidence"
    assert "Showing **Jaccard (corrected, evidence atoms)**: 0 = chance" in texts(at.caption)
    corrected_map = heatmaps(at)[0]
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
    assert "Jaccard (corrected, evidence atoms)" in texts(at.markdown)
    for i, j in ((0, 1), (1, 2), (0, 2)):
        assert corrected[i, j] == _library_jaccard(store_env, ("llama", i), ("llama", j),
                                                   JaccardOptions("evidence", "corrected"))
    # all atoms vs evidence atoms (raw again): the tiny BERT's initial atoms were each seen once, so they count
    # only in "all"
    at.radio(key="sim_index").set_value("raw").run()
    at.selectbox(key="sim_a").select("tiny-bert").run()
    at.selectbox(key="sim_b").select("tiny-bert").run()
    evidence = heatmaps(at)[0]["z"]
    n_evidence = shared_in_line(at)
    at.radio(key="sim_atoms").set_value("all").run()
    no_exception(at)
    assert at.query_params["atoms"] == "all" and at.query_params["index"] == "raw"
    every = heatmaps(at)[0]["z"]
    assert not np.array_equal(every, evidence)
    assert shared_in_line(at) > n_evidence  # the initial atoms, shared by both BERT layers, count again
    assert "(raw, all atoms)" in texts(at.markdown)
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
    at = run_page("views/similarity.py")
    at.selectbox(key="sim_a").select("tiny-bert").run()
    at.selectbox(key="sim_b").select("tiny-bert").run()
    no_exception(at)
    z = heatmaps(at)[0]["z"]
    small = np.array([[min(sizes[a], sizes[b]) < bound for b in bert] for a in bert])
    assert small.any() and (np.isnan(z) == small).all()  # empty exactly where a set is too small
    warnings = [w.value for w in at.warning]
    expected = f"{int(small.sum())} pair(s) have no value (empty cells)"
    assert any(expected in w and f"fewer than {bound} evidence atoms" in w for w in warnings), warnings
    assert "Jaccard – (raw, evidence atoms)" in texts(at.markdown) or np.isfinite(z).all()


def test_similarity_options_from_the_url(store_env):
    at = run_page("views/similarity.py", {"atoms": "all", "index": "raw"})
    no_exception(at)
    assert not at.warning, [w.value for w in at.warning]
    assert at.radio(key="sim_atoms").value == "all" and at.radio(key="sim_index").value == "raw"
    assert "Jaccard (raw, all atoms)" in texts(at.markdown)
    # an unknown value falls back to the default with a one-line warning (the other parameter is kept)
    at = run_page("views/similarity.py", {"atoms": "<b>most</b>", "index": "raw"})
    no_exception(at)
    warnings = [w.value for w in at.warning]
    assert len(warnings) == 1 and "\n" not in warnings[0] and "atoms=" in warnings[0] and "<b>" not in warnings[0]
    assert at.radio(key="sim_atoms").value == "evidence" and at.radio(key="sim_index").value == "raw"
    assert at.query_params["atoms"] == "evidence"
    at = run_page("views/similarity.py", {"index": "cosine"})
    no_exception(at)
    assert "index=raw" in texts(at.warning) and at.radio(key="sim_index").value == "raw"


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
    at = run_page("views/similarity.py")
    at.selectbox(key="sim_a").select("tiny-llama").run()
    at.selectbox(key="sim_b").select("tiny-bert").run()
    no_exception(at)
    assert not at.error, [e.value for e in at.error]
    warnings = [w.value for w in at.warning]
    assert len(warnings) == 2 and all("different documents" in w and "cannot be compared" in w for w in warnings)
    layer_map, model_map = heatmaps(at)
    assert np.isnan(layer_map["z"]).all()
    assert np.isnan(model_map["z"][0, 1]) and model_map["z"][0, 0] == 1.0
    assert "Jaccard – (raw, evidence atoms), 0 shared atoms" in texts(at.markdown)
    assert "Not comparable" in texts(at.caption)
    assert np.isnan(_model_table(at).loc["tiny-llama", "tiny-bert"])
