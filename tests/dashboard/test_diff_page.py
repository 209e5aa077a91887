"""The diff page through AppTest: two layers and two models give the library's counts, the same Jaccard as the
similarity page for the pair, the address selects and names the pair, bad parameters are ignored with a
warning, lists are paged and link to atom pages, and a pair that cannot be compared is refused with the
similarity page's reason."""

from __future__ import annotations

import json
import re
import shutil

import numpy as np
import pandas as pd
from streamlit.testing.v1 import AppTest

from itda_core.similarity.diff import ONLY, SHARED, diff_dictionaries
from itda_core.similarity.jaccard import JaccardOptions
from itda_core.store.connection import connect_write, transaction
from tests.dashboard.helpers import heatmaps, no_exception, run_page, shared_in_line, texts

PAGE = "views/diff.py"
TABS = ("Only in A", "Only in B", "Shared")


def metrics(at: AppTest) -> dict[str, str]:
    """The summary's metrics by label prefix: |A|, |B|, Shared, Jaccard."""
    return {m.label.split(" ")[0]: m.value for m in at.metric}


def summary_line(at: AppTest) -> tuple[str, int, int, int]:
    """(Jaccard text, shared, only A, only B) from the line under the metrics."""
    found = re.search(r"Jaccard (\S+) \([a-z, ]+\), ([\d,]+) shared atoms, ([\d,]+) only in A, ([\d,]+) only in B",
                      texts(at.markdown))
    assert found, texts(at.markdown)
    return found.group(1), *(int(found.group(i).replace(",", "")) for i in (2, 3, 4))


def assert_shows(at: AppTest, store: dict, dict_a: int, dict_b: int, options: JaccardOptions) -> None:
    """The page shows the library's diff of the pair: the address, the counts, the Jaccard, the lists."""
    no_exception(at)
    assert at.query_params["a"] == str(dict_a) and at.query_params["b"] == str(dict_b)
    expected = diff_dictionaries(store["path"], dict_a, dict_b, options)
    shown = metrics(at)
    assert shown["|A|"] == f"{expected.n_a:,}" and shown["|B|"] == f"{expected.n_b:,}"
    assert shown["Shared"] == f"{expected.shared:,}" and shown["Jaccard"] == f"{expected.jaccard:.3f}"
    assert summary_line(at) == (f"{expected.jaccard:.3f}", expected.shared, len(expected.only_a), len(expected.only_b))
    for tab, (side, status) in zip(TABS, (("a", ONLY), ("b", ONLY), ("a", SHARED)), strict=True):
        frame = the_list(at, tab)  # the tabs are lazy: only the open one's list is built
        groups = expected.groups(side, status).head(len(frame))  # the first page, most atoms first
        assert frame["count"].tolist() == groups["count"].tolist()
        first = [f"atoms?dict={dict_a if side == 'a' else dict_b}&atom={atoms[0]}" for atoms in groups["atoms"]]
        assert frame["first"].tolist() == first
    open_tab(at, TABS[0])


def open_tab(at: AppTest, tab: str) -> AppTest:
    """Switch the page's tabs to ``tab`` (as a click does: the tab's state, then a rerun)."""
    at.session_state["diff_tab"] = tab
    return at.run()


def the_list(at: AppTest, tab: str) -> pd.DataFrame:
    """The token-group table of one of the lists' tabs (the one table the open tab shows)."""
    open_tab(at, tab)
    no_exception(at)
    lists = [d.value for d in at.dataframe if "first" in d.value.columns]
    assert len(lists) == 1, len(lists)
    return lists[0]


def test_two_layers_of_one_model(store_env):
    at = run_page(PAGE)
    no_exception(at)
    ids = store_env["ids"]
    # the default: two adjacent layers of the first model
    assert at.selectbox(key="diff_run_a").value == at.selectbox(key="diff_run_b").value == "tiny-llama"
    assert (at.selectbox(key="diff_layer_a").value, at.selectbox(key="diff_layer_b").value) == (0, 1)
    assert_shows(at, store_env, ids[("llama", 0)], ids[("llama", 1)], JaccardOptions())
    assert "matched by keys" in texts(at.caption)
    at.selectbox(key="diff_layer_b").select(2).run()
    assert_shows(at, store_env, ids[("llama", 0)], ids[("llama", 2)], JaccardOptions())
    # another atom choice and index: the counts follow the atoms, the figure the index
    at.radio(key="diff_atoms").set_value("all").run()
    at.radio(key="diff_index").set_value("corrected").run()
    assert at.query_params["atoms"] == "all" and at.query_params["index"] == "corrected"
    assert_shows(at, store_env, ids[("llama", 0)], ids[("llama", 2)], JaccardOptions("all", "corrected"))


