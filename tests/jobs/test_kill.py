"""kill -9 (issue 15, the short version of bench/kill_check.py): a save and an index killed while their temporary
folders exist leave nothing behind once the next run has finished, and everything still reads back."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from itda_core.dictionary import ITDA
from itda_core.jobs.index import IndexConfig, index_store, pending
from itda_core.models import load_model
from itda_core.store.connection import connect_readonly
from itda_core.store.reader import read_dictionary
from itda_core.store.writer import write_dictionary
from itda_core.trainer import train
from tests.tiny import tiny_corpus, tiny_model

ROOT = Path(__file__).resolve().parents[2]
SAVE_LOOP = "import sys\nfrom itda_core.dictionary import ITDA\nitda = ITDA.load(sys.argv[1])\nwhile True:\n" \
            "    itda.save(sys.argv[2])\n"


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    """A tiny GPT-2 saved as a folder (so a subprocess loads it by name), its corpus, a store and a dictionary
    folder of 3 layers."""
    root = tmp_path_factory.mktemp("kill")
    made = tiny_model("gpt2")
    made.model.save_pretrained(root / "tiny-gpt2")
    made.tokenizer.save_pretrained(root / "tiny-gpt2")
    model = load_model(str(root / "tiny-gpt2"), device="cpu")
    corpus = tiny_corpus(n_copies=12)
    part, _ = corpus.split(0.5)
    dictionaries = train(model, part, layers=[0, 1, 2], k=4, max_tokens=None, progress=False)
    store = root / "store" / "itda.duckdb"
    for itda in dictionaries.values():
        write_dictionary(store, itda, model, corpus)
    source = dictionaries[2].save(root / "source")
    return {"root": root, "store": store, "source": source}


def _kill_when(argv: list[str], appears: Path, pattern: str, timeout: float = 120) -> list[Path]:
    """Start ``argv``, SIGKILL it as soon as a folder matching ``pattern`` exists in ``appears``; the folders
    seen then."""
    proc = subprocess.Popen(argv, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + timeout
    try:
        while not (seen := sorted(appears.glob(pattern))):
            assert proc.poll() is None, "the process ended before its temporary folder appeared"
            assert time.monotonic() < deadline, "no temporary folder appeared"
            time.sleep(0.002)
        os.kill(proc.pid, signal.SIGKILL)
    finally:
        proc.kill()
        proc.wait()
    return seen


def _leftovers(root: Path) -> list[str]:
    return sorted(p.name for pattern in (".itda-index-*", ".*.tmp-*", ".*.old-*") for p in root.rglob(pattern))


def test_killed_save_leaves_nothing_after_the_next_save(setup, tmp_path):
    target = tmp_path / "d"
    ITDA.load(setup["source"]).save(target)
    seen = _kill_when([sys.executable, "-c", SAVE_LOOP, str(setup["source"]), str(target)], tmp_path, ".d.*-*")
    assert seen, "the kill came while a save was under way"
    ITDA.load(target).save(target)  # the next run
    assert _leftovers(tmp_path) == []
    assert len(ITDA.load(target)) == len(ITDA.load(setup["source"]))


def test_killed_index_leaves_nothing_after_the_next_index(setup):
    store = setup["store"]
    argv = [sys.executable, "-m", "itda_core.cli", "index", "--store", str(store), "--max-tokens", "512",
            "--no-progress"]
    seen = _kill_when(argv, store.parent, ".itda-index-*")
    assert seen and _leftovers(store.parent) == [p.name for p in seen]  # the kill left its spill folder
    report = index_store(store, config=IndexConfig(max_tokens=512, progress=False))  # the next run
    assert report.indexed
    assert _leftovers(store.parent) == []
    assert pending(store) == []
    with connect_readonly(store) as con:
        for dict_id, n_atoms in con.execute("SELECT dict_id, n_atoms FROM dictionaries").fetchall():
            assert len(read_dictionary(con, dict_id)) == n_atoms
