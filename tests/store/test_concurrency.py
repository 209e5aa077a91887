"""Two real processes: a writer adding dictionaries while a reader keeps querying (neither may fail, the
reader sees every dictionary, never a half-written one), and a writer killed with SIGKILL mid-write."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import torch

from itda_core.corpus import Corpus
from itda_core.dictionary import ITDA, ITDAConfig
from itda_core.extraction import tokenize_documents
from itda_core.models import LoadedModel
from itda_core.store.connection import connect_readonly, connect_write, writer_waiting
from itda_core.store.schema import SCHEMA_VERSION
from itda_core.store.writer import write_dictionary
from tests.tiny import tiny_corpus, tiny_model

ROOT = str(Path(__file__).resolve().parents[2])
HELD_OUT = 0.25

pytestmark = pytest.mark.skipif(sys.platform == "win32", reason="POSIX signals and file locks")


def synthetic_itda(model: LoadedModel, corpus: Corpus, layer: int, n_atoms: int, seed: int = 0) -> ITDA:
    """A dictionary of random unit atoms whose provenance rows are real tokens of the train split."""
    train, _ = corpus.split(HELD_OUT)
    prov = tokenize_documents(model, train.documents, 128).provenance
    gen = torch.Generator().manual_seed(seed)
    atoms = torch.randn(n_atoms, model.d_model, generator=gen)
    atoms /= atoms.norm(dim=-1, keepdim=True)
    config = ITDAConfig(
        model_id=model.model_id,
        model_name=model.name,
        layer=layer,
        d_model=model.d_model,
        k=4,
        threshold=0.01,
        corpus_id=train.corpus_id,
        corpus_sha256=train.sha256,
        seq_len=128,
    )
    return ITDA(
        atoms, prov.select(torch.arange(n_atoms) % len(prov)), config, torch.rand(n_atoms, generator=gen)
    )


def _child(code: str, *args: str) -> subprocess.Popen:
    prelude = f"import sys\nsys.path.insert(0, {ROOT!r})\n"
    return subprocess.Popen(
        [sys.executable, "-c", prelude + textwrap.dedent(code), *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false"},
    )


WRITER = """
    from tests.tiny import tiny_corpus, tiny_model
    from tests.store.test_concurrency import synthetic_itda
    from itda_core.store.writer import write_dictionary

    path, n = sys.argv[1], int(sys.argv[2])
    model, corpus = tiny_model("llama", n_layers=n), tiny_corpus(n_copies=4)
    for layer in range(n):
        itda = synthetic_itda(model, corpus, layer, 4000 + 500 * layer, seed=layer)
        write_dictionary(path, itda, model, corpus)
        print("wrote", layer, flush=True)
"""

READER = """
    import time
    from itda_core.store.connection import connect_readonly
    from itda_core.store import queries as Q

    path, n = sys.argv[1], int(sys.argv[2])
    deadline = time.monotonic() + 120
    seen = reads = 0
    while time.monotonic() < deadline:
        with connect_readonly(path, timeout=60) as con:
            dicts = Q.list_dictionaries(con)
            counts = dict(con.execute("SELECT dict_id, COUNT(*) FROM atoms GROUP BY dict_id").fetchall())
        reads += 1
        for row in dicts.itertuples():  # never half a dictionary
            assert counts.get(row.dict_id, 0) == row.n_atoms, (row.dict_id, counts.get(row.dict_id))
        assert set(counts) == set(dicts["dict_id"])
        seen = max(seen, len(dicts))
        if seen == n:
            break
    print("seen", seen, "reads", reads, flush=True)
    sys.exit(0 if seen == n else 3)
