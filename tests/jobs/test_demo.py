"""The demo build on tiny models: full build, interruption at several points, resumption, the fast path for
a complete store, --rebuild, and the store commands of the CLI."""

from __future__ import annotations

import pytest
import typer
from typer.testing import CliRunner

import itda_core.jobs.demo as demo
from itda_core.cli.store import register
from itda_core.errors import ITDAError
from itda_core.jobs.demo import DemoConfig, build_demo, model_status
from itda_core.store.connection import connect_readonly, connect_write, transaction
from itda_core.store.schema import SCHEMA_VERSION
from itda_core.store.writer import delete_dictionary
from tests.tiny import tiny_corpus, tiny_model

MODELS = {"tiny-llama": ("llama", 3), "tiny-bert": ("bert", 2)}


class Loader:
    """Builds tiny models on demand and counts the loads (a complete store must need none)."""

    def __init__(self, fail_on: str | None = None) -> None:
        self.loaded: list[str] = []
        self.fail_on = fail_on

    def __call__(self, name: str):
        if name == self.fail_on:
            raise KeyboardInterrupt  # as if Ctrl-C arrived while this model loads
        self.loaded.append(name)
        kind, layers = MODELS[name]
        return tiny_model(kind, n_layers=layers)


def _config(path, loader, **kw) -> DemoConfig:
    options = {
        "train_documents": 10,
        "index_tokens": 150,
        "held_out_fraction": 0.25,
        "k": 4,
        "batch_size": 8,
        "progress": False,
        "loader": loader,
        "corpus": tiny_corpus(n_copies=4),
        "log": lambda line: None,
        **kw,
    }
    return DemoConfig(store=path, models=list(MODELS), **options)


def _layers(path) -> dict[str, tuple[int, int]]:
    with connect_readonly(path) as con:
        rows = con.execute(
            "SELECT model_name, COUNT(*), "
            "COUNT(*) FILTER (WHERE dict_id IN (SELECT dict_id FROM index_runs)) "
            "FROM dictionaries GROUP BY model_name"
        ).fetchall()
    return {name: (int(n), int(i)) for name, n, i in rows}


