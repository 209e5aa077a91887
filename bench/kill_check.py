"""Kill -9 check (issue 15): SIGKILL ``itda train --store``, ``itda index``, a save loop and ``itda demo-build``
(its train -> store -> index sequence, without the atom maps) at random points, run the step again to
completion, then check integrity.

Every step runs as a subprocess on a tiny random GPT-2 (tests/tiny.py, saved as a model folder) and a small
.jsonl corpus, so that the whole check fits in a few CPU minutes. A step is first run once uninterrupted (its
duration sets the kill window); then, ``--kills`` times, it is started, killed with SIGKILL after a random delay
(uniform over the window; the save loop is killed a random time after its first save), and run again to
completion ("the next run"). After each next run:

- the store opens read-only, and every dictionary in it reads back with as many atoms as its row says and as
  its ``atoms`` rows count; after index and demo steps no dictionary is left unindexed;
- every dictionary folder under the run's output loads (``find_dictionaries`` + ``ITDA.load``), one per layer;
- no ``.itda-index-*``, ``.*.tmp-*`` or ``.*.old-*`` folder is left anywhere under the work folder.

What each kill left behind before the next run is counted too (that is what the next run had to clean up).

    python bench/kill_check.py [--kills 3] [--seed 0] [--json results.json] [--work DIR]
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

LEFTOVER_GLOBS = {"index spill": ".itda-index-*", "save tmp": ".*.tmp-*", "save old": ".*.old-*"}
CLI = [sys.executable, "-m", "itda_core.cli"]
LAYERS = "0,1,2"

SAVE_LOOP = """
import sys
from itda_core.dictionary import ITDA
itda = ITDA.load(sys.argv[1])
first = True
while True:
    itda.save(sys.argv[2])
    if first:
        print("saved", flush=True)
        first = False
"""

# what `itda demo-build` does (train every layer, store, index; resumable) without the UMAP atom maps, which
# take minutes of numba compilation on a loaded CPU and write only a cache table
DEMO = """
import sys
from pathlib import Path
from itda_core.jobs.demo import DemoConfig, build_demo
build_demo(DemoConfig(store=Path(sys.argv[1]), models=[sys.argv[2]], train_documents=40, index_tokens=512, k=8,
                      atom_maps=False, progress=False, device="cpu"))
