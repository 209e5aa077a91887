"""The overview's quality table and per-layer plot, from a tiny indexed store (FVU and cosine from the index),
one layer evaluated with a CE loss score and one dictionary whose figures were removed."""

from __future__ import annotations

import base64
import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from itda_core.jobs.evaluation import StoreEvalConfig, evaluate_store
from itda_core.store.connection import connect_readonly, connect_write
from tests.dashboard.helpers import no_exception, run_page

CE_TOKENS = 50


@pytest.fixture(scope="module")
def quality_store(tmp_path_factory: pytest.TempPathFactory, tiny_store: dict) -> dict:
    """A copy of the session's tiny store with a CE loss score for the Llama's layer 1 and no figures at all for
    the BERT's layer 0."""
    root = tmp_path_factory.mktemp("quality")
    path = root / "itda.duckdb"
    shutil.copy(tiny_store["path"], path)
    ids = tiny_store["ids"]
    report = evaluate_store(path, dict_ids=[ids[("llama", 1)]], config=StoreEvalConfig(max_tokens=CE_TOKENS,
                            progress=False))  # fmt: skip
    assert list(report.results) == [ids[("llama", 1)]], report.skipped
    with connect_write(path) as con:
        con.execute("DELETE FROM evaluations WHERE dict_id = ?", [ids[("bert", 0)]])
    return {**tiny_store, "path": path}


def _stored(path: Path) -> dict[tuple[int, str], tuple[float, int]]:
    """(dict_id, metric) -> (value, n_tokens) of the index's FVU/cosine and eval's CE loss score."""
    with connect_readonly(path) as con:
        rows = con.execute("SELECT dict_id, metric, value, n_tokens, details FROM evaluations").fetchall()
    out = {}
    for d, metric, value, n, details in rows:
        source = json.loads(details).get("source", "eval")
        if (metric in ("fvu", "cosine") and source == "index") or metric == "ce_loss_score:saebench":
            out[(int(d), metric)] = (float(value), int(n))
    return out


def _column(table, label: str) -> str:
    found = [c for c in table.columns if c.startswith(f"{label} (")]
    assert len(found) == 1, list(table.columns)
    return found[0]


def _colors_agree(at, plot: dict) -> None:
    """Each model's line in the quality plot has its colour in the atoms-per-layer plot."""
    charts = [json.loads(c.proto.spec) for c in at.get("plotly_chart")]
    atoms = [c for c in charts if c["layout"].get("yaxis", {}).get("title", {}).get("text") == "atoms"]
    assert len(atoms) == 1
    atom_colors = {t["name"]: t["line"]["color"] for t in atoms[0]["data"]}
    quality_colors = {t["name"]: t["line"]["color"] for t in plot["data"]}
    assert quality_colors and all(atom_colors[name] == c for name, c in quality_colors.items()), (
        atom_colors, quality_colors)  # fmt: skip


def _plot(at) -> dict:
    charts = [json.loads(c.proto.spec) for c in at.get("plotly_chart")]
    found = [c for c in charts if c["layout"].get("yaxis", {}).get("title", {}).get("text", "").count("tok)")]
    assert len(found) == 1, [c["layout"].get("yaxis") for c in charts]
    return found[0]


