"""Atom maps: stored once per dictionary and stale after a rewrite, ``itda atom-map``, and the atom map page."""

from __future__ import annotations

from pathlib import Path

import numpy as np

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