"""


def test_writer_and_reader_processes_take_turns(tmp_path):
    path = tmp_path / "itda.duckdb"
    with connect_write(path):  # an empty store, so that the reader can start first
        pass
    n = 4
    reader = _child(READER, str(path), str(n))
    writer = _child(WRITER, str(path), str(n))
    try:
        w_out, w_err = writer.communicate(timeout=180)
        r_out, r_err = reader.communicate(timeout=180)
    finally:
        for proc in (reader, writer):
            if proc.poll() is None:
                proc.kill()
    assert writer.returncode == 0, w_err[-2000:]
    assert reader.returncode == 0, r_err[-2000:] + r_out
    assert w_out.count("wrote") == n
    assert f"seen {n}" in r_out
    reads = int(r_out.split("reads")[1])
    assert reads > 1  # the reader really was reading while the writer wrote
    assert not writer_waiting(path) and not list(tmp_path.glob("*.write-intent.*"))


KILLED_WRITER = """
    import time
    from contextlib import contextmanager
    from tests.tiny import tiny_corpus, tiny_model
    from tests.store.test_concurrency import synthetic_itda
    import itda_core.store.writer as writer

    path, mode = sys.argv[1], sys.argv[2]
    model, corpus = tiny_model("llama", n_layers=3), tiny_corpus(n_copies=4)
    if mode == "before-commit":  # every insert done, COMMIT not yet reached
        original = writer.transaction

        @contextmanager
        def stalled(con):
            with original(con):
                yield con
                print("inside", flush=True)
                time.sleep(120)

        writer.transaction = stalled
        writer.write_dictionary(path, synthetic_itda(model, corpus, 1, 5000, seed=1), model, corpus)
    else:  # a big dictionary, killed while DuckDB is busy inserting its atoms
        original = writer._insert_model

        def announce(*args):
            original(*args)
            print("inside", flush=True)  # the next statements insert the dictionary and its atoms

        writer._insert_model = announce
        writer.write_dictionary(path, synthetic_itda(model, corpus, 2, 1_000_000, seed=2), model, corpus)
    print("finished", flush=True)
"""


def _wait_for(proc: subprocess.Popen, word: str, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        line = proc.stdout.readline()
        if word in line:
            return
        if not line and proc.poll() is not None:
            raise AssertionError(proc.stderr.read()[-2000:])
    raise AssertionError(f"child never printed {word!r}")


@pytest.mark.parametrize(("mode", "delay"), [("before-commit", 0.0), ("mid-insert", 0.05)])
def test_killed_writer_leaves_store_consistent(tmp_path, mode, delay):
    path = tmp_path / "itda.duckdb"
    model, corpus = tiny_model("llama", n_layers=3), tiny_corpus(n_copies=4)
    first = synthetic_itda(model, corpus, 0, 1000)
    write_dictionary(path, first, model, corpus)
    proc = _child(KILLED_WRITER, str(path), mode)
    try:
        _wait_for(proc, "inside")
        time.sleep(delay)
        assert proc.poll() is None, "the writer finished before it could be killed"
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == -signal.SIGKILL
    for _ in range(2):  # read-only first (replaying whatever the log holds), then again after a writer
        with connect_readonly(path) as con:
            version = con.execute("SELECT value FROM meta WHERE key = 'schema_version'").fetchall()[0][0]
            dicts = con.execute("SELECT dict_id, n_atoms FROM dictionaries ORDER BY dict_id").fetchall()
            atoms = dict(con.execute("SELECT dict_id, COUNT(*) FROM atoms GROUP BY dict_id").fetchall())
            tokenizations = con.execute("SELECT n_tokens FROM tokenizations").fetchall()
            tokens = con.execute("SELECT COUNT(*) FROM tokens").fetchall()[0][0]
        assert int(version) == SCHEMA_VERSION
        assert dicts == [(1, 1000)]  # the killed dictionary is entirely absent
        assert atoms == {1: 1000}
        assert [n for (n,) in tokenizations] == [tokens]
        with connect_write(path) as con:  # and the store takes new writes
            pass
    again = write_dictionary(path, synthetic_itda(model, corpus, 1, 300), model, corpus)
    with connect_readonly(path) as con:
        assert con.execute("SELECT COUNT(*) FROM atoms WHERE dict_id = ?", [again]).fetchall()[0][0] == 300
