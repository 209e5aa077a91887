"""A synthetic store at scale for bench/bench_store_scale.py: a few models, dictionaries summing to ``atoms``
atoms, ``codes`` rows of held-out codes, and every summary ``itda index`` writes.

The corpus is the real default corpus (documents stored as the writer stores them); tokens are whitespace
pieces with real character spans (one tokenisation per model, seq_len 128); atoms are random unit vectors
with real provenance. Those tables are written directly, with the writer's columns and insertion order
(``store_dictionary`` needs a real model and tokenizer). The index is written through the real path: the
codes of each dictionary go to a Parquet file and :func:`itda_core.store.held_out.write_index` computes
``codes``, ``atom_stats``, ``atom_top_contexts``, ``atom_quantiles`` and ``atom_histograms`` from it in one
transaction, as ``itda index`` does. Evaluations, baseline similarities and one stored atom map per
dictionary are added so that every page has something to read.
"""

from __future__ import annotations

import itertools
import json
import math
import re
import tempfile
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from itda_core.store.connection import connect_write, transaction

# (name, layers, d_model, decoder): shaped like the demo's three models
SHAPES = [
    ("synthetic-smollm2", 30, 576, True), ("synthetic-gemma3", 18, 640, True), ("synthetic-minilm", 6, 384, False)
]
SEQ_LEN = 128
K = 40
METRICS = ("ce_loss_score", "fvu", "l0", "dead_fraction")


def tokenizer_id(name: str) -> str:
    """A tokenizer id shaped like the real ones (``tok-`` + 16 hex), so that DuckDB's zone maps, which keep an
    8-byte prefix of strings, tell tokenizers apart as they do in a real store."""
    import hashlib

    return "tok-" + hashlib.sha256(name.encode()).hexdigest()[:16]


def _pseudo_tokens(text: str, bos: bool) -> list[tuple[str, int, int, bool]]:
    """Whitespace-attached word pieces with character spans (a BOS-like special first for decoders)."""
    out = [("<s>", 0, 0, True)] if bos else []
    for m in re.finditer(r"\s*\S+", text):
        if len(out) >= SEQ_LEN:
            break
        out.append((m.group(0), m.start(), m.end(), False))
    return out


def atom_sizes(total: int) -> list[list[int]]:
    """Atoms per dictionary of each model: more in the middle layers (as trained ITDAs have), summing to total."""
    weights = [[0.4 + math.sin(math.pi * (layer + 0.5) / n) for layer in range(n)] for _, n, _, _ in SHAPES]
    flat = [w for ws in weights for w in ws]
    raw = [int(total * w / sum(flat)) for w in flat]
    raw[-1] += total - sum(raw)
    out, i = [], 0
    for ws in weights:
        out.append(raw[i : i + len(ws)])
        i += len(ws)
    return out


def _corpus_tables(con: Any, corpus: Any, info: Any) -> None:
    """The corpus row and its documents, as the writer stores them."""
    from itda_core.store.writer import documents_table

    con.execute(
        "INSERT INTO corpora VALUES (?, ?, ?, ?, ?, ?, ?, now())",
        [corpus.corpus_id, corpus.name, corpus.sha256, len(corpus), sum(len(t) for t in corpus.texts), 0.1, 0],
    )
    con.register("_d", documents_table(corpus, info))
    con.execute("INSERT INTO documents SELECT * FROM _d ORDER BY doc_id")
    con.unregister("_d")


def _tokens(corpus: Any, name: str, decoder: bool) -> tuple[pa.Table, dict[int, list[tuple[str, int, int, bool]]]]:
    """One tokenizer's tokens of the corpus (the writer's columns) and the pieces per document."""
    per_doc = {d.doc_id: _pseudo_tokens(d.text, decoder) for d in corpus.documents}
    doc = [d for d, toks in per_doc.items() for _ in toks]
    pos = [p for toks in per_doc.values() for p in range(len(toks))]
    flat = [t for toks in per_doc.values() for t in toks]
    n = len(flat)
    table = pa.table({
        "tokenizer_id": [tokenizer_id(name)] * n, "seq_len": pa.array(np.full(n, SEQ_LEN, np.int32)),
        "corpus_id": [corpus.corpus_id] * n, "doc_id": pa.array(doc, pa.int32()), "position": pa.array(pos, pa.int32()),
        "token_id": pa.array([hash(t[0]) % 50_000 for t in flat], pa.int32()), "token_str": [t[0] for t in flat],
        "char_start": pa.array([t[1] for t in flat], pa.int32()),
        "char_end": pa.array([t[2] for t in flat], pa.int32()),
        "special": [t[3] for t in flat],
    })
    return table, per_doc