"""


@dataclass
class Trial:
    """One kill and the next run after it."""

    step: str
    delay_s: float  # when the kill came, seconds after the start (save: after the first save)
    killed: bool  # False when the step finished before the kill
    left: dict[str, int]  # leftover folders by kind, right after the kill
    next_run_s: float
    next_run_rc: int
    problems: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return self.next_run_rc == 0 and not self.problems


@dataclass
class Work:
    """The files every step shares."""

    root: Path
    model: Path
    corpus: Path
    store: Path
    out: Path
    demo_store: Path
    src_dictionary: Path = Path()

    @property
    def save_target(self) -> Path:
        return self.root / "saves" / "d"


def prepare(root: Path) -> Work:
    """The tiny model folder and the corpus file."""
    from tests.tiny import TEXTS, tiny_model

    made = tiny_model("gpt2")
    model = root / "tiny-gpt2"
    made.model.save_pretrained(model)
    made.tokenizer.save_pretrained(model)
    corpus = root / "docs.jsonl"
    lines = [json.dumps({"text": f"{(TEXTS[i % len(TEXTS)] + ' ') * (1 + i % 4)}{i}"}) for i in range(120)]
    corpus.write_text("\n".join(lines) + "\n")
    return Work(root, model, corpus, root / "itda.duckdb", root / "out", root / "demo" / "itda.duckdb")


def commands(work: Work) -> dict[str, list[str]]:
    """The command line of each step (the killed run and the next run are the same command)."""
    return {
        "train": [*CLI, "train", "--model", str(work.model), "--corpus", str(work.corpus), "--layers", LAYERS,
                  "--k", "4", "--out", str(work.out), "--store", str(work.store), "--replace", "--no-progress"],
        "index": [*CLI, "index", "--store", str(work.store), "--reindex", "--max-tokens", "0", "--no-progress"],
        "save": [sys.executable, "-c", SAVE_LOOP, str(work.src_dictionary), str(work.save_target)],
        "demo": [sys.executable, "-c", DEMO, str(work.demo_store), str(work.model)],
    }


def leftovers(root: Path) -> dict[str, list[Path]]:
    """Leftover folders anywhere under ``root``, by kind."""
    return {kind: sorted(p for p in root.rglob(pattern) if p.is_dir()) for kind, pattern in LEFTOVER_GLOBS.items()}


def run(argv: list[str], timeout: float = 600) -> tuple[int, float, str]:
    """Run to completion: exit status, seconds, the tail of its output."""
    t0 = time.perf_counter()
    proc = subprocess.run(argv, capture_output=True, text=True, timeout=timeout, cwd=ROOT)
    return proc.returncode, time.perf_counter() - t0, (proc.stdout + proc.stderr)[-600:]


def kill_after(argv: list[str], delay: float, wait_for: str | None = None) -> bool:
    """Start ``argv`` and SIGKILL it ``delay`` seconds after it starts (or after it prints ``wait_for``);
    False when it ended first."""
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, cwd=ROOT)
    if wait_for is not None:
        assert proc.stdout is not None
        for line in proc.stdout:
            if wait_for in line:
                break
    time.sleep(delay)
    ended = proc.poll() is not None
    if not ended:
        os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    return not ended


def store_problems(store: Path, indexed: bool) -> list[str]:
    """What is wrong with the store: it does not open, a dictionary does not read back whole, one is not
    indexed (when ``indexed``)."""
    from itda_core.errors import ITDAError
    from itda_core.jobs.index import pending
    from itda_core.store.connection import connect_readonly
    from itda_core.store.reader import read_dictionary

    problems = []
    try:
        with connect_readonly(store) as con:
            rows = con.execute("SELECT dict_id, n_atoms FROM dictionaries ORDER BY dict_id").fetchall()
            for dict_id, n_atoms in rows:
                stored = con.execute("SELECT count(*) FROM atoms WHERE dict_id = ?", [dict_id]).fetchone()[0]
                itda = read_dictionary(con, dict_id)
                if not len(itda) == n_atoms == stored:
                    problems.append(f"dictionary {dict_id}: {len(itda)} atoms read, {n_atoms} recorded, "
                                    f"{stored} rows")
        if not rows:
            problems.append("the store holds no dictionaries")
        if indexed and pending(store):
            problems.append(f"{len(pending(store))} dictionaries not indexed")
    except (ITDAError, OSError) as err:
        problems.append(f"store does not open: {err}")
    return problems


def folder_problems(out: Path, n_layers: int) -> list[str]:
    """What is wrong with the dictionary folders under ``out``: one does not load, a layer is missing."""
    from itda_core.dictionary import ITDA
    from itda_core.errors import ITDAError
    from itda_core.similarity.folders import find_dictionaries

    try:
        folders = find_dictionaries([out])
        layers = sorted(ITDA.load(f).config.layer for f in folders)
    except ITDAError as err:
        return [f"dictionary folders: {err}"]
    return [] if len(layers) == n_layers else [f"{len(layers)} dictionary folders, expected {n_layers}"]


def check(work: Work, step: str) -> list[str]:
    """Integrity after a step's next run."""
    problems = [f"{len(found)} {kind} folder(s) left: {found[0].name}"
                for kind, found in leftovers(work.root).items() if found]
    if step in ("train", "index"):
        problems += store_problems(work.store, indexed=step == "index")
        problems += folder_problems(work.out, n_layers=3)
    elif step == "save":
        problems += folder_problems(work.save_target.parent, n_layers=1)
    else:
        problems += store_problems(work.demo_store, indexed=True)
    return problems