def test_build_interrupt_resume_and_fast_path(tmp_path, monkeypatch):
    path = tmp_path / "itda.duckdb"
    # 1. interrupted while the second model loads: the first is complete and browsable
    first = Loader(fail_on="tiny-bert")
    with pytest.raises(KeyboardInterrupt):
        build_demo(_config(path, first))
    assert first.loaded == ["tiny-llama"]
    assert _layers(path) == {"tiny-llama": (3, 3)}

    # 2. interrupted while writing the second model's dictionaries: one layer made it
    calls = {"n": 0}
    real_write = demo.write_dictionary

    def flaky_write(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 2:
            raise KeyboardInterrupt
        return real_write(*args, **kwargs)

    monkeypatch.setattr(demo, "write_dictionary", flaky_write)
    second = Loader()
    with pytest.raises(KeyboardInterrupt):
        build_demo(_config(path, second))
    assert second.loaded == ["tiny-bert"]  # the complete model was not even loaded
    assert _layers(path) == {"tiny-llama": (3, 3), "tiny-bert": (1, 0)}
    monkeypatch.setattr(demo, "write_dictionary", real_write)

    # 3. resumed: only the missing BERT layer is trained, then both BERT layers are indexed
    third = Loader()
    report = build_demo(_config(path, third))
    assert third.loaded == ["tiny-bert"] and report.complete
    bert = next(m for m in report.models if m.name == "tiny-bert")
    assert (bert.trained, bert.newly_indexed, bert.present, bert.indexed) == (1, 2, 2, 2)
    assert _layers(path) == {"tiny-llama": (3, 3), "tiny-bert": (2, 2)}
    # every dictionary got its cached UMAP atom map, so the dashboard's map opens at once
    from itda_core.jobs.atom_maps import missing_maps

    assert missing_maps(path) == []

    # 4. a complete store: no model is loaded (how fast that returns is a benchmark's business, not a test's)
    fourth = Loader()
    report = build_demo(_config(path, fourth))
    assert fourth.loaded == [] and report.complete
    assert "already complete" in report.summary()

    # 5. a layer that disappeared (or was never indexed) is rebuilt alone
    with connect_write(path) as con, transaction(con):
        (dict_id,) = con.execute(
            "SELECT dict_id FROM dictionaries WHERE model_name = 'tiny-llama' AND layer = 1"
        ).fetchall()[0]
        delete_dictionary(con, dict_id)
        con.execute(
            "DELETE FROM index_runs WHERE dict_id IN (SELECT dict_id FROM dictionaries "
            "WHERE model_name = 'tiny-bert' AND layer = 0)"
        )
    assert not model_status(_config(path, fourth), "tiny-llama").complete
    fifth = Loader()
    report = build_demo(_config(path, fifth))
    assert fifth.loaded == ["tiny-llama", "tiny-bert"] and report.complete
    llama = next(m for m in report.models if m.name == "tiny-llama")
    bert = next(m for m in report.models if m.name == "tiny-bert")
    assert (llama.trained, llama.newly_indexed) == (1, 1) and (bert.trained, bert.newly_indexed) == (0, 1)
    assert _layers(path) == {"tiny-llama": (3, 3), "tiny-bert": (2, 2)}


def test_rebuild_starts_from_scratch(tmp_path):
    path = tmp_path / "itda.duckdb"
    config = _config(path, Loader())
    config.models = ["tiny-bert"]
    build_demo(config)
    with connect_readonly(path) as con:
        before = con.execute("SELECT MAX(written) FROM dictionaries").fetchall()[0][0]
    config.rebuild = True
    loader = Loader()
    config.loader = loader
    report = build_demo(config)
    assert loader.loaded == ["tiny-bert"] and report.complete
    with connect_readonly(path) as con:
        assert con.execute("SELECT MIN(written) FROM dictionaries").fetchall()[0][0] > before
        assert con.execute("SELECT COUNT(*) FROM dictionaries").fetchall()[0][0] == 2


def test_store_commands(tmp_path):
    path = tmp_path / "itda.duckdb"
    config = _config(path, Loader())
    config.models = ["tiny-bert"]
    build_demo(config)
    app = typer.Typer()

    @app.callback()
    def main() -> None:
        """itda"""

    register(app)
    runner = CliRunner()
    result = runner.invoke(app, ["--help"])
    assert result.exit_code == 0
    for command in ("index", "demo-build", "store-info"):
        assert command in result.output
    for command, option in (
        ("index", "--reindex"),
        ("demo-build", "--rebuild"),
        ("demo-build", "--train-documents"),
    ):
        assert option in runner.invoke(app, [command, "--help"]).output
    info = runner.invoke(app, ["store-info", "--store", str(path)])
    assert info.exit_code == 0, info.output
    assert "tiny-bert" in info.output and "2 dictionaries (2 indexed)" in info.output
    as_json = runner.invoke(app, ["store-info", "--store", str(path), "--json"])
    assert as_json.exit_code == 0 and f'"schema_version": {SCHEMA_VERSION}' in as_json.output
    missing = runner.invoke(app, ["store-info", "--store", str(tmp_path / "none.duckdb")])
    assert missing.exit_code != 0 and "itda demo-build" in str(missing.exception)


def test_every_model_gets_the_same_documents_and_other_budgets_are_refused(tmp_path):
    path = tmp_path / "itda.duckdb"
    build_demo(_config(path, Loader()))
    with connect_readonly(path) as con:
        rows = con.execute(
            "SELECT DISTINCT json_extract_string(config, '$.documents_sha256'), "
            "json_extract(config, '$.documents_seen')::INTEGER FROM dictionaries"
        ).fetchall()
    assert len(rows) == 1 and rows[0][1] == 10  # one set of documents for both models (different tokenizers)
    with pytest.raises(ITDAError, match="built another way") as err:
        build_demo(_config(path, Loader(), train_documents=12))
    assert "\n" not in str(err.value) and "--rebuild" in str(err.value) and "not 12 documents" in str(err.value)
    # a store built with the other tie rule (an older itda's default) is refused the same way
    with pytest.raises(ITDAError, match="init_rule 'value'"):
        build_demo(_config(path, Loader(), init_rule="value"))
    build_demo(_config(path, Loader(), train_documents=12, rebuild=True))
