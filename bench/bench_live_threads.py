"""Live decomposition time by torch thread count, with and without a busy process beside it.

Run by hand: ``.venv/bin/python bench/bench_live_threads.py --store /tmp/demo_first/itda.duckdb``.

Decomposes ~100 tokens of the default corpus at the middle layer of --model with its stored dictionary
(as the dashboard's live page does, model loaded), alternating 1 thread, all cores' threads and the
dashboard's choice (:func:`itda_dashboard.live.choose_threads`) round by round, first on the machine as it
is, then with ``--busy`` busy-loop processes started beside it. Medians of --repeats. Prints markdown.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

from machine import cpu_name  # bench/machine.py (a script's folder is on sys.path)

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
BUSY = "while True: pass"


def setup(model_name: str, store: Path, n_tokens: int):
    """(model, dictionary, text of about ``n_tokens`` tokens) for the timing."""
    from itda_core.corpus import load_corpus
    from itda_core.models import load_model
    from itda_core.store.connection import connect_readonly
    from itda_core.store.reader import read_dictionary

    model = load_model(model_name, device="cpu")
    layer = model.n_layers // 2
    with connect_readonly(store) as con:
        rows = con.execute("SELECT dict_id FROM dictionaries WHERE model_id = ? AND layer = ? ORDER BY dict_id",
                           [model.model_id, layer]).fetchall()  # fmt: skip
        if not rows:
            raise SystemExit(f"no dictionary of {model_name} at layer {layer} in {store}")
        itda = read_dictionary(con, int(rows[0][0]))
    itda.gram()
    text = " ".join(d.text for d in load_corpus("default").documents[:20])
    enc = model.tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
    return model, itda, text[: enc["offset_mapping"][n_tokens - 2][1]]


def rounds(model, itda, text: str, repeats: int) -> tuple[dict[str, list[float]], list[int]]:
    """Seconds per decomposition for each setting (the settings alternating within every round), and the
    thread counts the dashboard chose."""
    import torch

    from itda_core.decompose import decompose
    from itda_dashboard import live

    cores = len(os.sched_getaffinity(0))
    out: dict[str, list[float]] = {"1 thread": [], f"{cores} threads": [], "chosen by load": []}
    chosen = []
    for _ in range(repeats):
        for name in out:
            if name == "chosen by load":
                chosen.append(live.choose_threads())
            else:
                torch.set_num_threads(int(name.split()[0]))
            start = time.perf_counter()
            decompose(model, itda, text)
            out[name].append(time.perf_counter() - start)
    return out, chosen


def main() -> None:
    """Time the settings on the machine as it is, then beside busy processes, and print markdown."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--store", type=Path, default=ROOT / "data" / "itda.duckdb")
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--tokens", type=int, default=100)
    parser.add_argument("--repeats", type=int, default=9)
    parser.add_argument("--busy", type=int, default=1, help="busy-loop processes for the loaded runs")
    args = parser.parse_args()
    model, itda, text = setup(args.model, args.store, args.tokens)
    from itda_core.decompose import decompose

    n = len(model.tokenizer(text)["input_ids"])
    decompose(model, itda, text)  # warm-up
    print(f"# live threads, {time.strftime('%Y-%m-%d')}, {cpu_name()}, {os.cpu_count()} CPUs; {args.model}, "
          f"{n} tokens, {len(itda):,} atoms, k={itda.config.k}; median (max) ms of {args.repeats}")  # fmt: skip
    results = {}
    results[f"as is (load {os.getloadavg()[0]:.1f})"] = rounds(model, itda, text, args.repeats)
    busy = [subprocess.Popen([sys.executable, "-c", BUSY]) for _ in range(args.busy)]
    try:
        time.sleep(5)  # let the load average see them
        label = f"{args.busy} busy process(es) beside (load {os.getloadavg()[0]:.1f})"
        results[label] = rounds(model, itda, text, args.repeats)
    finally:
        for proc in busy:
            proc.terminate()
            proc.wait()
    settings = list(next(iter(results.values()))[0])
    print("\n| machine | " + " | ".join(settings) + " | threads chosen |\n|---|" + "---|" * (len(settings) + 1))
    for label, (times, chosen) in results.items():
        cells = [f"{statistics.median(t) * 1000:.0f} ({max(t) * 1000:.0f})" for t in times.values()]
        print(f"| {label} | " + " | ".join(cells) + f" | {', '.join(map(str, sorted(set(chosen))))} |")


if __name__ == "__main__":
    main()