def trial(work: Work, step: str, argv: list[str], window: float, rng: random.Random) -> Trial:
    """Kill ``step`` once at a random point of ``window`` seconds, run it again, check."""
    delay = rng.uniform(0.0, window)
    if step == "save":
        killed = kill_after(argv, delay, wait_for="saved")
        next_argv = [sys.executable, "-c", "import sys; from itda_core.dictionary import ITDA; "
                     "ITDA.load(sys.argv[1]).save(sys.argv[2])", str(work.src_dictionary), str(work.save_target)]
    else:
        if step == "demo":  # start from an empty store, so that the killed run has work to do
            shutil.rmtree(work.demo_store.parent, ignore_errors=True)
        killed = kill_after(argv, delay)
        next_argv = argv
    left = {kind: len(found) for kind, found in leftovers(work.root).items()}
    rc, seconds, tail = run(next_argv)
    problems = check(work, step) if rc == 0 else [f"next run failed ({rc}): {tail.strip().splitlines()[-1]}"]
    return Trial(step, round(delay, 3), killed, left, round(seconds, 2), rc, problems)


def main() -> int:
    """Run the check, print the table, write JSON if asked; exit 1 if any trial failed."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--kills", type=int, default=3, help="kills per step (the save loop gets twice as many)")
    parser.add_argument("--steps", default="train,index,save,demo", help="comma-separated steps")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", type=Path, help="write the trials and totals here")
    parser.add_argument("--work", type=Path, help="work folder (default: a temporary one, removed after)")
    args = parser.parse_args()
    rng = random.Random(args.seed)
    root = args.work or Path(tempfile.mkdtemp(prefix="itda-kill-check-"))
    root.mkdir(parents=True, exist_ok=True)
    work = prepare(root)
    steps = [s for s in args.steps.split(",") if s]
    trials: list[Trial] = []
    baseline: dict[str, float] = {}
    t_all = time.perf_counter()
    try:
        rc, seconds, tail = run(commands(work)["train"])  # also the store and folders the other steps use
        if rc != 0:
            raise SystemExit(f"the first training run failed: {tail}")
        baseline["train"] = seconds
        work.src_dictionary = next(p for p in sorted(work.out.rglob("config.json"))).parent
        for step in steps:
            argv = commands(work)[step]
            if step == "save":
                window = 0.5
                run([sys.executable, "-c", "import sys; from itda_core.dictionary import ITDA; "
                     "ITDA.load(sys.argv[1]).save(sys.argv[2])", str(work.src_dictionary), str(work.save_target)])
            elif step not in baseline:
                rc, seconds, tail = run(argv)
                if rc != 0:
                    raise SystemExit(f"the first {step} run failed: {tail}")
                baseline[step] = window = seconds
            else:
                window = baseline[step]
            for _ in range(args.kills * (2 if step == "save" else 1)):
                trials.append(trial(work, step, argv, window, rng))
                t = trials[-1]
                print(f"{t.step:6} kill at {t.delay_s:6.2f} s  killed={t.killed!s:5} left={t.left}  "
                      f"next run {t.next_run_s:5.1f} s  {'OK' if t.ok else 'FAILED: ' + '; '.join(t.problems)}",
                      flush=True)
    finally:
        if args.work is None:
            shutil.rmtree(root, ignore_errors=True)
    print_table(trials, baseline)
    if args.json:
        args.json.write_text(json.dumps({"baseline_s": baseline, "trials": [asdict(t) | {"ok": t.ok} for t in trials],
                                         "total_s": round(time.perf_counter() - t_all, 1)}, indent=2) + "\n")
    return 0 if all(t.ok for t in trials) else 1


def print_table(trials: list[Trial], baseline: dict[str, float]) -> None:
    """One row per step: kills, kills that landed, leftovers the kills left, next runs that passed."""
    print(f"\n{'step':6} {'uninterrupted':>13} {'kills':>5} {'landed':>6} {'left spill/tmp/old':>18} "
          f"{'next run ok':>11} {'leftovers after':>15}")
    for step in dict.fromkeys(t.step for t in trials):
        rows = [t for t in trials if t.step == step]
        left = "/".join(str(sum(t.left[k] for t in rows)) for k in LEFTOVER_GLOBS)
        after = sum(1 for t in rows if any("left" in p for p in t.problems))
        base = f"{baseline[step]:.1f} s" if step in baseline else "-"
        print(f"{step:6} {base:>13} {len(rows):>5} {sum(t.killed for t in rows):>6} {left:>18} "
              f"{sum(t.ok for t in rows):>6}/{len(rows):<4} {after:>15}")


if __name__ == "__main__":
    sys.exit(main())
