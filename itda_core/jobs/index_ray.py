"""``itda index --engine ray``: the held-out encoding of :mod:`itda_core.jobs.index` on Ray Data, merged into the
store by the very same SQL.

The driver plans the work: the held-out documents in the local path's order and batches (``batch_size``
documents each, the last one cut at ``max_tokens`` as extraction cuts it), one dataset row per batch. A pool of
stateful actors (:class:`BatchEncoder`, ``map_batches``) loads the model and the dictionaries once per actor,
runs each batch's forward pass, encodes it with every dictionary (MP, the dictionary's k) and returns its sparse
codes and reconstruction sums. The driver writes the codes as one Parquet shard per (dictionary, batch) beside
the store, merges the sums in batch order, and hands each dictionary's shard list to
:func:`itda_core.store.held_out.write_index` (one transaction, as the local path). Dictionaries whose Gram
matrices would not fit ``worker_memory_gib`` together are split into passes of the same job: an actor holds one
pass's dictionaries at a time and runs a batch's forward pass again for each pass (the model loads once).

Resources come from ``ray.cluster_resources()``: actors never reserve every CPU, because Ray Data's own tasks
(splitting the input, collecting output) need some; with whole CPUs on a 2-core machine the pool starves them and
never finishes. The same code runs on a real cluster (``RAY_ADDRESS`` or ``--ray-address``; see docs/scaling.md).
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from itda_core.config.index import IndexConfig
from itda_core.corpus import Document
from itda_core.errors import ITDAError
from itda_core.evaluation.accumulate import QualityAccumulator
from itda_core.extras import require
from itda_core.models import LoadedModel

log = logging.getLogger(__name__)

CODE_COLUMNS = ("atom", "doc_id", "position", "coef")


@dataclass(frozen=True)
class Resources:
    """What each Ray actor reserves, and how many there are."""

    workers: int
    cpus: float
    gpus: float


def plan_resources(config: IndexConfig, cluster: dict[str, float], nodes: int = 1) -> Resources:
    """Actors and their CPUs/GPUs from the cluster's totals and the config (a missing value chosen, a request the
    cluster cannot hold refused: Ray would wait for it forever)."""
    cpus, gpus = float(cluster.get("CPU", 0.0)), float(cluster.get("GPU", 0.0))
    gpw = config.gpus_per_worker if config.gpus_per_worker is not None else (1.0 if gpus >= 1 else 0.0)
    if config.workers is not None:
        workers = config.workers
    elif gpw > 0:
        workers = max(1, int(gpus // gpw))
    else:
        workers = max(1, nodes)
    spare = max(cpus - nodes, cpus / 2)  # left to Ray Data's own tasks: a CPU per node, at most half of them
    cpw = config.cpus_per_worker if config.cpus_per_worker is not None else spare / workers
    if workers * cpw > spare + 1e-9 or (cpw == 0 and gpw == 0):
        raise ITDAError(f"{workers} Ray workers x {cpw:g} CPUs do not fit this cluster's {cpus:g} CPUs with "
                        f"{cpus - spare:g} left to Ray Data; lower --workers or --cpus-per-worker")
    if workers * gpw > gpus + 1e-9:
        raise ITDAError(f"{workers} Ray workers x {gpw:g} GPUs do not fit this cluster's {gpus:g} GPUs; lower "
                        "--workers or --gpus-per-worker")
    return Resources(workers, round(cpw, 4), gpw)


def plan_batches(model: LoadedModel, docs: list[Document], seq_len: int, batch_size: int, skip_special: bool,
                 max_tokens: int | None) -> tuple[list[dict[str, Any]], int, int]:
    """The dataset rows (one per extraction batch, as :func:`itda_core.extraction.extract` forms them: its
    documents and how many tokens to keep), the tokens and the documents they cover."""
    from itda_core.tokenize import tokenize_documents

    rows, tokens, seen = [], 0, set()
    for start in range(0, len(docs), batch_size):
        part = docs[start:start + batch_size]
        prov = tokenize_documents(model, part, seq_len, skip_special).provenance
        if len(prov) == 0:
            continue
        keep = len(prov) if max_tokens is None else min(len(prov), max_tokens - tokens)
        rows.append({"batch": len(rows), "docs": json.dumps([[d.doc_id, d.text, d.source] for d in part]),
                     "keep": keep})
        seen.update(prov.doc_id[:keep].tolist())
        tokens += keep
        if max_tokens is not None and tokens >= max_tokens:
            break
    return rows, tokens, len(seen)


def gram_passes(sizes: dict[int, int], memory_gib: float) -> list[list[int]]:
    """Dictionaries (ids with their atom counts) in passes whose atoms and float32 Gram matrices fit the memory
    together (one alone may exceed it: it gets a pass of its own)."""
    budget, passes, used = memory_gib * 2**30, [[]], 0.0
    for dict_id, n in sizes.items():
        need = 4.0 * n * n + 4.0 * n * 4096  # Gram + atoms of a wide model
        if passes[-1] and used + need > budget:
            passes.append([])
            used = 0.0
        passes[-1].append(dict_id)
        used += need
    return [p for p in passes if p]


class BatchEncoder:
    """A Ray Data actor: loads the model and the dictionaries once, then per batch row runs the forward pass and
    returns every dictionary's sparse codes and reconstruction sums (a row per dictionary)."""

    def __init__(self, loader: Callable[[str], LoadedModel], name: str, model_id: str, passes: list[Any],
                 seq_len: int, skip_special: bool) -> None:
        self.model = loader(name)
        if self.model.model_id != model_id:
            raise ITDAError(f"a Ray worker loaded {name} as {self.model.model_id}, not {model_id}")
        self.passes = passes  # per pass: {dict_id: (ITDA, layer, k)}, or a Ray reference to it
        self.current, self.dictionaries, self.layers = -1, {}, []
        self.seq_len, self.skip_special = seq_len, skip_special

    def _load(self, index: int) -> None:
        """Hold pass ``index``'s dictionaries (only those: a pass is what fits the worker's memory)."""
        import ray

        if index == self.current:
            return
        self.dictionaries = {}  # the last pass's Gram matrices go before the next pass's are built
        part = self.passes[index]
        self.dictionaries = ray.get(part) if isinstance(part, ray.ObjectRef) else part
        self.layers = sorted({layer for _itda, layer, _k in self.dictionaries.values()})
        self.current = index

    def __call__(self, table: Any) -> Any:
        """Rows (pass, batch, docs, keep) in; a row per dictionary out (batch, dict_id, codes, sums, seconds)."""
        import pyarrow as pa

        out: dict[str, list[Any]] = {c: [] for c in ("batch", "dict_id", *CODE_COLUMNS, "quality", "forward_s",
                                                     "encode_s")}
        for row in table.to_pylist():
            self._load(int(row["pass"]))
            for dict_id, codes, quality, forward_s, encode_s in self._encode(row):
                out["batch"].append(row["batch"])
                out["dict_id"].append(dict_id)
                for column in CODE_COLUMNS:
                    out[column].append(codes[column])
                out["quality"].append(quality)
                out["forward_s"].append(forward_s)
                out["encode_s"].append(encode_s)
        types = {"batch": pa.int64(), "dict_id": pa.int64(), "atom": pa.list_(pa.int32()),
                 "doc_id": pa.list_(pa.int32()), "position": pa.list_(pa.int32()), "coef": pa.list_(pa.float32()),
                 "quality": pa.string(), "forward_s": pa.float64(), "encode_s": pa.float64()}
        return pa.table({c: pa.array(v, type=types[c]) for c, v in out.items()})

    def _encode(self, row: dict[str, Any]) -> Iterator[tuple[int, dict[str, np.ndarray], str, float, float]]:
        """One batch's forward pass and every dictionary's codes, as the local path encodes them."""
        import torch

        from itda_core.extraction import extract
        from itda_core.jobs.index_codes import sparse_codes
        from itda_core.jobs.index_quality import counted_rows

        docs = [Document(int(i), t, s) for i, t, s in json.loads(row["docs"])]
        t0 = time.perf_counter()
        stream = extract(self.model, docs, self.layers, self.seq_len, len(docs),
                         skip_special_tokens=self.skip_special, max_tokens=int(row["keep"]), progress=False)
        batch = next(stream)
        stream.close()
        forward_s = time.perf_counter() - t0
        prov = batch.provenance
        doc_ids, positions = prov.doc_id.numpy().astype(np.int32), prov.position.numpy().astype(np.int32)
        counted = torch.from_numpy(counted_rows(self.model, prov.token_id.numpy(), positions))
        for dict_id, (itda, layer, k) in self.dictionaries.items():
            t1 = time.perf_counter()
            x = batch.acts[layer].float()
            idx, coef = itda.encode(x, k)
            quality = QualityAccumulator().add(x[counted.to(x.device)], itda.decode(idx, coef)[counted.to(x.device)])
            rows, atoms, sums = sparse_codes(idx, coef, len(itda))
            codes = {"atom": atoms, "doc_id": doc_ids[rows], "position": positions[rows], "coef": sums}
            yield dict_id, codes, json.dumps(quality.to_dict()), forward_s, time.perf_counter() - t1
            forward_s = 0.0  # counted once per batch


