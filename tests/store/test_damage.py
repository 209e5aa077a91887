"""A damaged store that still opens (a file cut short): every DuckDB error inside store access is one line
naming the file and what to do (StoreDamaged), in the library, in `itda store-info` and on every dashboard
page (an alert, never a traceback)."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import duckdb
import pytest
from streamlit.testing.v1 import AppTest
from typer.testing import CliRunner

from itda_core.cli.app import app
from itda_core.store import queries as Q
from itda_core.store.connection import StoreDamaged, connect_readonly, connect_write, transaction
from itda_core.store.writer import write_dictionary
from tests.dashboard.helpers import run_page
from tests.store.test_concurrency import synthetic_itda
from tests.tiny import tiny_corpus, tiny_model

PAGES = [None, "views/atom_browser.py", "views/live_decomposition.py", "views/similarity.py", "views/atom_map.py"]
BLOCK = 4096


def _reads(path: Path) -> tuple[bool, bool]:
    """(the summary reads, every atom vector reads) with plain DuckDB, on a copy cut short."""
    con = duckdb.connect(str(path), read_only=True)
    try:
        try:
            con.execute("SELECT value FROM meta").fetchall()
            Q.store_summary(con)
        except duckdb.Error:
            return False, False
        try:
            con.execute("SELECT SUM(len(vector)) FROM atoms").fetchall()
        except duckdb.Error:
            return True, False
        return True, True
    finally:
        con.close()


@pytest.fixture(scope="module")
def damaged(tmp_path_factory) -> dict[str, Path]:
    """Copies of a small store cut short: 'early' (the schema check fails), 'late' (the summary still reads,
    the atom vectors do not). Both still open."""
    root = tmp_path_factory.mktemp("damage")
    store = root / "itda.duckdb"
    model, corpus = tiny_model("llama", n_layers=3), tiny_corpus(n_copies=4)
    for layer in range(3):
        write_dictionary(store, synthetic_itda(model, corpus, layer, 3000, seed=layer), model, corpus)
    size = store.stat().st_size
    found: dict[str, Path] = {}
    n_blocks = size // BLOCK
    for cut in range(n_blocks - 1, 0, -max(1, n_blocks // 100)):  # from the end: the first cut breaking each read
        copy = root / "cut.duckdb"
        shutil.copy(store, copy)
        os.truncate(copy, cut * BLOCK)
        summary_ok, vectors_ok = _reads(copy)
        kind = "late" if summary_ok and not vectors_ok else "early" if not summary_ok else None
        if kind and kind not in found:
            found[kind] = copy.rename(root / f"{kind}.duckdb")
        if len(found) == 2:
            return found
    raise AssertionError(f"no cut of the {size:,}-byte store gave both damages: {sorted(found)}")


def _one_line(err: BaseException, path: Path) -> None:
    message = str(err)
    assert "\n" not in message and str(path) in message and "damaged" in message, message
    assert "itda demo-build --rebuild" in message and isinstance(err.__cause__, duckdb.Error)


@pytest.mark.parametrize("kind", ["early", "late"])
def test_library_reads_give_one_line(damaged, kind):
    path = damaged[kind]
    with pytest.raises(StoreDamaged) as err, connect_readonly(path) as con:
        Q.store_summary(con)
        con.execute("SELECT SUM(len(vector)) FROM atoms").fetchall()
    _one_line(err.value, path)


def test_writes_give_one_line(damaged, tmp_path):
    path = shutil.copy(damaged["late"], tmp_path / "w.duckdb")
    with pytest.raises(StoreDamaged) as err, connect_write(path) as con, transaction(con):
        con.execute("INSERT INTO atoms SELECT * FROM atoms").fetchall()
    _one_line(err.value, path)


@pytest.mark.parametrize("as_json", [False, True])
def test_store_info_is_one_line(damaged, as_json):
    path = damaged["early"]
    result = CliRunner().invoke(app, ["store-info", "--store", str(path), *(["--json"] if as_json else [])])
    assert isinstance(result.exception, StoreDamaged), result.output
    _one_line(result.exception, path)


def _alerts(at: AppTest, page: str | None) -> list[str]:
    """The page's error alerts, after checking it raised nothing and every alert is one damage line."""
    assert not at.exception, (page, [e.value for e in at.exception])
    errors = [e.value for e in at.error]
    assert all("\n" not in e and "damaged" in e and "itda demo-build --rebuild" in e for e in errors), (page, errors)
    return errors


def test_every_dashboard_page_shows_an_alert(damaged, monkeypatch):
    monkeypatch.setenv("ITDA_STORE", str(damaged["early"]))  # the pages' store check fails
    for page in PAGES:
        assert _alerts(run_page(page), page), page


def test_late_damage_is_an_alert_not_a_traceback(damaged, monkeypatch):
    monkeypatch.setenv("ITDA_STORE", str(damaged["late"]))  # the store check passes, reading atoms fails
    for page in PAGES:
        _alerts(run_page(page), page)
    atom_page = run_page("views/atom_browser.py", {"dict": "1", "atom": "5"})
    assert _alerts(atom_page, "atom page")
