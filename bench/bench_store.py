"""Latency of the dashboard's store queries (target: under 100 ms each), on the demo store or a synthetic one.

Run by hand:

    .venv/bin/python bench/bench_store.py                      # the demo store, data/itda.duckdb
    .venv/bin/python bench/bench_store.py --store other.duckdb
    .venv/bin/python bench/bench_store.py --synthetic /tmp/bench.duckdb   # build a demo-sized store first

``--synthetic`` needs no model: bench/store_scale_build.py writes it (the real default corpus, whitespace
"tokens" for three fake models shaped like the demo's: 30 x 576, 18 x 640, 6 x 384; random unit atoms with
real provenance, more in the middle layers; random sparse codes summarised by the very path ``itda index``
takes), here at the demo's size: ``--atoms-per-dict`` x 54 atoms, ``--index-tokens`` x k codes per dictionary.
Each query is timed the way the dashboard runs it: with its own short read-only connection ("cold", connect
included) and on an open one. Prints a markdown table (median / p95 / max over random atoms) for docs/store.md.
"""

from __future__ import annotations

import argparse
import itertools
import os
import random
import statistics
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from machine import cpu_name  # bench/machine.py (a script's folder is on sys.path)
from store_scale_build import SHAPES, K, build  # bench/store_scale_build.py: the synthetic store

from itda_core.store import queries as Q
from itda_core.store.connection import connect_readonly

# ---- timing ----------------------------------------------------------------------------------------------


def _time(fn: Callable[[], Any], repeats: int) -> list[float]:
    """Wall times in ms of ``repeats`` calls."""
    out = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        out.append((time.perf_counter() - t0) * 1000)
    return out


def bench(path: Path, samples: int, seed: int = 0) -> list[tuple[str, list[float], list[float]]]:
    """(query, cold ms, warm ms) for each dashboard query over ``samples`` random active atoms."""
    rnd = random.Random(seed)
    with connect_readonly(path) as con:
        atoms = con.execute(
            "SELECT dict_id, atom FROM atom_stats WHERE n_active > 0 USING SAMPLE 2000 ROWS"
        ).fetchall()
        dicts = con.execute(
            "SELECT dict_id, model_id, layer FROM dictionaries ORDER BY model_id, layer"
        ).fetchall()
        words = [
            r[0]
            for r in con.execute(
                "SELECT trim(token_text) FROM atoms WHERE length(trim(token_text)) > 2 USING SAMPLE 200 ROWS"
            ).fetchall()
        ]
    picks = [rnd.choice(atoms) for _ in range(samples)]
    models = sorted({m for _, m, _ in dicts})
    pairs = [(a, b) for (a, ma, la), (b, mb, lb) in itertools.pairwise(dicts) if ma == mb and lb == la + 1]
    queries: list[tuple[str, Callable[[Any, int], Any]]] = [
        ("connect + schema check only", lambda con, i: None),
        ("list_models", lambda con, i: Q.list_models(con)),
        (
            "list_dictionaries(model)",
            lambda con, i: Q.list_dictionaries(con, model_id=models[i % len(models)]),
        ),
        ("get_dictionary", lambda con, i: Q.get_dictionary(con, picks[i][0])),
        ("get_atom (with source context)", lambda con, i: Q.get_atom(con, *picks[i])),
        ("top_contexts (20, window 8)", lambda con, i: Q.top_contexts(con, *picks[i])),
        ("quantile_samples (10 bins x 5)", lambda con, i: Q.quantile_samples(con, *picks[i])),
        ("coefficient_histogram", lambda con, i: Q.coefficient_histogram(con, *picks[i])),
        ("atoms_by_token (substring, all)", lambda con, i: Q.atoms_by_token(con, words[i % len(words)])),
        (
            "atoms_by_token (exact, all)",
            lambda con, i: Q.atoms_by_token(con, words[i % len(words)], exact=True),
        ),
        ("shared_provenance", lambda con, i: Q.shared_provenance(con, *picks[i])),
        ("shared_atoms (layer L vs L+1)", lambda con, i: Q.shared_atoms(con, *pairs[i % len(pairs)])),
        ("density_by_layer(model)", lambda con, i: Q.density_by_layer(con, models[i % len(models)])),
        ("atom_vectors (one atom)", lambda con, i: Q.atom_vectors(con, picks[i][0], [picks[i][1]])),
    ]
    results = []
    for name, query in queries:
        cold, warm = [], []
        for i in range(samples):

            def one_cold(i: int = i, query: Callable[[Any, int], Any] = query) -> None:
                """One query on its own connection."""
                with connect_readonly(path) as con:
                    query(con, i)

            cold += _time(one_cold, 1)
        with connect_readonly(path) as con:
            query(con, 0)  # warm the connection's caches
            for i in range(samples):
                warm += _time(lambda i=i, query=query, con=con: query(con, i), 1)
        results.append((name, cold, warm))
    return results


def main() -> None:
    """Parse arguments, optionally build a synthetic store, print the latency table."""
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--store", type=Path, default=Path("data/itda.duckdb"))
    parser.add_argument(
        "--synthetic", type=Path, default=None, help="build a synthetic demo-sized store here first"
    )
    parser.add_argument("--atoms-per-dict", type=int, default=5000)
    parser.add_argument("--index-tokens", type=int, default=4096)
    parser.add_argument("--samples", type=int, default=30, help="random atoms per query")
    args = parser.parse_args()
    path = args.store
    if args.synthetic is not None:
        path = args.synthetic
        t0 = time.perf_counter()
        print(f"building a synthetic store at {path} ...", flush=True)
        n_dicts = sum(n_layers for _, n_layers, _, _ in SHAPES)
        build(path, args.atoms_per_dict * n_dicts, args.index_tokens * K * n_dicts)
        print(f"built in {time.perf_counter() - t0:.0f} s", flush=True)
    with connect_readonly(path) as con:
        summary = Q.store_summary(con)
    counts = summary["counts"]
    size = path.stat().st_size / 2**20
    print(
        f"# store queries, {time.strftime('%Y-%m-%d')}, {cpu_name()}, {os.cpu_count()} CPUs, load "
        f"{os.getloadavg()[0]:.1f}; {path} ({size:,.0f} MiB): {counts['dictionaries']} dictionaries, "
        f"{counts['atoms']:,} atoms, {counts['tokens']:,} tokens, {counts['codes']:,} codes"
    )
    print("| query | cold median ms | cold p95 ms | warm median ms | warm p95 ms | max ms |")
    print("|---|---|---|---|---|---|")
    for name, cold, warm in bench(path, args.samples):
        p95 = lambda xs: sorted(xs)[max(0, round(0.95 * len(xs)) - 1)]  # noqa: E731
        print(
            f"| {name} | {statistics.median(cold):.1f} | {p95(cold):.1f} | {statistics.median(warm):.1f} | "
            f"{p95(warm):.1f} | {max(cold + warm):.1f} |"
        )


if __name__ == "__main__":
    main()
