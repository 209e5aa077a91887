"""``itda export``: each format from the command line, and its bad input as one line."""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from itda_core.cli.app import app
from itda_core.store.reader import load_dictionary
from tests.stores import build_tiny_store


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    return build_tiny_store(tmp_path_factory.mktemp("export-store"), atom_map=False)


def _run(*args: str):
    return CliRunner().invoke(app, ["export", *map(str, args)])


def test_each_format_from_the_store(tiny, tmp_path):
    store, dict_id = tiny["path"], tiny["ids"][("llama", 1)]
    for fmt in ("saelens", "neuronpedia", "delphi"):
        out = tmp_path / fmt
        result = _run("--format", fmt, "--store", store, "--dict", dict_id, "--out", out)
        assert result.exit_code == 0, result.output
        assert f"wrote the {fmt} export" in result.output
    cfg = json.loads((tmp_path / "saelens" / "cfg.json").read_text())
    assert cfg["d_in"] == load_dictionary(store, dict_id).d_model
    assert cfg["d_sae"] == 2 * len(load_dictionary(store, dict_id))  # signed codes: [D; -D]
    assert any((tmp_path / "neuronpedia").glob("batch-*.json*"))
    assert list((tmp_path / "delphi").rglob("*.safetensors"))


def test_saelens_from_a_dictionary_folder(tiny, tmp_path):
    folder = tmp_path / "dict"
    load_dictionary(tiny["path"], tiny["ids"][("llama", 0)]).save(folder)
    result = _run("--dictionary", folder, "--out", tmp_path / "sae")
    assert result.exit_code == 0, result.output
    assert (tmp_path / "sae" / "sae_weights.safetensors").is_file()


@pytest.mark.parametrize(
    ("args", "says"),
    [
        (["--out", "o"], "give a dictionary folder"),
        (["--store", "s.duckdb", "--out", "o"], "needs --dict"),
        (["--format", "delphi", "--dictionary", "d", "--out", "o"], "give --store and --dict"),
    ],
)
def test_bad_choices_are_one_line(args, says):
    result = CliRunner().invoke(app, ["export", *args])  # an ITDAError: itda's main prints it as one line
    assert result.exit_code != 0
    assert says in str(result.exception)
    assert "\n" not in str(result.exception)


def test_a_folder_with_files_is_kept(tiny, tmp_path):
    out = tmp_path / "busy"
    out.mkdir()
    (out / "mine.txt").write_text("keep")
    result = _run("--format", "delphi", "--store", tiny["path"], "--dict", tiny["ids"][("llama", 1)], "--out", out)
    assert result.exit_code != 0 and "not empty" in str(result.exception)
    assert (out / "mine.txt").read_text() == "keep"
