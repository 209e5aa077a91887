"""Leftovers of killed runs (issue 15, item 4): spill and save folders name their owner, the next run removes
those whose owner is gone (never a live owner's), a dictionary a kill left only as ``.NAME.old-*`` is put back,
and ``itda similarity`` never drops a layer without saying so."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from itda_core import dictionary_recovery
from itda_core.dictionary import ITDA
from itda_core.errors import ITDAError
from itda_core.jobs.index import IndexConfig, index_model, index_store
from itda_core.leftovers import INDEX_PREFIX, Owner, current_owner, host_tag, process_start
from itda_core.similarity.folders import find_dictionaries, group_dictionaries
from itda_core.store.writer import write_dictionary
from itda_core.trainer import train
from tests.tiny import tiny_corpus, tiny_model


@pytest.fixture(scope="module")
def model():
    return tiny_model("llama", n_layers=2)


@pytest.fixture(scope="module")
def corpus():
    return tiny_corpus(n_copies=4)


@pytest.fixture(scope="module")
def dictionaries(model, corpus):
    part, _held_out = corpus.split(0.25)
    return train(model, part, layers=[0, 1], k=4, max_tokens=None, progress=False)


@pytest.fixture()
def gone() -> Owner:
    """The owner record of a process that has exited."""
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return Owner(host_tag(), proc.pid, 0)


@pytest.fixture()
def alive():
    """The owner record of a running process (not this one)."""
    proc = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        start = None
        while start is None:
            start = process_start(proc.pid)
        yield Owner(host_tag(), proc.pid, start)
    finally:
        proc.kill()
        proc.wait()


def _leftover(parent, name: str):
    folder = parent / name
    folder.mkdir()
    (folder / "spill.f32").write_bytes(b"\0" * 64)
    return folder


def test_owner_is_alive_only_while_that_very_process_runs(gone, alive):
    assert current_owner().alive() and alive.alive()
    assert not gone.alive()
    assert not Owner(alive.host, alive.pid, alive.start + 10_000).alive()  # the pid was reused
    assert Owner("00000000", gone.pid, 0).alive()  # another machine's: cannot tell, so kept


def test_save_removes_stale_tmp_and_old_folders_but_not_live_ones(tmp_path, dictionaries, gone, alive):
    itda = dictionaries[0]
    itda.save(tmp_path / "d")
    dead_tmp = _leftover(tmp_path, f".d.tmp-{gone.tag}-abc123")
    dead_old = _leftover(tmp_path, f".d.old-{gone.tag}-ff00ff")
    other_dead = _leftover(tmp_path, f".e.tmp-{gone.tag}-x_y")
    legacy_old = _leftover(tmp_path, f".d.old-{gone.pid}")
    live_tmp = _leftover(tmp_path, f".d.tmp-{alive.tag}-abc123")
    no_owner = _leftover(tmp_path, ".d.tmp-k2j4h5")  # made before owners were recorded: not ours to judge
    itda.save(tmp_path / "d")
    assert not dead_tmp.exists() and not dead_old.exists() and not other_dead.exists() and not legacy_old.exists()
    assert live_tmp.exists() and no_owner.exists()
    assert len(ITDA.load(tmp_path / "d")) == len(itda)


def test_load_puts_back_a_dictionary_a_kill_between_the_renames_left_as_old(tmp_path, dictionaries, gone):
    itda = dictionaries[0]
    path = itda.save(tmp_path / "d")
    os.replace(path, tmp_path / f".d.old-{gone.tag}-0a0b0c")  # the first rename done, the second not
    _leftover(tmp_path, f".d.tmp-{gone.tag}-zz")  # the new version, never renamed into place
    loaded = ITDA.load(path)
    assert len(loaded) == len(itda)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["d"]


def test_a_live_save_is_waited_for_then_named(tmp_path, dictionaries, alive, monkeypatch):
    path = dictionaries[0].save(tmp_path / "d")
    old = tmp_path / f".d.old-{alive.tag}-0a0b0c"
    os.replace(path, old)
    monkeypatch.setattr(dictionary_recovery, "_SAVE_WAIT", 0.2)
    with pytest.raises(ITDAError, match=f"being replaced by a save in process {alive.pid}"):
        ITDA.load(path)
    assert old.is_dir() and not path.exists()  # a live owner's folder is never touched


def test_index_removes_stale_spills_beside_the_store_but_not_live_ones(tmp_path, model, corpus, dictionaries,
                                                                       gone, alive):
    store = tmp_path / "itda.duckdb"
    write_dictionary(store, dictionaries[0], model, corpus)
    dead = _leftover(tmp_path, f"{INDEX_PREFIX}{gone.tag}-abc")
    live = _leftover(tmp_path, f"{INDEX_PREFIX}{alive.tag}-abc")
    config = IndexConfig(max_tokens=64, top_n=2, n_quantiles=2, per_quantile=1, hist_bins=4, progress=False)
    report = index_model(store, model, config)
    assert report.indexed and not dead.exists() and live.exists()
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(INDEX_PREFIX)) == [live.name]
    again = _leftover(tmp_path, f"{INDEX_PREFIX}{gone.tag}-def")
    assert not index_store(store, loader=lambda _name: model, config=config).indexed  # nothing pending
    assert not again.exists()  # removed all the same


def _run(tmp_path, dictionaries):
    """A training run's folder with both layers saved."""
    run = tmp_path / "run"
    for itda in dictionaries.values():
        itda.save(run / itda.config.site)
    return run