def test_the_jaccard_is_the_similarity_pages(store_env):
    """For the same pair and options, the diff page's Jaccard and shared count are the similarity page's (its
    heatmap cell and its shared-atom line)."""
    ids = store_env["ids"]
    sim = run_page("views/similarity.py")
    sim.selectbox(key="sim_a").select("tiny-llama").run()
    sim.selectbox(key="sim_b").select("tiny-bert").run()
    sim.selectbox(key="sim_pick_tiny-llama_tiny-bert_row").select(2).run()
    sim.selectbox(key="sim_pick_tiny-llama_tiny-bert_col").select(0).run()
    no_exception(sim)
    cell = heatmaps(sim)[0]["z"][2, 0]
    line = re.search(r"Jaccard (\S+) \(raw, evidence atoms\)", texts(sim.markdown)).group(1)
    link = next(p.proto for p in sim.get("page_link") if p.proto.page == "diff")  # the similarity page's link
    assert link.query_string == f"a={ids[('llama', 2)]}&b={ids[('bert', 0)]}&atoms=evidence&index=raw"
    at = run_page(PAGE, {"a": str(ids[("llama", 2)]), "b": str(ids[("bert", 0)])})
    assert_shows(at, store_env, ids[("llama", 2)], ids[("bert", 0)], JaccardOptions())
    jaccard, shared, _, _ = summary_line(at)
    assert jaccard == line == f"{cell:.3f}" and shared == shared_in_line(sim)
    assert diff_dictionaries(store_env["path"], ids[("llama", 2)], ids[("bert", 0)]).jaccard == cell


def test_two_models(store_env):
    at = run_page(PAGE)
    at.selectbox(key="diff_run_b").select("tiny-bert").run()
    at.selectbox(key="diff_layer_b").select(1).run()
    ids = store_env["ids"]
    assert_shows(at, store_env, ids[("llama", 0)], ids[("bert", 1)], JaccardOptions())
    assert "matched by spans" in texts(at.caption)
    # the lists are paged: BERT's unmatched atoms fall in more token groups than a page holds
    first = the_list(at, "Only in B")
    at.number_input(key="diff_page_b_only").set_value(2).run()
    no_exception(at)
    second = the_list(at, "Only in B")
    assert not set(first["first"]) & set(second["first"])
    assert any("Tokens 21–" in c for c in texts(at.caption).splitlines())
    # the first group of a page is open onto its atoms' pages and their top contexts; the others are closed
    # (lazy: nothing of theirs is read)
    open_tab(at, "Only in A")
    expected = diff_dictionaries(store_env["path"], ids[("llama", 0)], ids[("bert", 1)])
    first_group = expected.groups("a", ONLY)["atoms"].iloc[0]
    links = [p.proto.query_string for p in at.get("page_link") if p.proto.page == "atoms"]
    assert links == [f"dict={ids[('llama', 0)]}&atom={a}" for a in first_group[:5]]
    assert any("<table" in h.proto.body and "doc " in h.proto.body for h in at.html)
    assert len(at.expander) == 20
    assert [b.proto.label for b in at.get("download_button")] == ["Download the lists (CSV)"]


def test_the_address_selects_the_pair(store_env):
    ids = store_env["ids"]
    at = run_page(PAGE, {"a": str(ids[("bert", 0)]), "b": str(ids[("llama", 2)]), "atoms": "all"})
    assert not at.warning, [w.value for w in at.warning]
    assert (at.selectbox(key="diff_run_a").value, at.selectbox(key="diff_layer_a").value) == ("tiny-bert", 0)
    assert (at.selectbox(key="diff_run_b").value, at.selectbox(key="diff_layer_b").value) == ("tiny-llama", 2)
    assert at.radio(key="diff_atoms").value == "all"
    assert_shows(at, store_env, ids[("bert", 0)], ids[("llama", 2)], JaccardOptions("all"))