def _atoms(rng: np.random.Generator, dict_id: int, m: int, d_model: int, train_ids: np.ndarray, corpus: Any,
           per_doc: dict[int, list[tuple[str, int, int, bool]]]) -> pa.Table:
    """``m`` random unit atoms with real provenance in training documents (the writer's columns)."""
    src_doc = rng.choice(train_ids, size=m)
    src_pos = np.array([rng.integers(len(per_doc[int(d)])) for d in src_doc])
    picked = [per_doc[int(d)][int(p)] for d, p in zip(src_doc, src_pos, strict=True)]
    texts = [corpus.by_id(int(d)).text[t[1]:t[2]] if t[2] > t[1] else t[0]
             for d, t in zip(src_doc, picked, strict=True)]
    vec = rng.standard_normal((m, d_model), dtype=np.float32)
    vec /= np.linalg.norm(vec, axis=1, keepdims=True)
    n_init = min(m, d_model)
    add_error = rng.random(m, dtype=np.float32)
    add_error[:n_init] = np.nan
    init_count = np.zeros(m, np.int32)
    init_count[:n_init] = rng.integers(1, 20, n_init)
    return pa.table({
        "dict_id": pa.array(np.full(m, dict_id, np.int32)), "atom": pa.array(np.arange(m, dtype=np.int32)),
        "doc_id": pa.array(src_doc.astype(np.int32)), "position": pa.array(src_pos.astype(np.int32)),
        "token_id": pa.array([hash(t[0]) % 50_000 for t in picked], pa.int32()), "token_str": [t[0] for t in picked],
        "token_text": texts, "char_start": pa.array([t[1] for t in picked], pa.int32()),
        "char_end": pa.array([t[2] for t in picked], pa.int32()), "add_error": pa.array(add_error),
        "vector": pa.FixedSizeListArray.from_arrays(pa.array(vec.reshape(-1)), d_model).cast(pa.list_(pa.float32())),
        "init_count": pa.array(init_count),
    })


def _dictionary_row(dict_id: int, model_id: str, name: str, layer: int, d_model: int, m: int,
                    corpus_id: str, train_id: str) -> list[Any]:
    """The dictionaries row (all columns but ``written``, then data_key), as store_dictionary fills it."""
    from itda_core.dictionary import ITDAConfig
    from itda_core.store.identity import dictionary_data_key, options_key

    config = ITDAConfig(model_id=model_id, model_name=name, layer=layer, d_model=d_model, k=K,
                        threshold=0.3 / d_model, corpus_id=train_id, seq_len=SEQ_LEN)
    return [dict_id, model_id, name, layer, config.site, corpus_id, train_id, tokenizer_id(name), SEQ_LEN, False, K,
            config.threshold, m, d_model, 16_000, min(m, d_model), options_key(config), config.to_json(),
            json.dumps({}), "", dictionary_data_key(config)]


def _codes(rng: np.random.Generator, m: int, n_codes: int, held: np.ndarray) -> pa.Table:
    """``n_codes`` sparse codes over the first held-out tokens: K atoms per token from a heavy-tailed
    popularity (a random atom order), repeats summed as MP's are, lognormal coefficients, 10% negative."""
    from itda_core.jobs.index import sparse_codes

    nt = min(len(held), int(n_codes / (0.5 * K)) + 1)
    p = 1.0 / (np.arange(m) + 10.0) ** 1.1
    p = p[rng.permutation(m)] / p.sum()
    idx = rng.choice(m, size=(nt, K), p=p)
    coef = rng.lognormal(0.0, 0.7, size=(nt, K)).astype(np.float32)
    coef[rng.random((nt, K)) < 0.1] *= -0.3
    import torch

    rows, atoms, sums = sparse_codes(torch.from_numpy(idx), torch.from_numpy(coef), m)
    rows, atoms, sums = rows[:n_codes], atoms[:n_codes], sums[:n_codes]
    return pa.table({"atom": atoms, "doc_id": held[rows, 0].astype(np.int32),
                     "position": held[rows, 1].astype(np.int32), "coef": sums})


def _index(store: Path, dict_id: int, written: Any, codes: pa.Table, corpus_id: str, tmp: Path) -> None:
    """Write one dictionary's index through :func:`itda_core.store.held_out.write_index` (real summaries)."""
    from itda_core.store.held_out import IndexRun, write_index

    path = tmp / f"codes-{dict_id}.parquet"
    pq.write_table(codes, path)
    tokens = np.unique(np.stack([codes.column("doc_id").to_numpy(), codes.column("position").to_numpy()]), axis=1)
    n_docs = len(np.unique(tokens[0]))
    run = IndexRun(dict_id, corpus_id, n_docs, tokens.shape[1], K, 20, 10, 5, 32, True, 0.0, written)
    reason = write_index(store, run, path)
    if reason:
        raise RuntimeError(f"dictionary {dict_id}: {reason}")
    path.unlink()


