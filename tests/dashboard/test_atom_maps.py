"""Atom maps: stored once per dictionary and stale after a rewrite, ``itda atom-map``, and the atom map page."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from itda_core.jobs.atom_maps import compute_atom_maps, has_map, read_atom_map, store_atom_map
from itda_core.store.connection import connect_readonly, connect_write, transaction
from tests.dashboard.helpers import no_exception, run_page, texts


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


def test_atom_map_page(store_env):
    at = run_page("views/atom_map.py")
    at.selectbox(key="map_run").select("tiny-llama").run()
    at.multiselect(key="map_layers_tiny-llama").set_value([1]).run()
    no_exception(at)
    assert not at.info, [i.value for i in at.info]
    assert "UMAP" in texts(at.caption)
    for colour in ("density", "source token"):
        at.radio(key="map_colour").set_value(colour).run()
        no_exception(at)
    # a layer without a stored map: the command to compute it, and a button to compute it in memory
    at.multiselect(key="map_layers_tiny-llama").set_value([0]).run()
    assert "itda atom-map" in texts(at.info)
    at.button(key="map_compute_btn").click().run()
    no_exception(at)
    assert "Computed in memory" in texts(at.caption)


def test_atom_map_url(store_env):
    at = run_page("views/atom_map.py", {"model": "tiny-llama", "layers": "1", "colour": "density"})
    no_exception(at)
    assert at.radio(key="map_colour").value == "density" and not at.info
    assert at.multiselect(key="map_layers_tiny-llama").value == [1]
    at.radio(key="map_colour").set_value("layer").run()
    assert at.query_params["colour"] == "layer" and at.query_params["layers"] == "1"
    at = run_page("views/atom_map.py", {"model": "tiny-llama", "layers": "9-x"})
    no_exception(at)
    assert "Cannot read layers" in texts(at.warning)


def _frame(x: np.ndarray, y: np.ndarray) -> pd.DataFrame:
    """A described map frame with these coordinates (one layer, plain tokens)."""
    n = len(x)
    return pd.DataFrame({"dict_id": 1, "atom": np.arange(n), "x": x, "y": y, "layer": 3, "density": 0.01,
                         "token_text": [f" t{i % 5}" for i in range(n)], "before": "a ", "after": " b"})  # fmt: skip


def test_robust_range_keeps_the_bulk_and_clips_outliers():
    from itda_dashboard.map_figure import atom_map_figure, clip_points, robust_range

    rng = np.random.default_rng(0)
    x, y = rng.uniform(-3, 3, size=500), rng.uniform(-3, 3, size=500)
    # no outlier (a bounded blob, as UMAP draws): the whole map is shown, nothing is clipped
    clipped, rx, ry = clip_points(_frame(x, y))
    assert not clipped["outside"].any() and rx.clip_lo == x.min() and rx.clip_hi == x.max()
    assert rx.lo < x.min() and rx.hi > x.max()  # a margin, so border markers are drawn whole
    # one far atom: the range follows the bulk, the atom is drawn on the border at its true place's side
    x[7], y[9] = 1e4, -1e4
    clipped, rx, ry = clip_points(_frame(x, y))
    bulk = np.delete(x, 7)
    assert rx.hi < 100 and rx.clip_hi >= np.percentile(bulk, 99) and ry.lo > -100
    assert clipped["outside"].tolist() == [i in (7, 9) for i in range(500)]
    assert clipped.loc[7, "px"] == rx.clip_hi and clipped.loc[9, "py"] == ry.clip_lo
    assert clipped.loc[7, "x"] == 1e4  # the true coordinates are kept
    inside = ~clipped["outside"]
    assert (clipped.loc[inside, "px"] == clipped.loc[inside, "x"]).all()
    for colour in ("layer", "density", "source token"):
        fig, n_edge = atom_map_figure(_frame(x, y), colour)
        assert n_edge == 2
        layout = fig.layout
        assert layout.xaxis.range[1] == rx.hi and layout.yaxis.range[0] == ry.lo
        symbols = [s for t in fig.data for s in t.marker.symbol]
        hover = [h for t in fig.data for h in t.hovertext]
        assert symbols.count("x") == 2 and len(symbols) == 500
        assert sum("true position (10000.00, " in h for h in hover) == 1
        assert sum(", -10000.00)" in h for h in hover) == 1
    assert robust_range(np.array([np.nan, 2.0, 2.0])).lo < 2.0 < robust_range(np.array([2.0])).hi  # flat axis


def test_atom_map_page_draws_outliers_at_the_edge(tmp_path, tiny_store, monkeypatch):
    import json
    import shutil

    from tests.dashboard.helpers import heatmaps

    path = tmp_path / "outlier.duckdb"
    shutil.copy(tiny_store["path"], path)
    with connect_write(path) as con, transaction(con):
        con.execute("UPDATE atom_umap SET x = 1e4 WHERE atom = 1")
    monkeypatch.setenv("ITDA_STORE", str(path))
    at = run_page("views/atom_map.py", {"model": "tiny-llama", "layers": "1"})
    no_exception(at)
    assert "far-away atom drawn at the edge" in texts(at.caption)
    spec = json.loads(at.get("plotly_chart")[0].proto.spec)
    assert spec["layout"]["xaxis"]["range"][1] < 1e4
    assert heatmaps(at)  # the chart decodes
    trace = spec["data"][0]
    assert trace["marker"]["symbol"].count("x") == 1
    assert sum("true position (10000.00" in h for h in trace["hovertext"]) == 1


def test_served_app_hides_the_deploy_button(tmp_path):
    import tomllib
    from streamlit import config as st_config

    from itda_core.cli.dashboard import TOOLBAR_MODE, serve_command_line

    line = serve_command_line(tmp_path / "s.duckdb", 8765)
    assert line[line.index("--client.toolbarMode") + 1] == TOOLBAR_MODE == "minimal"
    checkout = tomllib.loads((Path(__file__).resolve().parents[2] / ".streamlit" / "config.toml").read_text())
    assert checkout["client"]["toolbarMode"] == TOOLBAR_MODE
    option = st_config.get_config_options()["client.toolbarMode"]
    assert TOOLBAR_MODE in option.description  # a value this Streamlit knows
