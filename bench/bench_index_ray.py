"""Held-out indexing in this process vs on Ray Data with 1 and 2 actors (``itda index --engine ray``): tokens/s of
the whole run and the merge into the store (the SQL summaries and figures), on a small real model.

Run by hand (about 3-5 minutes on a 2-core machine):

    .venv/bin/python bench/bench_index_ray.py                          # minilm-l6, layers 2,4, 4,096 tokens
    .venv/bin/python bench/bench_index_ray.py --model smollm2-135m --layers 5,15 --tokens 2048

One store is trained once (its dictionaries on the training split), copied per run and indexed on the same
held-out tokens; each Ray run joins one local cluster (``ray.init`` timed apart) and includes its actors' start
(model load) in its time. The codes of every run are compared with the local run's. Prints a markdown table.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.machine import cpu_name


def _codes(store: Path) -> list[tuple]:
    """Every stored code, sorted (to compare runs)."""
    from itda_core.store.connection import connect_readonly

    with connect_readonly(store) as con:
        return con.execute("SELECT * FROM codes ORDER BY ALL").fetchall()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", default="minilm-l6")
    parser.add_argument("--layers", default="2,4")
    parser.add_argument("--train-tokens", type=int, default=3000)
    parser.add_argument("--tokens", type=int, default=4096, help="held-out tokens indexed")
    parser.add_argument("--workers", default="1,2")
    args = parser.parse_args()

    import ray
    import torch

    from itda_core.config.index import IndexConfig
    from itda_core.config.train import TrainConfig
    from itda_core.corpus import load_corpus
    from itda_core.jobs.index import index_model
    from itda_core.layers import parse_layers
    from itda_core.models import load_model
    from itda_core.store.writer import write_dictionary
    from itda_core.trainer import Trainer

    print(f"machine: {cpu_name()}, {os.cpu_count()} CPUs, torch {torch.__version__}, ray {ray.__version__}, "
          f"load average {os.getloadavg()[0]:.1f}")
    root = Path(tempfile.mkdtemp(prefix="bench-index-ray-"))
    try:
        model = load_model(args.model, device="cpu")
        layers = parse_layers(args.layers, model.n_layers)
        corpus = load_corpus("default")
        train, _held = corpus.split(0.3)
        blank = root / "blank.duckdb"
        t0 = time.perf_counter()
        trained = Trainer(model, train, TrainConfig(layers=layers, max_tokens=args.train_tokens, progress=False)).run()
        for itda in trained.values():
            write_dictionary(blank, itda, model, corpus)
        atoms = ", ".join(f"L{layer}: {len(itda)}" for layer, itda in trained.items())
        print(f"trained {args.model} layers {layers} on {args.train_tokens:,} tokens in "
              f"{time.perf_counter() - t0:.1f} s ({atoms} atoms)")

        def run(name: str, **kw) -> dict:
            store = root / f"{name}.duckdb"
            shutil.copy(blank, store)
            config = IndexConfig(max_tokens=args.tokens, progress=False, **kw)
            start = time.perf_counter()
            report = index_model(store, model, config, loader=lambda n: load_model(n, device="cpu"))
            wall = time.perf_counter() - start
            assert len(report.indexed) == len(layers), report.summary()
            return {"name": name, "wall": wall, "tokens": report.tokens, "merge": report.write_seconds,
                    "forward": report.forward_seconds, "encode": report.encode_seconds, "codes": _codes(store)}

        rows = [run("local")]
        t1 = time.perf_counter()
        ray.init(num_cpus=os.cpu_count(), include_dashboard=False, log_to_driver=False)
        init = time.perf_counter() - t1
        from itda_core.jobs.index_ray import plan_resources

        try:
            for workers in (int(w) for w in args.workers.split(",")):
                res = plan_resources(IndexConfig(workers=workers), ray.cluster_resources())
                row = run(f"ray, {workers} worker{'s' * (workers > 1)} x {res.cpus:g} CPU", engine="ray",
                          workers=workers)
                rows.append(row)
        finally:
            ray.shutdown()
        base = rows[0]
        print(f"\nray.init (local cluster, {os.cpu_count()} CPUs): {init:.1f} s\n")
        print("| engine | wall (s) | tokens/s | vs local | merge into store (s) | forward + MP in workers (s) |"
              " codes = local |")
        print("|---|---|---|---|---|---|---|")
        for r in rows:
            same = "yes" if r["codes"] == base["codes"] else (
                f"{sum(a[:4] == b[:4] for a, b in zip(r['codes'], base['codes'], strict=False)):,} of "
                f"{len(base['codes']):,} rows' (dict, doc, position, atom)")
            print(f"| {r['name']} | {r['wall']:.1f} | {r['tokens'] / r['wall']:,.0f} | "
                  f"{base['wall'] / r['wall']:.2f}x | {r['merge']:.2f} | {r['forward'] + r['encode']:.1f} | {same} |")
        print(f"\n{base['tokens']:,} held-out tokens, {len(layers)} dictionaries; {len(base['codes']):,} codes")
    finally:
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
