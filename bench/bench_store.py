"""Latency of the dashboard's store queries (target: under 100 ms each), on the demo store or a synthetic one.

Run by hand:

    .venv/bin/python bench/bench_store.py                      # the demo store, data/itda.duckdb
    .venv/bin/python bench/bench_store.py --store other.duckdb
    .venv/bin/python bench/bench_store.py --synthetic /tmp/bench.duckdb   # build a demo-sized store first

``--synthetic`` needs no model: it stores the real default corpus, whitespace "tokens" for three fake
models shaped like the demo's (30 x 576, 18 x 640, 6 x 384), random unit atoms with real provenance, and
random sparse codes summarised by the very SQL ``itda index`` runs. Each query is timed the way the
dashboard runs it: with its own short read-only connection ("cold", connect included) and on an open one.
Prints a markdown table (median / p95 / max over random atoms) for docs/store.md.
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import random
import re
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from machine import cpu_name  # bench/machine.py (a script's folder is on sys.path)

from itda_core.store import queries as Q
from itda_core.store.connection import connect_readonly, connect_write, transaction

DEMO_SHAPES = [
    ("synthetic-smollm2", 30, 576, True),
    ("synthetic-gemma3", 18, 640, True),
    ("synthetic-minilm", 6, 384, False),
]


# ---- a synthetic, demo-sized store -----------------------------------------------------------------------


def _pseudo_tokens(text: str, seq_len: int, bos: bool) -> list[tuple[str, int, int, bool]]:
    """Whitespace-attached word pieces with character spans (and a BOS-like special at position 0)."""
    out = [("<s>", 0, 0, True)] if bos else []
    for m in re.finditer(r"\s*\S+", text):
        if len(out) >= seq_len:
            break
        out.append((m.group(0), m.start(), m.end(), False))
    return out


def build_synthetic(path: Path, atoms_per_dict: int, index_tokens: int, k: int, seed: int = 0) -> None:
    """A store shaped like the full demo, written through the store's own tables and summary SQL."""
    import torch

    from itda_core.corpus import load_corpus
    from itda_core.dictionary import ITDAConfig
    from itda_core.jobs.index import IndexConfig, _Target, _write_index, sparse_codes
    from itda_core.store.identity import SplitInfo, options_key
    from itda_core.store.writer import documents_table

    rng = np.random.default_rng(seed)
    corpus = load_corpus("default")
    train, held = corpus.split(0.1)
    info = SplitInfo(corpus.corpus_id, 0.1, 0)
    for p in (path, path.with_name(path.name + ".wal")):
        p.unlink(missing_ok=True)
    with connect_write(path) as con, transaction(con):
        con.execute(
            "INSERT INTO corpora VALUES (?, ?, ?, ?, ?, ?, ?, now())",
            [
                corpus.corpus_id,
                corpus.name,
                corpus.sha256,
                len(corpus),
                sum(len(t) for t in corpus.texts),
                0.1,
                0,
            ],
        )
        docs = documents_table(corpus, info)
        con.register("_d", docs)
        con.execute("INSERT INTO documents SELECT * FROM _d ORDER BY doc_id")
    train_ids = [d.doc_id for d in train.documents]
    dict_id = 0
    for name, n_layers, d_model, decoder in DEMO_SHAPES:
        tok_id = f"tok-{name}"
        cols: dict[str, list[Any]] = {
            c: [] for c in ("doc_id", "position", "token_str", "char_start", "char_end", "special")
        }
        per_doc: dict[int, list[tuple[str, int, int, bool]]] = {}
        for doc in corpus.documents:
            toks = _pseudo_tokens(doc.text, 128, decoder)
            per_doc[doc.doc_id] = toks
            for pos, (s, cs, ce, sp) in enumerate(toks):
                for c, v in zip(cols, (doc.doc_id, pos, s, cs, ce, sp), strict=True):
                    cols[c].append(v)
        n = len(cols["doc_id"])
        tokens = pa.table(
            {
                "tokenizer_id": [tok_id] * n,
                "seq_len": pa.array(np.full(n, 128, np.int32)),
                "corpus_id": [corpus.corpus_id] * n,
                "doc_id": pa.array(cols["doc_id"], pa.int32()),
                "position": pa.array(cols["position"], pa.int32()),
                "token_id": pa.array(np.zeros(n, np.int32)),
                "token_str": cols["token_str"],
                "char_start": pa.array(cols["char_start"], pa.int32()),
                "char_end": pa.array(cols["char_end"], pa.int32()),
                "special": cols["special"],
            }
        )
        model_id = f"{name}@synthetic"
        with connect_write(path) as con, transaction(con):
            con.register("_t", tokens)
            con.execute("INSERT INTO tokens SELECT * FROM _t ORDER BY doc_id, position")
            con.execute(
                "INSERT INTO tokenizations VALUES (?, 128, ?, ?, ?, now())",
                [tok_id, corpus.corpus_id, name, n],
            )
            con.execute(
                "INSERT INTO models VALUES (?, ?, ?, ?, ?, ?, ?, 'synthetic', now())",
                [model_id, name, "decoder" if decoder else "encoder", name, n_layers, d_model, tok_id],
            )
        held_rows = [(d.doc_id, p) for d in held.documents for p in range(len(per_doc[d.doc_id]))][
            :index_tokens
        ]
        held_doc = np.array([r[0] for r in held_rows], np.int32)
        held_pos = np.array([r[1] for r in held_rows], np.int32)
        for layer in range(n_layers):
            dict_id += 1
            m = atoms_per_dict
            src_doc = rng.choice(train_ids, size=m)
            src_pos = np.array([rng.integers(len(per_doc[int(d)])) for d in src_doc])
            vec = rng.standard_normal((m, d_model), dtype=np.float32)
            vec /= np.linalg.norm(vec, axis=1, keepdims=True)
            picked = [per_doc[int(d)][int(p)] for d, p in zip(src_doc, src_pos, strict=True)]
            texts = [
                corpus.by_id(int(d)).text[t[1] : t[2]] if t[2] > t[1] else t[0]
                for d, t in zip(src_doc, picked, strict=True)
            ]
            atoms = pa.table(
                {
                    "dict_id": pa.array(np.full(m, dict_id, np.int32)),
                    "atom": pa.array(np.arange(m, dtype=np.int32)),
                    "doc_id": pa.array(src_doc.astype(np.int32)),
                    "position": pa.array(src_pos.astype(np.int32)),
                    "token_id": pa.array(np.zeros(m, np.int32)),
                    "token_str": [t[0] for t in picked],
                    "token_text": texts,
                    "char_start": pa.array([t[1] for t in picked], pa.int32()),
                    "char_end": pa.array([t[2] for t in picked], pa.int32()),
                    "add_error": pa.array(rng.random(m, dtype=np.float32)),
                    "vector": pa.FixedSizeListArray.from_arrays(pa.array(vec.reshape(-1)), d_model).cast(
                        pa.list_(pa.float32())
                    ),
                }
            )
            config = ITDAConfig(
                model_id=model_id,
                model_name=name,
                layer=layer,
                d_model=d_model,
                k=k,
                threshold=0.3 / d_model,
                corpus_id=train.corpus_id,
                seq_len=128,
            )
            with connect_write(path) as con, transaction(con):
                con.execute(
                    f"INSERT INTO dictionaries VALUES ({', '.join(['?'] * 20)}, now())",
                    [
                        dict_id,
                        model_id,
                        name,
                        layer,
                        config.site,
                        corpus.corpus_id,
                        train.corpus_id,
                        tok_id,
                        128,
                        False,
                        k,
                        config.threshold,
                        m,
                        d_model,
                        16_000,
                        d_model,
                        options_key(config),
                        config.to_json(),
                        json.dumps({}),
                        "",
                    ],
                )
                con.register("_a", atoms)
                con.execute("INSERT INTO atoms SELECT * FROM _a")
                written = con.execute(
                    "SELECT written FROM dictionaries WHERE dict_id = ?", [dict_id]
                ).fetchall()[0][0]
            # codes: k Zipf-popular atoms per held-out token, lognormal coefficients, 10% negative
            nt = len(held_doc)
            popular = rng.zipf(1.3, size=(nt, k)) % m
            coef = rng.lognormal(0.0, 0.7, size=(nt, k)).astype(np.float32)
            coef[rng.random((nt, k)) < 0.1] *= -0.3
            rows, atom_ids, sums = sparse_codes(torch.from_numpy(popular), torch.from_numpy(coef), m)
            with tempfile.TemporaryDirectory() as tmp:
                codes = Path(tmp) / "codes.parquet"
                pq.write_table(
                    pa.table(
                        {"atom": atom_ids, "doc_id": held_doc[rows], "position": held_pos[rows], "coef": sums}
                    ),
                    codes,
                )
                _write_index(
                    path,
                    _Target(dict_id, layer, k, m, written),
                    codes,
                    corpus.corpus_id,
                    len(np.unique(held_doc)),
                    nt,
                    IndexConfig(),
                    seconds=0.0,
                )
            print(f"  {name} layer {layer}: {m} atoms, {len(sums):,} codes", flush=True)


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
        build_synthetic(path, args.atoms_per_dict, args.index_tokens, k=40)
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