def test_bad_parameters_are_ignored_with_a_warning(store_env):
    ids = store_env["ids"]
    at = run_page(PAGE, {"a": "<b>x</b>", "b": "99999", "index": "cosine"})
    no_exception(at)
    warnings = [w.value for w in at.warning]
    assert len(warnings) == 3 and all("\n" not in w and "Ignored" in w for w in warnings)
    assert not any("<b>" in w for w in warnings)
    assert_shows(at, store_env, ids[("llama", 0)], ids[("llama", 1)], JaccardOptions())  # the defaults
    at = run_page(PAGE, {"a": str(ids[("llama", 2)]), "b": "1" * 500})  # too long: dropped by the bounds
    no_exception(at)
    assert any("Ignored 1 address parameter" in w.value for w in at.warning)
    assert at.query_params["a"] == str(ids[("llama", 2)])


def test_a_pair_that_cannot_be_compared_is_refused(store_env, tmp_path, monkeypatch):
    """Dictionaries trained on other documents: the page says why, in the similarity page's words, and shows
    no counts."""
    path = tmp_path / "other_docs.duckdb"
    shutil.copy(store_env["path"], path)
    with connect_write(path) as con, transaction(con):
        for layer in range(2):
            dict_id = store_env["ids"][("bert", layer)]
            config = json.loads(con.execute("SELECT config FROM dictionaries WHERE dict_id = ?",
                                            [dict_id]).fetchone()[0])  # fmt: skip
            config["documents_sha256"] = "0" * 64
            con.execute("UPDATE dictionaries SET config = ? WHERE dict_id = ?", [json.dumps(config), dict_id])
    monkeypatch.setenv("ITDA_STORE", str(path))
    at = run_page(PAGE)
    at.selectbox(key="diff_run_b").select("tiny-bert").run()
    at.selectbox(key="diff_layer_b").select(0).run()  # Llama L0 x BERT L0: the similarity page's first pair
    no_exception(at)
    assert not at.metric and not at.dataframe
    refusal = [w.value for w in at.warning]
    sim = run_page("views/similarity.py")
    sim.selectbox(key="sim_a").select("tiny-llama").run()
    sim.selectbox(key="sim_b").select("tiny-bert").run()
    reason = next(w.value for w in sim.warning if "cannot be compared" in w.value).split(": ", 1)[1]
    assert refusal == ["Not comparable: " + reason] and "different documents" in reason
    assert np.isnan(heatmaps(sim)[0]["z"]).all()


def test_the_csv_holds_every_atom(store_env):
    """The download: one row per atom of both dictionaries, its status, match and atom-page address."""
    import io

    from itda_dashboard.diff_data import csv_bytes

    ids = store_env["ids"]
    a, b = ids[("llama", 1)], ids[("bert", 0)]
    found = diff_dictionaries(store_env["path"], a, b)
    csv = pd.read_csv(io.BytesIO(csv_bytes(found, {a: "A", b: "B"})), keep_default_na=False)
    assert len(csv) == len(found.atoms) and csv["token"].tolist() == found.atoms["token"].tolist()
    for side, name, only, shared in (("a", "A", found.only_a, found.shared_a), ("b", "B", found.only_b,
                                                                             found.shared_b)):
        rows = csv[csv["side"] == side]
        assert (rows["dictionary"] == name).all()
        assert rows.loc[rows["status"] == ONLY, "atom"].tolist() == only.tolist()
        assert rows.loc[rows["status"] == SHARED, "atom"].tolist() == shared.tolist()
    assert (csv["url"] == [f"atoms?dict={d}&atom={x}" for d, x in zip(csv["dict_id"], csv["atom"], strict=True)]).all()


def test_the_refresh_button_drops_computed_diffs(monkeypatch):
    """data.clear_caches (the refresh button) empties the diff cache as it does the others."""
    from itda_dashboard import data, diff_data

    cleared: list[str] = []
    monkeypatch.setattr(diff_data.diff_cache, "clear", lambda *a, **k: cleared.append("diff"))
    data.clear_caches()
    assert cleared == ["diff"]
