"""Evaluation results in the store (``itda eval --store``), shown by the dashboard; PNG export of figures."""

from __future__ import annotations

import dataclasses
import importlib
import json
import os
import shutil
from pathlib import Path

import plotly.graph_objects as go
import pytest
import typer
from streamlit.testing.v1 import AppTest
from typer.testing import CliRunner

from itda_core.errors import ITDAError
from itda_core.evaluation import evaluate, save_figure
from itda_core.jobs.evaluation import StoreEvalConfig, evaluate_store, held_out_corpus, stored_metrics
from itda_core.models import LoadedModel
from itda_core.store.connection import connect_readonly
from tests.stores import tiny_llama_store

sweep_module = importlib.import_module("itda_core.evaluation.sweep")  # the package exports a function 'sweep'
APP = str(Path(__file__).resolve().parents[2] / "dashboard" / "app.py")


@pytest.fixture(scope="module")
def tiny_store(tmp_path_factory: pytest.TempPathFactory) -> dict:
    """A store with a 3-layer tiny Llama (saved as a folder, so it loads by name) and its layers 1 and 2."""
    return tiny_llama_store(tmp_path_factory.mktemp("evalstore"), [1, 2])


def _rows(store: Path) -> list[tuple]:
    with connect_readonly(store) as con:
        return con.execute(
            "SELECT dict_id, metric, value, corpus_id, n_tokens, json_extract_string(details, '$.k') "
            "FROM evaluations ORDER BY dict_id, metric"
        ).fetchall()


def test_evaluate_store_writes_and_replaces_rows(tiny_store: dict) -> None:
    store, model = tiny_store["path"], tiny_store["model"]
    held = held_out_corpus(store, "tiny-v1")
    assert held is not None and held.corpus_id == tiny_store["held"].corpus_id
    assert held.sha256 == tiny_store["held"].sha256  # the very split 'itda train --held-out' left out

    def loader(_name: str) -> LoadedModel:
        return model

    config = StoreEvalConfig(max_tokens=100)
    report = evaluate_store(store, model.name, [1], config, loader=loader)
    d1 = tiny_store["ids"][1]
    assert list(report.results) == [d1] and not report.skipped
    rows = _rows(store)
    # the default rule, in the names of the metrics that depend on it
    assert {r[1] for r in rows} == set(stored_metrics("saebench")) and {r[0] for r in rows} == {d1}
    assert {"ce_loss_score:saebench", "kl_div:saebench", "fvu"} <= {r[1] for r in rows}
    assert {r[3] for r in rows} == {held.corpus_id} and {r[5] for r in rows} == {"4"}
    # the stored figures are those of a plain evaluation on the held-out split: the same documents, batches,
    # atoms (FLOAT[] in the store: the float32 bits) and k run the very same computation, and DOUBLE keeps it
    direct = evaluate(model, tiny_store["itdas"][1], tiny_store["held"], k=4, max_tokens=100)
    stored = {r[1]: r[2] for r in rows}
    assert stored["ce_loss_score:saebench"] == direct.ce_loss_score
    assert stored["fvu"] == direct.fvu
    assert {r[4] for r in rows} == {direct.tokens}
    # evaluating again replaces the rows of the same metric, k and corpus
    evaluate_store(store, model.name, [1], config, loader=loader)
    assert len(_rows(store)) == len(rows)
    # another k adds rows next to them; the dashboard shows the dictionary's own k
    evaluate_store(store, model.model_id, [1], StoreEvalConfig(ks=[2], max_tokens=100), loader=loader)
    after = _rows(store)
    assert len(after) == 2 * len(rows) and {r[5] for r in after} == {"2", "4"}
    assert "CE loss score" in report.summary()