@contextmanager
def ray_session(config: IndexConfig) -> Iterator[Any]:
    """Ray, joined (``ray_address``, else RAY_ADDRESS, else a local cluster) for the block; a cluster this call
    started is shut down after it."""
    ray = require("ray", "scale", "itda index --engine ray")
    require("ray.data", "scale", "itda index --engine ray")
    started = not ray.is_initialized()
    if started:
        ray.init(address=config.ray_address, include_dashboard=False, logging_level=logging.WARNING,
                 log_to_driver=False)
    try:
        yield ray
    finally:
        if started:
            ray.shutdown()


def index_group_ray(store: Path, model: LoadedModel, docs: list[Document], seq_len: int, skip_special: bool,
                    corpus_id: str, targets: list[Any], config: IndexConfig, report: Any,
                    loader: Callable[[str], LoadedModel] | None = None) -> None:
    """:func:`itda_core.jobs.index._index_group` on Ray Data: the same batches, codes, summaries and figures."""
    from itda_core.jobs.index_codes import spill_folder, write_target_index
    from itda_core.jobs.index_quality import write_quality
    from itda_core.models import load_model
    from itda_core.store.connection import connect_readonly
    from itda_core.store.reader import read_dictionary

    rows, n_tokens, n_docs = plan_batches(model, docs, seq_len, config.batch_size, skip_special, config.max_tokens)
    report.tokens = max(report.tokens, n_tokens)
    if n_tokens == 0:
        for t in targets:
            report.skipped[t.dict_id] = "no held-out tokens"
        return
    by_id = {t.dict_id: t for t in targets}
    name = model.name
    load = loader or (lambda _name: load_model(name))
    passes = gram_passes({t.dict_id: t.n_atoms for t in targets}, config.worker_memory_gib)
    with ray_session(config) as ray, spill_folder(store) as tmp:
        nodes = sum(1 for n in ray.nodes() if n.get("Alive") and n.get("Resources", {}).get("CPU", 0) > 0)
        res = plan_resources(config, ray.cluster_resources(), max(1, nodes))
        log.info("Ray: %d workers x %g CPUs, %g GPUs; %d passes", res.workers, res.cpus, res.gpus, len(passes))
        refs = []
        for part in passes:  # one pass's dictionaries in the driver's memory at a time
            with connect_readonly(store, timeout=config.timeout) as con:
                refs.append(ray.put({d: (read_dictionary(con, d), by_id[d].layer, by_id[d].k) for d in part}))
        t0 = time.perf_counter()
        actor = {"loader": load, "name": name, "model_id": model.model_id, "seq_len": seq_len,
                 "skip_special": skip_special, "passes": refs}
        shards, sums = _run(ray, rows, passes, tmp, res, config, actor, report)
        seconds = (time.perf_counter() - t0) / len(targets)
        for dict_id, target in by_id.items():
            t2 = time.perf_counter()
            status = write_target_index(store, target, shards[dict_id], corpus_id, n_docs, n_tokens, config,
                                  seconds=seconds)
            if not status:
                status = write_quality(store, dict_id, sums[dict_id], corpus_id, target.k, n_tokens,
                                       config.max_tokens, target.written, timeout=config.timeout)
            report.write_seconds += time.perf_counter() - t2
            if status:
                report.skipped[dict_id] = status
            else:
                report.indexed.append(dict_id)