def test_similarity_puts_back_a_layer_left_as_old(tmp_path, dictionaries, gone):
    run = _run(tmp_path, dictionaries)
    site = dictionaries[1].config.site
    os.replace(run / site, run / f".{site}.old-{gone.tag}-123abc")
    folders = find_dictionaries([tmp_path])
    assert [f.name for f in folders] == [dictionaries[0].config.site, site]
    assert sorted(next(iter(group_dictionaries(folders).values()))) == [0, 1]


def test_similarity_refuses_an_incomplete_dictionary_folder(tmp_path, dictionaries):
    run = _run(tmp_path, dictionaries)
    (run / dictionaries[1].config.site / "dictionary.safetensors").unlink()
    with pytest.raises(ITDAError, match=r"blocks.1.hook_resid_post is an incomplete ITDA dictionary"):
        find_dictionaries([tmp_path])
    (run / dictionaries[1].config.site / "config.json").unlink()
    dictionaries[1].save(run / "copy")
    (run / "copy" / "config.json").unlink()
    with pytest.raises(ITDAError, match=r"copy is an incomplete ITDA dictionary \(no config.json\)"):
        find_dictionaries([tmp_path])


def test_similarity_says_which_hidden_dictionaries_it_skips(tmp_path, dictionaries, alive, caplog):
    run = _run(tmp_path, dictionaries)
    dictionaries[1].save(run / ".backup")
    unfinished = run / f".{dictionaries[1].config.site}.tmp-{alive.tag}-abc"
    dictionaries[1].save(unfinished)
    said: list[str] = []
    assert len(find_dictionaries([tmp_path], warn=said.append)) == 2
    assert any(m.startswith(f"skipping {run / '.backup'}") for m in said)
    assert any(m.startswith(f"skipping {unfinished}") for m in said)
    with caplog.at_level("WARNING", logger="itda_core.similarity.folders"):  # no callback: the log says it
        find_dictionaries([tmp_path])
    assert f"skipping {run / '.backup'}" in caplog.text


def test_similarity_load_errors_name_the_folder(tmp_path, dictionaries):
    run = _run(tmp_path, dictionaries)
    (run / dictionaries[1].config.site / "config.json").write_text("{")
    with pytest.raises(ITDAError, match=r"blocks.1.hook_resid_post is a damaged ITDA dictionary"):
        group_dictionaries(find_dictionaries([tmp_path]))
