"""Extraction throughput per embedded model: all layers vs stopping after L/4 and L/2.

Run by hand: ``.venv/bin/python bench/bench_extract.py [--docs 64] [--models smollm2-135m minilm-l6]``.
Prints a markdown table for docs/benchmarks.md; ratios are measured within one run.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
from machine import cpu_name  # bench/machine.py (a script's folder is on sys.path)

from itda_core.corpus import load_corpus
from itda_core.extraction import extract
from itda_core.models import load_model


def rate(model, docs, layers, batch_size: int) -> float:
    start = time.perf_counter()
    n = sum(len(b) for b in extract(model, docs, layers, batch_size=batch_size, progress=False))
    return n / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--models", nargs="+", default=["smollm2-135m", "gemma3-270m", "minilm-l6"])
    parser.add_argument("--docs", type=int, default=64, help="documents per measurement (128 tokens max each)")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--repeats", type=int, default=3, help="interleaved repeats; the median is reported")
    args = parser.parse_args()
    docs = load_corpus("default").documents[: args.docs]
    print(
        f"# extraction, {time.strftime('%Y-%m-%d')}, {cpu_name()}, {torch.get_num_threads()} threads, "
        f"torch {torch.__version__}, device {args.device}, {args.docs} docs x <=128 tokens"
    )
    print("| model | layers | all layers tok/s | stop at L/2 tok/s | stop at L/4 tok/s | L/2 speed-up | L/4 speed-up |")
    print("|---|---|---|---|---|---|---|")
    for name in args.models:
        model = load_model(name, device=args.device)
        n = model.n_layers
        rate(model, docs[:4], [0], args.batch_size)  # warm-up
        runs: dict[str, list[float]] = {"full": [], "half": [], "quarter": []}
        for _ in range(args.repeats):  # interleaved, so machine noise hits every setting alike
            runs["full"].append(rate(model, docs, list(range(n)), args.batch_size))
            runs["half"].append(rate(model, docs, [n // 2 - 1], args.batch_size))
            runs["quarter"].append(rate(model, docs, [n // 4 - 1], args.batch_size))
        full, half, quarter = (statistics.median(runs[key]) for key in ("full", "half", "quarter"))
        print(
            f"| {name} | {n} | {full:,.0f} | {half:,.0f} | {quarter:,.0f} "
            f"| {half / full:.2f}x | {quarter / full:.2f}x |"
        )


if __name__ == "__main__":
    main()
