"""Lock waits are never silent: a writer blocked by a read-only session left open (another process) says
once who holds the store and how long it will wait, `itda train --store` fails before training, naming the
holder, and readers do not stall behind a writer that someone else keeps waiting."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import time

import pytest
from typer.testing import CliRunner

import itda_core.store.connection as connection
from itda_core.cli.app import app
from itda_core.store.connection import StoreBusy, connect_readonly, connect_write, lock_holder, writer_waiting
from tests.tiny import TEXTS, tiny_model

pytestmark = pytest.mark.skipif(sys.platform == "win32", reason="POSIX file locks")

HOLDER = """
    import sys, time
    import duckdb
    con = duckdb.connect(sys.argv[1], read_only=True)  # a SQL user's session, left open
    print("holding", flush=True)
    time.sleep(120)
"""


@pytest.fixture
def held_store(tmp_path):
    """A store held open read-only by another process; yields (path, that process's pid)."""
    path = tmp_path / "itda.duckdb"
    with connect_write(path):
        pass
    proc = subprocess.Popen([sys.executable, "-c", textwrap.dedent(HOLDER), str(path)], stdout=subprocess.PIPE,
                            text=True)  # fmt: skip
    try:
        assert proc.stdout.readline().strip() == "holding"
        yield path, proc.pid
    finally:
        proc.kill()
        proc.wait(timeout=30)


def test_writer_says_who_holds_the_store_once(held_store):
    path, pid = held_store
    notices: list[str] = []
    with pytest.raises(StoreBusy) as err, connect_write(path, timeout=1.0, notice=notices.append):
        pass
    assert len(notices) == 1, notices
    assert f"PID {pid} (" in notices[0] and str(path) in notices[0] and "waiting up to 1 s" in notices[0]
    message = str(err.value)
    assert "\n" not in message and f"PID {pid} (" in message and "close that session" in message


def test_train_store_fails_before_training_naming_the_holder(held_store, tmp_path, monkeypatch):
    path, pid = held_store
    made = tiny_model("gpt2")
    folder = tmp_path / "tiny-gpt2"
    made.model.save_pretrained(folder)
    made.tokenizer.save_pretrained(folder)
    corpus = tmp_path / "docs.jsonl"
    corpus.write_text("".join(json.dumps({"text": t}) + "\n" for t in TEXTS))
    events: list[str] = []
    monkeypatch.setattr(connection, "WRITABLE_TIMEOUT", 1.0)
    import itda_core.trainer as trainer

    def fake_run(self):
        events.append("trained")
        return {}

    monkeypatch.setattr(trainer.Trainer, "run", fake_run)
    result = CliRunner().invoke(app, ["train", "--model", str(folder), "--corpus", str(corpus), "--layers", "0",
                                      "--no-progress", "--store", str(path), "--out", str(tmp_path / "out")])
    assert isinstance(result.exception, StoreBusy), result.output
    message = str(result.exception)
    assert "\n" not in message and f"PID {pid} (" in message and "nothing was trained" in message
    assert "trained" not in events  # the error came first: training never started
    assert f"is locked by PID {pid} (" in result.output and "waiting up to 1 s" in result.output  # said once


def test_lock_holder_from_duckdb_message():
    err = RuntimeError('IO Error: Could not set lock on file "/x.duckdb": Conflicting lock is held in '
                       "/usr/bin/python3.11 (PID 4242). However, you would be able to open this database ...")
    assert lock_holder(err) == "PID 4242 (/usr/bin/python3.11)"
    assert lock_holder(RuntimeError("Could not set lock on file")) == "another process"


def test_readers_hold_back_only_for_a_fresh_intent(tmp_path):
    path = tmp_path / "itda.duckdb"
    with connect_write(path):
        pass
    sleeper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])  # a live "writer"
    try:
        intent = path.with_name(f"{path.name}.write-intent.{sleeper.pid}")
        intent.touch()
        assert writer_waiting(path)  # a writer just announced itself: readers let it go first
        old = time.time() - 3 * connection.YIELD_WINDOW
        os.utime(intent, (old, old))
        # still waiting long after: someone else blocks it, and readers no longer stall behind it
        assert not writer_waiting(path) and intent.exists()
        with connect_readonly(path, timeout=60) as con:
            assert con.execute("SELECT COUNT(*) FROM dictionaries").fetchall() == [(0,)]
    finally:
        sleeper.kill()
        sleeper.wait(timeout=30)