def _extras(store: Path, rng: np.random.Generator, by_model: dict[str, list[int]]) -> None:
    """Evaluations of every dictionary, baseline similarities of neighbouring layers, and one atom map each."""
    from itda_core.config.atom_maps import UmapParams
    from itda_core.store.atom_maps import fingerprint, write_atom_map

    ids = [d for ds in by_model.values() for d in ds]
    evals = [(d, mt, float(rng.random()), "default-v1", 4096, json.dumps({"k": K})) for d in ids for mt in METRICS]
    sims = [(a, b, meth, float(rng.random()), "{}") for ds in by_model.values() for a, b in itertools.pairwise(ds)
            for meth in ("cka", "svcca", "relative")]
    with connect_write(store) as con, transaction(con):
        con.executemany("INSERT INTO evaluations VALUES (?, ?, ?, ?, ?, ?, now())", evals)
        con.executemany("INSERT INTO similarities VALUES (?, ?, ?, ?, ?, now())", sims)
        prints = {d: fingerprint(con, [d]) for d in ids}
        sizes = dict(con.execute("SELECT dict_id, n_atoms FROM dictionaries").fetchall())
    for d in ids:
        m = int(sizes[d])
        key = json.dumps({**asdict(UmapParams()), "dicts": prints[d], "created": time.strftime("%Y-%m-%dT%H:%M:%S")},
                         sort_keys=True)
        rows = pa.table({"dict_id": np.full(m, d, np.int32), "atom": np.arange(m, dtype=np.int32)}).to_pandas()
        write_atom_map(store, [d], rows, rng.standard_normal((m, 2)).astype(np.float32), key)


def build(store: Path, total_atoms: int, total_codes: int, seed: int = 0) -> None:
    """Write the synthetic store at ``store`` (replacing any file there), printing progress."""
    from itda_core.corpus import load_corpus
    from itda_core.store.identity import SplitInfo

    rng = np.random.default_rng(seed)
    for p in (store, store.with_name(store.name + ".wal")):
        p.unlink(missing_ok=True)
    corpus = load_corpus("default")
    train, held_part = corpus.split(0.1)
    train_ids = np.array([d.doc_id for d in train.documents])
    with connect_write(store) as con, transaction(con):
        _corpus_tables(con, corpus, SplitInfo(corpus.corpus_id, 0.1, 0))
    sizes = atom_sizes(total_atoms)
    n_dicts = sum(len(s) for s in sizes)
    dict_id, codes_left, by_model, t0 = 0, total_codes, {}, time.perf_counter()
    with tempfile.TemporaryDirectory(dir=store.parent) as tmp:
        for (name, n_layers, d_model, decoder), per_layer in zip(SHAPES, sizes, strict=True):
            tokens, per_doc = _tokens(corpus, name, decoder)
            model_id = f"{name}@synthetic"
            with connect_write(store) as con, transaction(con):
                con.register("_t", tokens)
                con.execute("INSERT INTO tokens SELECT * FROM _t ORDER BY doc_id, position")
                con.execute("INSERT INTO tokenizations VALUES (?, ?, ?, ?, ?, now())",
                            [tokenizer_id(name), SEQ_LEN, corpus.corpus_id, name, tokens.num_rows])
                con.execute("INSERT INTO models VALUES (?, ?, ?, ?, ?, ?, ?, 'synthetic', now())",
                            [model_id, name, "decoder" if decoder else "encoder", name, n_layers, d_model,
                             tokenizer_id(name)])
            held = np.array([(d.doc_id, p) for d in held_part.documents for p in range(len(per_doc[d.doc_id]))])
            held = held[rng.permutation(len(held))]
            by_model[model_id] = []
            for layer, m in enumerate(per_layer):
                dict_id += 1
                by_model[model_id].append(dict_id)
                row = _dictionary_row(dict_id, model_id, name, layer, d_model, m, corpus.corpus_id, train.corpus_id)
                atoms = _atoms(rng, dict_id, m, d_model, train_ids, corpus, per_doc)
                with connect_write(store) as con, transaction(con):
                    con.execute(f"INSERT INTO dictionaries VALUES ({', '.join(['?'] * 20)}, now(), ?)", row)
                    con.register("_a", atoms)
                    con.execute("INSERT INTO atoms SELECT * FROM _a")
                    con.unregister("_a")
                    written = con.execute("SELECT written FROM dictionaries WHERE dict_id = ?",
                                          [dict_id]).fetchall()[0][0]
                n_codes = codes_left // (n_dicts - dict_id + 1)
                codes = _codes(rng, m, n_codes, held)
                codes_left -= codes.num_rows
                _index(store, dict_id, written, codes, corpus.corpus_id, Path(tmp))
                print(f"  [{time.perf_counter() - t0:5.0f} s] dictionary {dict_id}/{n_dicts}: {name} L{layer}, "
                      f"{m:,} atoms, {codes.num_rows:,} codes", flush=True)
    _extras(store, rng, by_model)
    with connect_write(store) as con:
        con.execute("CHECKPOINT")