def test_rules_are_kept_apart_and_old_rows_named(tiny_store: dict, tmp_path: Path) -> None:
    """Figures of two CE rules are two metrics; rows written before the rule was recorded still read, and the
    next write names them with the rule their ``splice_special`` stands for."""
    from itda_core.store.connection import connect_write
    from itda_core.store.evaluations import evaluation_values

    store, model = tmp_path / "old.duckdb", tiny_store["model"]
    shutil.copy(tiny_store["path"], store)
    d1, d2 = tiny_store["ids"][1], tiny_store["ids"][2]
    corpus_id = tiny_store["held"].corpus_id
    with connect_write(store) as con:
        con.execute("DELETE FROM evaluations")
        for dict_id, flag, metric, value in [(d1, True, "ce_loss_score", 0.5), (d1, True, "kl_div", 0.25),
                                             (d2, False, "ce_loss_score", 0.75), (d2, None, "kl_div", 0.125)]:
            details = {"k": 4, "corpus_id": corpus_id} | ({} if flag is None else {"splice_special": flag})
            con.execute("INSERT INTO evaluations VALUES (?, ?, ?, ?, 10, ?, now())",
                        [dict_id, metric, value, corpus_id, json.dumps(details)])
    with connect_readonly(store) as con:  # a store written before reads as it is
        assert sorted(evaluation_values(con)["metric"]) == ["ce_loss_score", "ce_loss_score", "kl_div", "kl_div"]
    config = StoreEvalConfig(max_tokens=60, progress=False)
    evaluate_store(store, model.name, [1], config, loader=lambda _n: model)
    evaluate_store(store, model.name, [1], dataclasses.replace(config, ce_rule="skip-special"),
                   loader=lambda _n: model)
    with connect_readonly(store) as con:
        rows = con.execute("SELECT dict_id, metric, value, json_extract_string(details, '$.ce_rule') "
                           "FROM evaluations").fetchall()
    names = {(d, m) for d, m, _, _ in rows}
    # the old rows, named by their rule (splice_special true or absent: 'splice-special'; false: 'skip-special')
    assert {(d1, "ce_loss_score:splice-special"), (d1, "kl_div:splice-special"),
            (d2, "ce_loss_score:skip-special"), (d2, "kl_div:splice-special")} <= names
    assert not {m for _, m in names} & {"ce_loss_score", "kl_div"}
    # the new rows of dictionary 1: both rules side by side, each recorded in details
    for rule in ("saebench", "skip-special"):
        mine = [(v, r) for d, m, v, r in rows if d == d1 and m == f"ce_loss_score:{rule}"]
        assert len(mine) == 1 and mine[0][1] == rule
    assert len([m for d, m, _, _ in rows if d == d1 and m == "fvu"]) == 1  # the same under every rule: replaced
    old = [v for d, m, v, _ in rows if (d, m) == (d2, "ce_loss_score:skip-special")]
    assert old == [0.75]  # an old figure keeps its value; another rule's new figure does not replace it
    with connect_readonly(store) as con:
        assert "ce_loss_score:saebench" in set(evaluation_values(con)["metric"])


def test_evaluate_store_errors(tiny_store: dict, tmp_path: Path) -> None:
    store = tiny_store["path"]
    with pytest.raises(ITDAError, match="no dictionaries of model 'nope'"):
        evaluate_store(store, "nope")
    with pytest.raises(ITDAError, match="no dictionaries at layers"):
        evaluate_store(store, None, [7])
    with pytest.raises(ITDAError, match="no store at"):
        evaluate_store(tmp_path / "missing.duckdb")
    with pytest.raises(ITDAError, match="ks must be positive"):
        evaluate_store(store, config=StoreEvalConfig(ks=[0]))


def test_dashboard_overview_shows_stored_evaluations(tiny_store: dict, monkeypatch: pytest.MonkeyPatch) -> None:
    store, model = tiny_store["path"], tiny_store["model"]
    evaluate_store(store, model.name, [2], StoreEvalConfig(max_tokens=100), loader=lambda _n: model)
    # dictionary 1: its own k (4) first, then another k (2) more recently: the overview shows k = 4
    for k in (4, 2):
        evaluate_store(store, model.name, [1], StoreEvalConfig(ks=[k], max_tokens=100), loader=lambda _n: model)
    monkeypatch.setenv("ITDA_STORE", str(store))
    at = AppTest.from_file(APP, default_timeout=120)
    at.run()
    assert not at.exception, [e.value for e in at.exception]
    tables = [df.value for df in at.dataframe if "dict_id" in df.value.columns]
    assert tables, "no dictionaries table on the overview page"
    table = tables[0]
    assert "eval_ce_loss_score:saebench" in table.columns and "eval_fvu" in table.columns
    row = table[table["dict_id"] == tiny_store["ids"][2]].iloc[0]
    with connect_readonly(store) as con:
        want = con.execute(
            "SELECT value FROM evaluations WHERE dict_id = ? AND metric = 'ce_loss_score:saebench'",
            [tiny_store["ids"][2]]
        ).fetchall()[0][0]
    assert row["eval_ce_loss_score:saebench"] == want  # the overview shows the stored DOUBLE itself
    own = table[table["dict_id"] == tiny_store["ids"][1]].iloc[0]
    with connect_readonly(store) as con:
        by_k = dict(con.execute(
            "SELECT json_extract_string(details, '$.k'), value FROM evaluations "
            "WHERE dict_id = ? AND metric = 'ce_loss_score:saebench'", [tiny_store["ids"][1]]
        ).fetchall())  # fmt: skip
    assert set(by_k) == {"2", "4"} and by_k["2"] != by_k["4"]  # two distinct rows, so the next check tells
    assert own["eval_ce_loss_score:saebench"] == by_k["4"]