def test_overview_shows_quality_table_and_plot(quality_store: dict, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ITDA_STORE", str(quality_store["path"]))
    at = run_page()
    no_exception(at)
    assert "Reconstruction quality (held-out)" in [h.value for h in at.subheader]
    tables = [df for df in at.dataframe if "to compute" in df.value.columns]
    assert len(tables) == 1
    element, table = tables[0], tables[0].value
    stored = _stored(quality_store["path"])
    ids = quality_store["ids"]
    fvu_col, cos_col, ce_col = _column(table, "FVU"), _column(table, "cosine"), _column(table, "CE loss score")
    # the CE score was computed on its own budget of tokens, and its column says so
    assert ce_col == f"CE loss score (saebench) ({CE_TOKENS:,} tok)"
    fvu_tokens = sorted({n for (_, m), (_, n) in stored.items() if m == "fvu"})
    assert fvu_col == ("FVU (" + "–".join(f"{n:,}" for n in (fvu_tokens[0], fvu_tokens[-1])) + " tok)"
                       if len(fvu_tokens) > 1 else f"FVU ({fvu_tokens[0]:,} tok)")  # fmt: skip
    assert len(table) == len(ids)
    for _, row in table.iterrows():
        d = int(row["dictionary"])
        for col, metric in ((fvu_col, "fvu"), (cos_col, "cosine"), (ce_col, "ce_loss_score:saebench")):
            if (d, metric) in stored:
                assert row[col] == stored[(d, metric)][0]  # the stored DOUBLE itself
            else:
                assert row[col] != row[col], (d, metric)  # NaN: shown as a dash
    # the Dictionaries table shows the same figures, though Llama layer 1 has FVU and cosine from eval too
    with connect_readonly(quality_store["path"]) as con:
        assert con.execute("SELECT count(*) FROM evaluations WHERE dict_id = ? AND metric = 'fvu'",
                           [ids[("llama", 1)]]).fetchone()[0] == 2  # fmt: skip
    dicts = next(df.value for df in at.dataframe if "dict_id" in df.value.columns).set_index("dict_id")
    for col, metric in ((fvu_col, "fvu"), (cos_col, "cosine"), (ce_col, "ce_loss_score:saebench")):
        mine = table.set_index("dictionary")[col]
        theirs = dicts[f"eval_{metric}"].reindex(mine.index)
        assert ((mine == theirs) | (mine.isna() & theirs.isna())).all(), (metric, mine, theirs)
    # the precision the activations were computed in: float32 here (trained in-process on the CPU)
    assert set(dicts["precision"]) == {"float32"}
    # the commands that compute what is missing
    bert0, llama0 = ids[("bert", 0)], ids[("llama", 0)]
    todo = dict(zip(table["dictionary"], table["to compute"], strict=True))
    assert f"itda index --store {quality_store['path']}" in todo[bert0] and "--reindex" in todo[bert0]
    assert "encoder: no CE loss score" in todo[bert0]
    assert f"itda eval --store {quality_store['path']}" in todo[llama0] and "--layers 0" in todo[llama0]
    assert todo[ids[("llama", 1)]] == ""
    # the dash is what the table displays for a missing figure (the styler's display values)
    shown = _display(element)
    assert shown.loc[shown["dictionary"] == str(bert0), fvu_col].tolist() == ["—"]
    assert shown.loc[shown["dictionary"] == str(llama0), ce_col].tolist() == ["—"]
    llama1 = table[table["dictionary"] == ids[("llama", 1)]].iloc[0]
    assert shown.loc[shown["dictionary"] == str(ids[("llama", 1)]), ce_col].tolist() == [f"{llama1[ce_col]:.4f}"]
    # the plot: one line per model, x = layer, y = the picked metric (FVU first), the table's figures
    plot = _plot(at)
    assert "FVU" in plot["layout"]["yaxis"]["title"]["text"]
    lines = {t["name"]: (_array(t["x"]), _array(t["y"])) for t in plot["data"]}
    assert len(lines) == 2
    for model, (xs, ys) in lines.items():
        rows = table[(table["model"] == model) & table[fvu_col].notna()].sort_values("layer")
        assert xs == rows["layer"].tolist() and ys == rows[fvu_col].tolist()
    _colors_agree(at, plot)
    # the metric picker switches the plot to the CE loss score: only the evaluated layer has one
    at.radio(key="ov_quality_metric").set_value(ce_col).run()
    no_exception(at)
    plot = _plot(at)
    assert plot["layout"]["yaxis"]["title"]["text"] == ce_col
    assert [(_array(t["x"]), _array(t["y"])[0]) for t in plot["data"]] == [
        ([1], stored[(ids[("llama", 1)], "ce_loss_score:saebench")][0])]
    _colors_agree(at, plot)  # one model fewer on this plot, the same colour for the one left


def _array(values) -> list:
    """A plotly trace's x or y as a list (plotly sends numpy arrays as base64 typed arrays)."""
    if isinstance(values, dict):
        return np.frombuffer(base64.b64decode(values["bdata"]), dtype=values["dtype"]).tolist()
    return list(values)


def _display(element):
    """What the table displays: the styler's display values (an Arrow table of strings) as a DataFrame."""
    import pyarrow as pa

    return pa.ipc.open_stream(element.proto.arrow_data.styler.display_values).read_all().to_pandas()


def test_overview_without_figures_says_how_to_compute_them(tiny_store: dict, tmp_path: Path,
                                                         monkeypatch: pytest.MonkeyPatch) -> None:  # fmt: skip
    path = tmp_path / "itda.duckdb"
    shutil.copy(tiny_store["path"], path)
    with connect_write(path) as con:
        con.execute("DELETE FROM evaluations")
    monkeypatch.setenv("ITDA_STORE", str(path))
    at = run_page()
    no_exception(at)
    info = "\n".join(str(i.value) for i in at.info)
    assert f"itda index --store {path} --reindex" in info and f"itda eval --store {path}" in info
    assert not [df for df in at.dataframe if "to compute" in df.value.columns]


def test_precision_labels() -> None:
    from itda_dashboard.data import precision_label

    assert precision_label("bfloat16", None) == "bfloat16"
    assert precision_label("float32", "float16") == "float32, cached as float16"
    assert precision_label(None, None) == precision_label("", float("nan")) == "not recorded"  # older stores
    assert precision_label(None, "float16") == "not recorded, cached as float16"  # a cache older than the field