def _run(ray: Any, rows: list[dict[str, Any]], passes: list[list[int]], tmp: Path, res: Resources,
         config: IndexConfig, actor: dict[str, Any], report: Any,
         ) -> tuple[dict[int, list[Path]], dict[int, QualityAccumulator]]:
    """One Ray Data job over every (pass, batch): Parquet shards of codes per dictionary (in batch order) and
    their reconstruction sums merged in batch order."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    context = ray.data.DataContext.get_current()
    context.enable_progress_bars = config.progress
    items = [{"pass": p, **row} for p in range(len(passes)) for row in rows]
    dataset = ray.data.from_items(items, override_num_blocks=min(len(items), max(1, 4 * res.workers)))
    encoded = dataset.map_batches(
        BatchEncoder, batch_size=1, batch_format="pyarrow", compute=ray.data.ActorPoolStrategy(size=res.workers),
        num_cpus=res.cpus, num_gpus=res.gpus, fn_constructor_kwargs=actor)
    schema = pa.schema([("atom", pa.int32()), ("doc_id", pa.int32()), ("position", pa.int32()),
                        ("coef", pa.float32())])
    ids = [d for part in passes for d in part]
    parts: dict[int, dict[int, QualityAccumulator]] = {d: {} for d in ids}
    shards: dict[int, dict[int, Path]] = {d: {} for d in ids}
    for table in encoded.iter_batches(batch_size=None, batch_format="pyarrow"):
        for row in table.to_pylist():
            b, d = int(row["batch"]), int(row["dict_id"])
            path = tmp / f"codes{d}-{b:06d}.parquet"
            pq.write_table(pa.table({c: row[c] for c in CODE_COLUMNS}, schema=schema), str(path))
            shards[d][b] = path
            parts[d][b] = QualityAccumulator.from_dict(json.loads(row["quality"]))
            report.forward_seconds += row["forward_s"]
            report.encode_seconds += row["encode_s"]
    missing = [d for d in ids if len(shards[d]) != len(rows)]
    if missing:  # pragma: no cover - Ray Data returns every row or raises
        raise ITDAError(f"the Ray job returned {len(shards[missing[0]])} of {len(rows)} batches")
    sums = {d: QualityAccumulator() for d in ids}
    for d, by_batch in parts.items():
        for b in sorted(by_batch):
            sums[d].merge(by_batch[b])
    return {d: [s[b] for b in sorted(s)] for d, s in shards.items()}, sums