def _cli() -> typer.Typer:
    from itda_core.cli.evaluate import register

    app = typer.Typer()
    register(app)

    @app.command()
    def other() -> None:  # a second command, so that typer keeps "eval" as a sub-command
        """Unused."""

    return app


def test_cli_eval_store(tiny_store: dict, tmp_path: Path) -> None:
    store = tiny_store["path"]
    out = tmp_path / "store_results.json"
    args = ["eval", "--store", str(store), "--layers", "1,2", "--sweep", "--ks", "1,3", "--max-tokens", "60",
            "--device", "cpu", "--no-progress", "--out", str(out)]  # fmt: skip
    res = CliRunner().invoke(_cli(), args)
    assert res.exit_code == 0, res.output
    assert "stored 4 evaluation(s) of 2 dictionaries" in res.output
    data = json.loads(out.read_text())
    assert sorted((r["dict_id"], r["k"]) for r in data) == sorted(
        (d, k) for d in tiny_store["ids"].values() for k in (1, 3)
    )
    res = CliRunner().invoke(_cli(), ["eval", "--device", "cpu"])
    assert res.exit_code != 0 and "either --dictionary" in str(res.exception)
    res = CliRunner().invoke(_cli(), ["eval", "--store", str(store), "--sizes", "3"])
    assert res.exit_code != 0 and "--sizes is not available" in str(res.exception)
    res = CliRunner().invoke(_cli(), ["eval", "--store", str(store), "--layers", "x"])
    assert res.exit_code != 0 and "cannot read layers 'x'" in str(res.exception)


def test_cli_eval_store_reads_layers_as_train_does(tiny_store: dict) -> None:
    """One layer grammar: ``--layers 1-2`` and ``-1`` (the last layer) work for ``eval --store`` as for
    ``itda train``, read against the model's depth (3 layers; dictionaries at 1 and 2)."""
    store = str(tiny_store["path"])
    common = ["eval", "--store", store, "--k", "1", "--max-tokens", "30", "--device", "cpu", "--no-progress"]
    res = CliRunner().invoke(_cli(), [*common, "--layers", "0-2"])
    assert res.exit_code == 0, res.output
    assert "of 2 dictionaries" in res.output and " L1 " in res.output and " L2 " in res.output
    res = CliRunner().invoke(_cli(), [*common, "--layers", "-1"])
    assert res.exit_code == 0, res.output
    assert "of 1 dictionaries" in res.output and " L2 " in res.output and " L1 " not in res.output
    res = CliRunner().invoke(_cli(), [*common, "--layers", "0-5"])
    assert res.exit_code != 0 and "out of range" in str(res.exception)


# ---- PNG export ------------------------------------------------------------------------------------------


def _figure() -> go.Figure:
    return go.Figure(go.Scatter(x=[10, 20, 40, 80], y=[0.5, 0.6, 0.7, 0.8]))


@pytest.mark.skipif(not os.path.exists("/usr/bin/chromium"), reason="needs Debian's chromium at /usr/bin/chromium")
def test_png_export_with_chromium(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("BROWSER_PATH", raising=False)
    monkeypatch.setenv("PATH", str(tmp_path))  # not on PATH: found at its usual location
    written, message = save_figure(_figure(), tmp_path / "fig")
    assert message is None, message
    assert written == [tmp_path / "fig.html", tmp_path / "fig.png"]
    assert (tmp_path / "fig.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "BROWSER_PATH" not in os.environ  # restored


def test_png_skipped_with_one_line_message_without_browser(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("BROWSER_PATH", str(tmp_path / "no-such-chrome"))
    written, message = save_figure(_figure(), tmp_path / "a")
    assert written == [tmp_path / "a.html"] and (tmp_path / "a.html").is_file()
    assert message is not None and "\n" not in message and "is not an executable" in message
    monkeypatch.delenv("BROWSER_PATH")
    monkeypatch.setenv("PATH", str(tmp_path))
    monkeypatch.setattr(sweep_module, "BROWSER_PATHS", ())
    written, message = save_figure(_figure(), tmp_path / "b")
    assert written == [tmp_path / "b.html"] and not (tmp_path / "b.png").exists()
    assert message is not None and "\n" not in message and "no Chrome/Chromium browser found" in message
